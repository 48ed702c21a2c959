"""The like-for-like run of the Amazon provider: ``BatchOperator(deferrable=True)`` mapped over the same N models.

Same settings as ``fleet_benchmark.py`` (``fleet_settings.py``), in its own file: a task of one DAG never
parses the other's file.
"""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.batch import BatchOperator

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
from fleet_settings import COMMON, MODELS, POLL_INTERVAL, START

with DAG(dag_id="fleet_benchmark_official", schedule=None, start_date=START, catchup=False):
    BatchOperator.partial(deferrable=True, poll_interval=int(POLL_INTERVAL), region_name="eu-west-1", **COMMON).expand(
        job_name=MODELS
    )
