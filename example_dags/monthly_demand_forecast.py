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

``report`` describes every job from AWS Batch (status, duration, attempts, the Airflow try), adds the
metrics each model printed (``collect_metrics``), writes ``report.csv`` and ``report.png`` (durations
per model, failures in red; needs matplotlib) under ``report_location`` (a directory, or ``s3://``), logs
a summary, and fails the run if any model did not succeed.

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
import re
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_ml_batch.fleet import batch_kwargs, groups, load_models
from airflow_ml_batch.operators.batch import JOB_ID_XCOM_KEY, BatchFleetOperator, BatchJobOperator

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow before 3.1
    from airflow.exceptions import AirflowFailException

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


def upload(path: Path, url: str) -> str:
    """Copy a report file to ``s3://bucket/key`` through the same connection; return the URL."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, _, key = url.removeprefix("s3://").partition("/")
    S3Hook(aws_conn_id=AWS_CONN_ID).load_file(str(path), key=key, bucket_name=bucket, replace=True)
    return url


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
                retry_strategy=SPOT_RETRY,
                poll_interval=POLL_INTERVAL,
                model_retries=1,  # a failed model runs once more within the group; a retry of the task reruns the rest
                execution_timeout=timedelta(hours=3),  # every job still running then is terminated
            ).expand(models=split(models))
        prepare_data >> forecast

        @task(trigger_rule="all_done", retries=0)
        def report(
            models: list[dict[str, Any]], location: str, run_id: str | None = None, ti: Any = None
        ) -> dict[str, Any]:
            """Every model's outcome as a CSV file, a chart and a summary; fails if any model did not succeed."""
            from airflow_ml_batch.hooks.batch import BatchHook
            from airflow_ml_batch.report import gather_batch_jobs, model_ids, pulled, summarize, write_chart, write_csv

            # Every job id (pushed before each task deferred; a group's are in its results) and the results.
            results = pulled(ti.xcom_pull(task_ids="forecast"))
            job_ids = pulled(ti.xcom_pull(task_ids="forecast", key=JOB_ID_XCOM_KEY))
            job_ids += [result.get("job_id") for result in results if isinstance(result, dict)]
            outcomes = gather_batch_jobs(BatchHook(aws_conn_id=AWS_CONN_ID), model_ids(models), job_ids, results)
            run = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(run_id))
            with tempfile.TemporaryDirectory() as scratch:
                local = Path(scratch) if location.startswith("s3://") else Path(location or reports_dir()) / run
                local.mkdir(parents=True, exist_ok=True)
                files: dict[str, Path | str] = {"csv": write_csv(outcomes, local / "report.csv")}
                try:
                    files["chart"] = write_chart(outcomes, local / "report.png", title=f"Demand forecast {run_id}")
                except ImportError as error:
                    print(f"no chart: {error}")
                if location.startswith("s3://"):
                    files = {
                        kind: upload(path, f"{location.rstrip('/')}/{run}/{path.name}") for kind, path in files.items()
                    }
            summary = summarize(outcomes)
            print(summary + "\n" + "\n".join(f"{kind}: {path}" for kind, path in files.items()))
            failed = sum(1 for outcome in outcomes if not outcome.succeeded)
            if failed:
                raise AirflowFailException(
                    f"{failed} of {len(outcomes)} models did not succeed; report: {files['csv']}"
                )
            return {"models": len(outcomes), "succeeded": len(outcomes), **{k: str(v) for k, v in files.items()}}

        forecast >> report(models, "{{ params.report_location }}")
        return dag


# One task per model: the grid shows each model, with Airflow's retries and pools per model.
per_model = forecast_dag("monthly_demand_forecast", "Month-end demand forecast: one AWS Batch job per product line")
# One task per 100 models: Airflow's cost no longer grows with the fleet (see "Groups" in docs/fleet.md).
grouped = forecast_dag(
    "monthly_demand_forecast_groups", "Month-end demand forecast: AWS Batch jobs in groups of 100 models", 100
)
