"""Fault scenarios through a real Airflow (``benchmarks/chaos.py``), small and fast enough for CI.

Each test starts its own endpoint, SQLite database and Airflow processes, injects one fault and asserts
the scenario's verdict. Run with ``pytest -m chaos`` (the newest leg of ``scripts/test.sh`` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from chaos import chaos_parser, run_scenario

pytestmark = pytest.mark.chaos

#: Small fleets with short jobs; each scenario's options on top of the common ones.
COMMON = ["--db", "sqlite", "--jobs", "40", "--duration", "40", "--poll-interval", "5"]
SCENARIOS = {
    "triggerer-kill": ["--down-seconds", "5"],
    "worker-kill": ["--kill-workers", "2"],
    "throttle-storm": ["--storm-seconds", "30"],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes(scenario: str) -> None:
    args = chaos_parser().parse_args(["--scenario", scenario, *COMMON, *SCENARIOS[scenario]])
    verdict = run_scenario(scenario, args)
    assert verdict.passed, str(verdict)
