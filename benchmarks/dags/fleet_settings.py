"""What the fleet benchmark DAG files share (no DAG here: a task of one never parses another's file)."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta

JOBS = int(os.environ.get("FLEET_BENCH_JOBS", "10"))
POLL_INTERVAL = float(os.environ.get("FLEET_BENCH_POLL_INTERVAL", "10"))
#: seconds each task of fleet_benchmark_floor.py waits (the endpoint's mean job duration for the others)
DURATION = float(os.environ.get("FLEET_BENCH_DURATION", "20"))
CONN_ID = os.environ.get("FLEET_BENCH_CONN_ID", "aws_bench")
COMMON = {
    "task_id": "model",
    "aws_conn_id": CONN_ID,
    "job_queue": "models",
    "job_definition": "forecast",
    "retries": int(os.environ.get("FLEET_BENCH_RETRIES", "1")),
    "retry_delay": timedelta(seconds=float(os.environ.get("FLEET_BENCH_RETRY_DELAY", "5"))),
}
#: the tasks' execution_timeout in fleet_benchmark.py and fleet_benchmark_groups.py (unset or 0: none)
_TIMEOUT_SECONDS = float(os.environ.get("FLEET_BENCH_EXECUTION_TIMEOUT") or 0)
EXECUTION_TIMEOUT = timedelta(seconds=_TIMEOUT_SECONDS) if _TIMEOUT_SECONDS else None
#: ``FLEET_BENCH_END_FROM_TRIGGER`` (set by hand): unset, the operator's default; ``1`` or ``0``: ``end_from_trigger``
#: ``True`` or ``False`` (fleet_benchmark.py and fleet_benchmark_groups.py)
END_FROM_TRIGGER = {"1": True, "0": False}.get(os.environ.get("FLEET_BENCH_END_FROM_TRIGGER", ""))
#: ``FLEET_BENCH_PLAN`` (set by hand): unset, fleet_benchmark_groups.py holds its groups in a literal list that
#: every parse of the file builds; ``1``: a ``plan`` task returns that list; ``push``: a ``plan`` task pushes
#: each group to an XCom of its own and returns references (``fleet.push_groups``)
PLAN = os.environ.get("FLEET_BENCH_PLAN", "")
#: models per group and SubmitJob/s of the group mode (fleet_benchmark_groups.py; unset: the operator's default)
GROUP_SIZE = int(os.environ.get("FLEET_BENCH_GROUP_SIZE", "100"))
SUBMIT_RATE = float(os.environ["FLEET_BENCH_SUBMIT_RATE"]) if os.environ.get("FLEET_BENCH_SUBMIT_RATE") else None
#: with ``--longest-first``: the fraction of models the DAG knows to be long, which it runs first and marks for
#: the endpoint (``BENCH_LONG=1`` in their environment); 0: the endpoint draws its long tail itself
LONG_FIRST = float(os.environ.get("FLEET_BENCH_LONG_FIRST") or 0)
_MODEL_NAMES = [f"model-{number:05d}" for number in range(JOBS)]
_LONG = set(
    random.Random(f"long models {os.environ.get('FLEET_BENCH_SEED', '0')}").sample(
        _MODEL_NAMES, round(JOBS * LONG_FIRST)
    )
)
#: the models, the long ones first (a stable order otherwise)
MODELS = sorted(_MODEL_NAMES, key=lambda model: model not in _LONG)


def environment(model: str) -> dict[str, str]:
    """A model's container environment: its name, and ``BENCH_LONG=1`` for a model known to be long."""
    return {"MODEL": model, **({"BENCH_LONG": "1"} if model in _LONG else {})}


START = datetime(2025, 1, 1)
