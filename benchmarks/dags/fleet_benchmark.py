"""The fleet benchmark's DAG: N mapped AWS Batch tasks against the local Batch-shaped endpoint.

``fleet_benchmark`` maps this package's ``BatchJobOperator`` over N models (``fleet_benchmark_official.py``
maps the Amazon provider's ``BatchOperator(deferrable=True)`` over the same N, for a like-for-like run).
The job durations and failures come from the endpoint (``python -m airflow_ml_batch.testing.endpoint``),
not from here.
``benchmarks/airflow_fleet.py`` sets the environment variables ``fleet_settings.py`` reads. Two more, set by
hand, compare the operator's ways of running: ``FLEET_BENCH_SUBMIT_FROM_TRIGGER=0`` (the worker submits) and
``FLEET_BENCH_END_FROM_TRIGGER=0`` (the task resumes on a worker when its job ends; ``fleet_settings.py``).
"""

from __future__ import annotations

import os

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
from fleet_settings import COMMON, END_FROM_TRIGGER, EXECUTION_TIMEOUT, MODELS, POLL_INTERVAL, START, environment

from airflow_ml_batch.operators.batch import BatchJobOperator

with DAG(dag_id="fleet_benchmark", schedule=None, start_date=START, catchup=False):
    BatchJobOperator.partial(
        poll_interval=POLL_INTERVAL,
        execution_timeout=EXECUTION_TIMEOUT,
        vcpus=1,
        memory=2048,
        submit_from_trigger=os.environ.get("FLEET_BENCH_SUBMIT_FROM_TRIGGER", "1") == "1",
        end_from_trigger=END_FROM_TRIGGER,
        **COMMON,
    ).expand(environment=[environment(model) for model in MODELS])
