"""Fault scenarios through a real Airflow (``benchmarks/chaos.py``), small and fast enough for CI.

Each test starts its own endpoint, SQLite database and Airflow processes, injects one fault and asserts
the scenario's verdict, running ``benchmarks/chaos.py`` as a user does. Run with ``pytest -m chaos`` (the
chaos leg of ``scripts/test.sh`` does, on the newest Airflow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos.py"

pytestmark = pytest.mark.chaos

#: Small fleets with short jobs on SQLite, and a 10 s triggerer health threshold (Airflow's default: 30 s);
#: each scenario's options on top. About 3 to 4 minutes each on a busy 2-core machine. worker-kill, the
#: other scenarios and larger fleets run by hand: ``python benchmarks/chaos.py --help``.
COMMON = ["--db", "sqlite", "--jobs", "20", "--poll-interval", "5", "--health-threshold", "10"]
#: Group mode: 2 groups of 10 models, submitted at 1 per second, so a kill finds half of them submitted.
GROUPS = ["--dag", "fleet_benchmark_groups", "--jobs", "20", "--group-size", "10", "--submit-rate", "1"]
#: 2 groups of 10 models, submitted at the default rate.
TWO_GROUPS = ["--dag", "fleet_benchmark_groups", "--jobs", "20", "--group-size", "10"]
#: One group of 100 models, submitted at 20 per second.
GROUP_OF_100 = ["--jobs", "100", "--group-size", "100", "--submit-rate", "20"]
SCENARIOS = {
    "triggerer-kill": ["--scenario", "triggerer-kill", "--duration", "40", "--down-seconds", "5"],
    "triggerer-stall": ["--scenario", "triggerer-stall", "--duration", "90", "--stall-seconds", "25"],
    "triggerer-kill-groups": ["--scenario", "triggerer-kill", *GROUPS, "--duration", "30", "--down-seconds", "5"],
    # One group of 100 models whose first try fails on 10 of them: the retry submits exactly those 10 again.
    "group-retry": ["--scenario", "group-retry", *GROUPS, *GROUP_OF_100, "--duration", "20"],
    # 5 % of the SubmitJob answers lost (500, then dropped connections), ListJobs 5 s late: one job per model,
    # per model (each task's trigger submits) and in groups.
    "lost-answers": ["--scenario", "lost-answers", "--duration", "20"],
    "lost-answers-groups": ["--scenario", "lost-answers", *GROUPS, "--duration", "20"],
    # Deferred groups timed out by Airflow with the triggerer down: the worker stops every job.
    "group-timeout-no-triggerer": [
        "--scenario",
        "group-timeout-no-triggerer",
        *TWO_GROUPS,
        "--execution-timeout",
        "90",
        "--spread",
        "0.1",
    ],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes(scenario: str, tmp_path: Path) -> None:
    command = [sys.executable, str(CHAOS), *COMMON, *SCENARIOS[scenario]]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    (report,) = tmp_path.glob("chaos-*.json")
    (verdict,) = json.loads(report.read_text())
    assert verdict["passed"], done.stdout[-5000:]
    assert done.returncode == 0
