"""What the fleet benchmark DAG files share (no DAG here: a task of one never parses another's file)."""

from __future__ import annotations

import os
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
#: models per group and SubmitJob/s of the group mode (fleet_benchmark_groups.py; unset: the operator's default)
GROUP_SIZE = int(os.environ.get("FLEET_BENCH_GROUP_SIZE", "100"))
SUBMIT_RATE = float(os.environ["FLEET_BENCH_SUBMIT_RATE"]) if os.environ.get("FLEET_BENCH_SUBMIT_RATE") else None
MODELS = [f"model-{number:05d}" for number in range(JOBS)]
START = datetime(2025, 1, 1)
