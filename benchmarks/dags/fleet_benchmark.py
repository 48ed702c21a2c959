"""The fleet benchmark's DAG: N mapped AWS Batch tasks against the local Batch-shaped endpoint.

``fleet_benchmark`` maps this package's ``BatchJobOperator`` over N models (``fleet_benchmark_official.py``
maps the Amazon provider's ``BatchOperator(deferrable=True)`` over the same N, for a like-for-like run).
The job durations and failures come from the endpoint (``benchmarks/fake_batch.py``), not from here.
``benchmarks/airflow_fleet.py`` sets the environment variables read below.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_ml_batch.operators.batch import BatchJobOperator

JOBS = int(os.environ.get("FLEET_BENCH_JOBS", "10"))
POLL_INTERVAL = float(os.environ.get("FLEET_BENCH_POLL_INTERVAL", "10"))
CONN_ID = os.environ.get("FLEET_BENCH_CONN_ID", "aws_bench")
COMMON = {
    "task_id": "model",
    "aws_conn_id": CONN_ID,
    "job_queue": "models",
    "job_definition": "forecast",
    "retries": int(os.environ.get("FLEET_BENCH_RETRIES", "1")),
    "retry_delay": timedelta(seconds=float(os.environ.get("FLEET_BENCH_RETRY_DELAY", "5"))),
}
MODELS = [f"model-{number:05d}" for number in range(JOBS)]
START = datetime(2025, 1, 1)

with DAG(dag_id="fleet_benchmark", schedule=None, start_date=START, catchup=False):
    BatchJobOperator.partial(poll_interval=POLL_INTERVAL, vcpus=1, memory=2048, **COMMON).expand(
        environment=[{"MODEL": model} for model in MODELS]
    )
