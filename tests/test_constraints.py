"""The MWAA pin files in the repository are the ones the test legs install under."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PINS = ROOT / "constraints" / "mwaa"


def leg_versions() -> list[str]:
    """The MWAA Airflow versions ``scripts/test.sh`` runs by default (its other legs: ``newest``, ``wheel``)."""
    (legs,) = re.findall(r"LEGS=\(([a-z0-9. ]+)\)", (ROOT / "scripts" / "test.sh").read_text())
    return [leg for leg in legs.split() if re.fullmatch(r"[0-9.]+", leg)]


def test_every_leg_has_its_mwaa_pin_files() -> None:
    assert leg_versions(), "scripts/test.sh names no MWAA leg"
    for version in leg_versions():
        essential = (PINS / version / "mwaa_essential_constraints.txt").read_text()
        # MWAA's essential pins fix the Airflow version of the image
        assert f"apache-airflow=={version}\n" in essential
        # Airflow's own constraints of that release, as its header names them
        assert f"/constraints-{version}/constraints-3." in (PINS / version / "airflow_constraints.txt").read_text()


def test_the_readme_of_the_pins_lists_every_leg() -> None:
    table = (PINS / "README.md").read_text()
    for version in leg_versions():
        assert f"| {version} " in table
