"""A fleet of AWS Batch model jobs: one deferrable ``BatchJobOperator`` task per product line.

``product_lines`` builds one SubmitJob request per product line (its own ``command`` and
``environment``), and ``forecast`` is mapped over them at run time. Each mapped task submits its job
from a short worker run, then defers: while the jobs run, no worker slot is held, and the triggerer
watches all of them through one shared poller (one DescribeJobs call per 100 jobs per round). A job
that succeeds ends its task from the triggerer, with no second worker run.

How many product lines: the Airflow Variable ``ml_batch_demo_jobs``, else the environment variable
``ML_BATCH_DEMO_JOBS``, else 200. Keep ``[core] max_map_length`` (default 1024) at least that large.

The job queue and job definition are those that ``airflow_ml_batch.testing.create_batch_queue()``
creates on a local endpoint; ``scripts/demo.sh`` runs this DAG against one. To run it against AWS,
point the ``aws_ml_batch_demo`` connection at your account and change the names below.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow_ml_batch.operators.batch import BatchJobOperator

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task

AWS_CONN_ID = "aws_ml_batch_demo"
JOB_QUEUE = "models"
JOB_DEFINITION = "forecast"
DEFAULT_JOBS = 200
# Seconds between status polls on the triggerer. Jobs that run for hours need no more than the default
# 30 s; the local demo, whose jobs finish at once, sets 5.
POLL_INTERVAL = float(os.environ.get("ML_BATCH_DEMO_POLL_INTERVAL", "30"))

with DAG(
    dag_id="batch_fleet_demo",
    description="One AWS Batch forecast job per product line, deferred while the jobs run",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["airflow-ml-batch", "example"],
):

    @task
    def product_lines(count: str) -> list[dict[str, Any]]:
        """The keyword arguments of one ``forecast`` task per product line."""
        total = int(count or os.environ.get("ML_BATCH_DEMO_JOBS") or DEFAULT_JOBS)
        lines = [f"line-{number:05d}" for number in range(total)]
        return [
            {
                "command": ["python", "-m", "forecast", "--product-line", line, "--horizon-weeks", "13"],
                "environment": {"PRODUCT_LINE": line, "HORIZON_WEEKS": "13"},
                "tags": {"product_line": line},
            }
            for line in lines
        ]

    BatchJobOperator.partial(
        task_id="forecast",
        aws_conn_id=AWS_CONN_ID,
        job_queue=JOB_QUEUE,
        job_definition=JOB_DEFINITION,
        vcpus=1,
        memory=2048,
        poll_interval=POLL_INTERVAL,
        map_index_template="{{ task.environment['PRODUCT_LINE'] }}",  # the UI lists tasks by product line
        # A retry re-attaches to the job of the failed try if it still runs, instead of submitting again.
        retries=2,
        retry_delay=timedelta(minutes=1),
        # At the timeout the job is terminated and the task fails.
        execution_timeout=timedelta(hours=2),
    ).expand_kwargs(product_lines(count="{{ var.value.get('ml_batch_demo_jobs', '') }}"))
