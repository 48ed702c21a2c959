"""The month-end example DAG end to end: data prep, the mapped model jobs, and the report, on real Airflow."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import aws_connection_uri, run_dag_file, task_instance

from airflow_ml_batch.fleet import load_models
from airflow_ml_batch.testing.endpoint import Endpoint

EXAMPLES = Path(__file__).parents[2] / "example_dags"
MAKE_MODELS = EXAMPLES / "forecast_model" / "make_models.py"
spec = importlib.util.spec_from_file_location("make_models", MAKE_MODELS)
assert spec is not None
assert spec.loader is not None
make_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_models)

pytestmark = pytest.mark.usefixtures("airflow_db")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORECAST_POLL_INTERVAL", "0.5")


def test_the_example_models_file_is_what_make_models_writes_and_loads_5000_models() -> None:
    path = EXAMPLES / "forecast_model" / "models.json"

    assert path.read_text() == make_models.dumps(make_models.models_document(5000))
    models = load_models(path)
    assert len(models) == 5000
    assert len({(m.tags["region"], m.tags["product_group"]) for m in models}) == 25
    assert {m.expected_minutes for m in models} == {10, 30, 90}


def test_make_models_spreads_any_count_over_regions_and_groups(tmp_path: Path) -> None:
    make_models.main(["--count", "30", "--output", str(tmp_path / "models.json")])

    models = load_models(tmp_path / "models.json")
    assert len(models) == 30
    assert sum(1 for m in models if m.id.endswith("-0002")) == 5  # 25 of product 1, then 5 of product 2


def write_models(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "models.json"
    path.write_text(make_models.dumps(make_models.models_document(count)))
    return path


def run_example(models_file: Path, report_location: str, dag: str = "per_model", **overrides: Any) -> Any:
    """``dag.test()`` the example DAG from a copy in the DAGs folder, with its run parameters set.

    ``dag.test()`` resumes a task ended from the triggerer without the XComs the triggerer would push,
    so the model tasks resume on a worker (``end_from_trigger=False``) and return their results there.
    """
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "monthly_demand_forecast.py"
    shutil.copy(EXAMPLES / "monthly_demand_forecast.py", path)
    try:
        conf = {"models_file": str(models_file), "report_location": report_location}
        overrides = {"end_from_trigger": False, **overrides}
        return run_dag_file(path, dag, overrides, run_conf=conf)
    finally:
        path.unlink()


def report_rows(text: str) -> dict[str, dict[str, str]]:
    return {row["model_id"]: row for row in csv.DictReader(io.StringIO(text))}


def run_dir(dag_run: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run.run_id)


def test_on_moto_every_model_runs_and_the_report_lands_in_s3(
    moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_ml_batch.testing import create_batch_queue

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_uri(moto))
    create_batch_queue("aws_default", extra_job_definitions=("forecast-data-prep",))
    s3 = S3Hook(aws_conn_id="aws_default")
    s3.create_bucket("reports")
    models_file = write_models(tmp_path, 25)

    dag_run = run_example(models_file, "s3://reports/forecast")

    assert dag_run.state == "success"
    states = {(ti.task_id, ti.state) for ti in dag_run.get_task_instances()}
    assert states == {("prepare_data", "success"), ("plan", "success"), ("forecast", "success"), ("report", "success")}
    assert len([ti for ti in dag_run.get_task_instances() if ti.task_id == "forecast"]) == 25
    prefix = f"forecast/{run_dir(dag_run)}"
    rows = report_rows(s3.read_key(f"{prefix}/report.csv", "reports"))
    assert set(rows) == {model.id for model in load_models(models_file)}
    assert {row["status"] for row in rows.values()} == {"SUCCEEDED"}
    assert s3.check_for_key(f"{prefix}/report.html", "reports")
    if HAS_MATPLOTLIB:
        chart = s3.get_key(f"{prefix}/report.png", "reports").get()["Body"].read()
        assert chart[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # the report goes on without its chart
        assert not s3.check_for_key(f"{prefix}/report.png", "reports")


@pytest.mark.parametrize("dag", ["per_model", "grouped"])
def test_a_mix_of_outcomes_is_reported_and_fails_the_run(
    dag: str, aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One model's job is rejected at SubmitJob, one fails, the rest succeed and print their metrics.

    In groups, the report reads the group's results as it reads each model task's.
    """
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_uri(aws_endpoint.url))
    models_file = write_models(tmp_path, 6)
    rejected, failing = "amer-dairy-0001", "amer-frozen-0001"

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        environment = {v["name"]: v["value"] for v in body.get("containerOverrides", {}).get("environment", [])}
        model = environment.get("MODEL_ID")
        if model == rejected:
            return {"reject": "Error executing request, Exception : vcpus must be at most 256"}
        times = {"startedAt": 1_700_000_000_000, "stoppedAt": 1_700_000_000_000 + 600_000}
        if model == failing:
            return {**times, "status": "FAILED", "statusReason": "Essential container in task exited",
                    "container": {"exitCode": 1}}  # fmt: skip
        stream = f"forecast/default/{body['jobName']}"
        aws_endpoint.logs.streams[("/aws/batch/job", stream)] = ["training", json.dumps({"metrics": {"mape": 0.25}})]
        return {**times, "status": "SUCCEEDED", "container": {"exitCode": 0, "logStreamName": stream}}

    aws_endpoint.batch.on_submit = on_submit

    dag_run = run_example(models_file, str(tmp_path / "reports"), dag, retries=0)

    assert dag_run.state == "failed"
    assert task_instance(dag_run, "report").state == "failed"
    rows = report_rows((tmp_path / "reports" / run_dir(dag_run) / "report.csv").read_text())
    assert len(rows) == 6
    # per model, the rejected model's task failed before it had a job; a group says AWS rejected it
    assert rows[rejected]["status"] == ("NOT_SUBMITTED" if dag == "per_model" else "REJECTED")
    assert (rows[failing]["status"], rows[failing]["exit_code"], rows[failing]["reason"]) == (
        "FAILED",
        "1",
        "Essential container in task exited",
    )
    succeeded = [row for row in rows.values() if row["status"] == "SUCCEEDED"]
    assert len(succeeded) == 4
    assert {(row["duration_seconds"], row["metric_mape"]) for row in succeeded} == {("600.0", "0.25")}
    assert (tmp_path / "reports" / run_dir(dag_run) / "report.png").exists() == HAS_MATPLOTLIB
    page = (tmp_path / "reports" / run_dir(dag_run) / "report.html").read_text()
    assert page.count("<tr") == 1 + 6  # the heading and one row per model
