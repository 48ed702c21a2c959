"""The fleet benchmark in group mode: the same N models as ``fleet_benchmark.py``, in groups of ``BatchFleetOperator``.

``fleet_benchmark_groups`` maps this package's ``BatchFleetOperator`` over ``groups()`` of the same N models
(``FLEET_BENCH_GROUP_SIZE`` each, default 100): one task instance per group, the jobs submitted from the
triggerer within ``FLEET_BENCH_SUBMIT_RATE`` per second if set (``benchmarks/airflow_fleet.py --submit-rate``),
else at the operator's default (AWS Batch's published 50 per second, halved on throttling). Same settings
as ``fleet_benchmark.py`` (``fleet_settings.py``), in its own file.
"""

from __future__ import annotations

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
from fleet_settings import COMMON, EXECUTION_TIMEOUT, GROUP_SIZE, MODELS, POLL_INTERVAL, START, SUBMIT_RATE, environment

from airflow_ml_batch.fleet import groups
from airflow_ml_batch.operators.batch import BatchFleetOperator

with DAG(dag_id="fleet_benchmark_groups", schedule=None, start_date=START, catchup=False):
    BatchFleetOperator.partial(
        poll_interval=POLL_INTERVAL,
        execution_timeout=EXECUTION_TIMEOUT,
        vcpus=1,
        memory=2048,
        submit_rate=SUBMIT_RATE,
        **COMMON,
    ).expand(models=groups([{"job_name": model, "environment": environment(model)} for model in MODELS], GROUP_SIZE))
