"""Month-end demand forecast: one AWS Batch job per product line, thousands of them, then a report.

``prepare_data`` (a Batch job that extracts each product's sales history to its dataset) runs beside
``plan`` (which reads the models file); then ``forecast`` runs one model job per entry of the file, the
longest expected jobs first; then ``report`` runs whatever failed (``trigger_rule="all_done"``).

``plan`` reads the models file when the run starts, not when the DAG file is parsed: a literal list of
5000 mapped arguments makes Airflow's scheduler walk the whole list for every task instance it checks
(each scheduling loop then grows with the square of the fleet), while a list a task returned is one
reference. The price: each ``forecast`` task downloads the whole list (about 300 bytes per model) when
it starts.

Each ``forecast`` task holds a worker slot only while it submits its job, then defers: the triggerer
watches every job through one shared poller (one DescribeJobs call per 100 jobs per round). A job that
succeeds ends its task from the triggerer; a job that fails resumes its task, which fails with the
job's reason and log tail, and Airflow retries it (a retry re-attaches to a job that still runs). A job
whose Spot instance is reclaimed is run again by Batch itself (``retryStrategy``: a second attempt).

``report`` (``FleetReportOperator``) reads every model's outcome from the results the ``forecast`` tasks
pushed (status, duration, attempts, exit code, reason, the metrics each model printed with
``collect_metrics``), describing from AWS Batch only the jobs of tasks that left none, writes
``report.csv``, ``report.png`` (durations per model, failures in red; needs matplotlib) and
``report.html`` (a sortable table of every model with its log link, and the chart) under the run's
folder of ``report_location`` (a directory, or ``s3://``), links the page from the task, logs a summary,
and fails the run if any model did not succeed.

``monthly_demand_forecast_groups`` is the same DAG with ``BatchFleetOperator``: one task per group of
100 models, whose trigger submits, watches and retries the group's jobs (``model_retries``), so
Airflow's cost per run no longer grows with the number of models.

The models file (``forecast_model/models.json``: 5 regions x 5 product groups x 200 products, written by
``forecast_model/make_models.py``) and the report location are run parameters. For 5000 models, raise
``[core] max_map_length`` (default 1024) and the triggerer's capacity (default 1000): see "Airflow
settings for a fleet of 5000" in ``docs/fleet.md``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_ml_batch.fleet import batch_kwargs, groups, load_models
from airflow_ml_batch.operators.batch import BatchFleetOperator, BatchJobOperator
from airflow_ml_batch.operators.report import FleetReportOperator

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task

AWS_CONN_ID = "aws_default"
JOB_QUEUE = "models"
MODEL_JOB_DEFINITION = "forecast"  # the image of forecast_model/Dockerfile
DATA_PREP_JOB_DEFINITION = "forecast-data-prep"
MODELS_FILE = Path(__file__).parent / "forecast_model" / "models.json"
# Seconds between status polls on the triggerer: 30 s suits jobs of minutes to hours.
POLL_INTERVAL = float(os.environ.get("FORECAST_POLL_INTERVAL", "30"))
# Seconds before a failed model's next Airflow try.
RETRY_DELAY = timedelta(seconds=float(os.environ.get("FORECAST_RETRY_DELAY", "120")))
# A model job whose Spot instance is reclaimed runs again within Batch (same job, a second attempt);
# one that fails by itself (exit code, bad data) is left to the task's retries.
SPOT_RETRY = {
    "attempts": 2,
    "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}],
}


def reports_dir() -> str:
    """Where reports go when the run gives no ``report_location``: ``$AIRFLOW_HOME/reports/forecast``."""
    return os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "reports", "forecast")


# The run's folder under report_location (a directory or s3://bucket/prefix), named after the run.
REPORT_LOCATION = (
    "{{ (params.report_location or '" + reports_dir() + "').rstrip('/') }}/"
    "{{ run_id | replace(':', '_') | replace('+', '_') }}"
)


def forecast_dag(dag_id: str, description: str, group_size: int | None = None) -> DAG:
    """The month-end DAG: one task per model, or (``group_size``) one task per group of models."""
    with DAG(
        dag_id=dag_id,
        description=description,
        schedule="0 4 1 * *",  # 04:00 UTC on the first of the month, for the month that just ended
        start_date=datetime(2025, 1, 1),
        catchup=False,
        max_active_runs=1,
        doc_md=__doc__,
        # Run parameters: the models file (JSON or YAML), and where the report goes (a directory or
        # s3://bucket/prefix; empty: $AIRFLOW_HOME/reports/forecast).
        params={"models_file": str(MODELS_FILE), "report_location": ""},
        default_args={"aws_conn_id": AWS_CONN_ID, "retries": 2, "retry_delay": RETRY_DELAY},
        tags=["airflow-ml-batch", "example"],
    ) as dag:
        prepare_data = BatchJobOperator(
            task_id="prepare_data",
            job_queue=JOB_QUEUE,
            job_definition=DATA_PREP_JOB_DEFINITION,
            command=["python", "prepare.py", "--month", "{{ data_interval_start.strftime('%Y-%m') }}"],
            poll_interval=POLL_INTERVAL,
            execution_timeout=timedelta(hours=1),
        )

        @task
        def plan(models_file: str) -> list[dict[str, Any]]:
            """The arguments of one ``forecast`` task per model, longest expected job first."""
            return batch_kwargs(load_models(models_file))

        models = plan("{{ params.models_file }}")

        if group_size is None:
            forecast = BatchJobOperator.partial(
                task_id="forecast",
                job_queue=JOB_QUEUE,
                job_definition=MODEL_JOB_DEFINITION,
                collect_metrics=True,  # the model's {"metrics": ...} line goes into the task's result
                job_logs="always",  # each model's few log lines in its task log, success or not
                retry_strategy=SPOT_RETRY,
                poll_interval=POLL_INTERVAL,
                map_index_template="{{ task.environment['MODEL_ID'] }}",  # the UI lists tasks by model
                execution_timeout=timedelta(hours=2),  # the job is terminated then, and the task fails
            ).expand_kwargs(models)
        else:

            @task
            def split(models: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
                """Groups of ``group_size`` models, the longest first."""
                return groups(models, size=group_size)

            forecast = BatchFleetOperator.partial(
                task_id="forecast",
                job_queue=JOB_QUEUE,
                job_definition=MODEL_JOB_DEFINITION,
                collect_metrics=True,
                job_logs="always",  # every model's log lines in its group's task log, under the model's name
                retry_strategy=SPOT_RETRY,
                poll_interval=POLL_INTERVAL,
                model_retries=1,  # a failed model runs once more within the group; a retry of the task reruns the rest
                execution_timeout=timedelta(hours=3),  # every job still running then is terminated
            ).expand(models=split(models))
        prepare_data >> forecast

        # Every model's outcome, whatever failed (trigger_rule="all_done"): report.csv, report.png and
        # report.html under the run's folder of report_location; fails the run if any model did not succeed.
        report = FleetReportOperator(
            task_id="report",
            fleet_task_ids="forecast",
            models=models,  # names every model, in map order, with its dataset and parameters
            location=REPORT_LOCATION,
            title="Demand forecast {{ run_id }}",
            retries=0,
        )
        forecast >> report
        return dag


# One task per model: the grid shows each model, with Airflow's retries and pools per model.
per_model = forecast_dag("monthly_demand_forecast", "Month-end demand forecast: one AWS Batch job per product line")
# One task per 100 models: Airflow's cost no longer grows with the fleet (see "Groups" in docs/fleet.md).
grouped = forecast_dag(
    "monthly_demand_forecast_groups", "Month-end demand forecast: AWS Batch jobs in groups of 100 models", 100
)
