"""FleetReportOperator in real DAG runs: per model and in groups, AWS Batch and ECS, to a directory and to S3."""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import aws_connection_uri, rendered_links, run_dag, task_instance, xcom

from airflow_ml_batch.fleet import Model, batch_kwargs, ecs_kwargs, groups
from airflow_ml_batch.operators.report import FleetReportOperator
from airflow_ml_batch.testing.endpoint import Endpoint

pytestmark = pytest.mark.usefixtures("airflow_db")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
IMPORTS = "from airflow_ml_batch.operators.report import FleetReportOperator\n"
ESCAPED = "<script>alert(1)</script>"


def models(*ids: str) -> list[Model]:
    return [Model(id=model_id) for model_id in ids]


def rows_of(text: str) -> dict[str, dict[str, str]]:
    return {row["model_id"]: row for row in csv.DictReader(io.StringIO(text))}


def table_rows(page: str) -> list[str]:
    """The model cell of each row of the report page's table, unescaped."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [html.unescape(cell) for cell in re.findall(r"<tr[^>]*><td>(.*?)</td>", body)]


def batch_outcomes(rejected: str, failing: str) -> Any:
    """An ``on_submit``: ``rejected``'s SubmitJob is refused, ``failing``'s job fails, the others succeed and
    print their metrics."""

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        model = body["tags"].get("model_id")
        if model == rejected:
            return {"reject": "Error executing request, Exception : vcpus must be at most 256"}
        times = {"startedAt": 1_700_000_000_000, "stoppedAt": 1_700_000_000_000 + 300_000}
        if model == failing:
            container = {"exitCode": 3, "reason": "model diverged", "logStreamName": f"forecast/default/{model}x"}
            return {**times, "status": "FAILED", "statusReason": "Essential container in task exited",
                    "container": container}  # fmt: skip
        return {**times, "status": "SUCCEEDED", "container": {"exitCode": 0, "logStreamName": "forecast/default/ok"}}

    return on_submit


def run(tasks: str, imports: str = "") -> Any:
    return run_dag(tasks, imports=IMPORTS + imports)


def report_task(location: str, **arguments: Any) -> str:
    arguments = {"task_id": "report", "fleet_task_ids": "forecast", "location": location, **arguments}
    return "forecast >> FleetReportOperator(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n"


def test_per_model_batch_fleet_with_failures_fails_the_report_after_writing_it(
    aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    aws_endpoint.batch.on_submit = batch_outcomes(rejected="m2", failing="m3")
    entries = batch_kwargs(models("m1", "m2", "m3", "m4"))
    entries[3]["tags"]["model_id"] = ESCAPED  # a model id is text from a file: the page escapes it

    dag_run = run(
        "forecast = BatchJobOperator.partial(task_id='forecast', aws_conn_id='aws_fake', job_queue='models', "
        f"job_definition='forecast', poll_interval=0.2, end_from_trigger=False).expand_kwargs({entries!r})\n"
        + report_task(str(tmp_path / "out"), models=entries, aws_conn_id="aws_fake", max_failures=1)
    )

    assert task_instance(dag_run, "report").state == "failed"
    rows = rows_of((tmp_path / "out" / "report.csv").read_text())
    assert {model: row["status"] for model, row in rows.items()} == {
        "m1": "SUCCEEDED",
        "m2": "NOT_SUBMITTED",
        "m3": "FAILED",
        "m4": "SUCCEEDED",  # named by its MODEL_ID: the tag is another text
    }
    assert (rows["m3"]["exit_code"], rows["m3"]["reason"]) == ("3", "Essential container in task exited")
    assert rows["m1"]["duration_seconds"] == "300.0"
    page = (tmp_path / "out" / "report.html").read_text()
    assert table_rows(page) == ["m1", "m2", "m3", "m4"]
    assert "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:log-groups/log-group/" in page
    assert (tmp_path / "out" / "report.png").exists() == HAS_MATPLOTLIB
    summary = xcom(dag_run, "report")
    assert {k: summary[k] for k in ("models", "succeeded", "failed")} == {"models": 4, "succeeded": 2, "failed": 2}
    assert summary["html"] == str(tmp_path / "out" / "report.html")
    operator = FleetReportOperator(task_id="report", fleet_task_ids="forecast", location=str(tmp_path / "out"))
    assert rendered_links(dag_run, operator)["Fleet report"] == (tmp_path / "out" / "report.html").as_uri()


def test_a_model_id_is_escaped_in_the_page(aws_endpoint: Endpoint, tmp_path: Path) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"
    entries = [{"tags": {"model_id": ESCAPED}}, {"tags": {"model_id": "m2"}}]

    dag_run = run(
        "forecast = BatchFleetOperator(task_id='forecast', aws_conn_id='aws_fake', job_queue='models', "
        f"job_definition='forecast', poll_interval=0.2, models={entries!r})\n"
        + report_task(str(tmp_path), aws_conn_id="aws_fake")
    )

    assert task_instance(dag_run, "report").state == "success"
    page = (tmp_path / "report.html").read_text()
    assert ESCAPED not in page
    assert html.escape(ESCAPED) in page
    assert table_rows(page) == [ESCAPED, "m2"]


def test_batch_groups_report_every_model_from_the_groups_results(aws_endpoint: Endpoint, tmp_path: Path) -> None:
    aws_endpoint.batch.on_submit = batch_outcomes(rejected="m2", failing="m5")
    grouped = groups(batch_kwargs(models("m1", "m2", "m3", "m4", "m5")), size=2)

    dag_run = run(
        "forecast = BatchFleetOperator.partial(task_id='forecast', aws_conn_id='aws_fake', job_queue='models', "
        f"job_definition='forecast', poll_interval=0.2, allowed_failures=5).expand(models={grouped!r})\n"
        + report_task(str(tmp_path), models=grouped, aws_conn_id="aws_fake", max_failure_fraction=0.5)
    )

    assert task_instance(dag_run, "report").state == "success"  # 2 of 5 failed: at most half may
    rows = rows_of((tmp_path / "report.csv").read_text())
    assert list(rows) == ["m1", "m2", "m3", "m4", "m5"]
    assert [rows[m]["status"] for m in rows] == ["SUCCEEDED", "REJECTED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert "vcpus must be at most 256" in rows["m2"]["reason"]
    assert rows["m5"]["exit_code"] == "3"
    assert json.loads(rows["m1"]["parameters"]) == {}
    assert table_rows((tmp_path / "report.html").read_text()) == list(rows)
    assert xcom(dag_run, "report")["statuses"] == {"FAILED": 1, "REJECTED": 1, "SUCCEEDED": 3}


def test_groups_pushed_by_a_plan_task_are_reported_by_model_without_being_given(
    aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    aws_endpoint.batch.on_submit = batch_outcomes(rejected="m2", failing="m5")
    entries = batch_kwargs(models("m1", "m2", "m3", "m4", "m5"))

    dag_run = run(
        f"""
@task
def plan(ti=None):
    return push_groups({entries!r}, ti, size=2)

forecast = BatchFleetOperator.partial(task_id='forecast', aws_conn_id='aws_fake', job_queue='models',
    job_definition='forecast', poll_interval=0.2, allowed_failures=5).expand(models=plan())
"""
        + report_task(str(tmp_path), aws_conn_id="aws_fake", max_failure_fraction=0.5),
        imports="from airflow.decorators import task\nfrom airflow_ml_batch.fleet import push_groups\n",
    )

    assert task_instance(dag_run, "report").state == "success"
    rows = rows_of((tmp_path / "report.csv").read_text())
    # the models named from the entries each group's XCom holds, not from the references the plan returned
    assert list(rows) == ["m1", "m2", "m3", "m4", "m5"]
    assert [rows[m]["status"] for m in rows] == ["SUCCEEDED", "REJECTED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert json.loads(rows["m1"]["parameters"]) == {}


class ForgottenAfterOneLook(set):  # type: ignore[type-arg]
    """The endpoint's hidden tasks: each task once described, as ECS forgets a task an hour after it stops."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __contains__(self, arn: object) -> bool:
        if arn in self.seen:
            return True
        self.seen.add(str(arn))
        return False


class ForgottenModel(set):  # type: ignore[type-arg]
    """The endpoint's hidden tasks: those of one model."""

    def __init__(self, endpoint: Endpoint, model: str) -> None:
        super().__init__()
        self.endpoint, self.model = endpoint, model

    def __contains__(self, arn: object) -> bool:
        tags = self.endpoint.ecs.tasks.get(str(arn), {}).get("tags") or []
        return {"key": "model_id", "value": self.model} in tags


def ecs_endpoint(endpoint: Endpoint) -> None:
    endpoint.ecs.task_definitions["forecast"] = {
        "family": "forecast",
        "containerDefinitions": [{"name": "model", "essential": True}],
    }
    endpoint.ecs.new_task_fields = {
        "lastStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "startedAt": 1_700_000_000,
        "stoppedAt": 1_700_000_060,
        "containers": [{"name": "model", "exitCode": 0, "image": "forecast:1"}],
    }


@pytest.mark.parametrize("grouped", [False, True], ids=["per_model", "groups"])
def test_ecs_results_report_tasks_that_ecs_forgot(aws_endpoint: Endpoint, tmp_path: Path, grouped: bool) -> None:
    """Every task is described once (by its trigger) and then forgotten: the report reads the results alone."""
    ecs_endpoint(aws_endpoint)
    aws_endpoint.ecs.hidden = ForgottenAfterOneLook()
    entries = ecs_kwargs(models("m1", "m2", "m3"))
    arguments = "task_id='forecast', aws_conn_id='aws_fake', cluster='models', task_definition='forecast', "
    arguments += "container_name='model', poll_interval=0.2"
    if grouped:
        fleet = f"EcsFleetOperator.partial({arguments}).expand(models={groups(entries, 2)!r})\n"
    else:
        fleet = f"EcsTaskOperator.partial({arguments}, end_from_trigger=False).expand_kwargs({entries!r})\n"

    dag_run = run(
        "forecast = " + fleet + report_task(str(tmp_path), models=entries, aws_conn_id="aws_fake"),
        "from airflow_ml_batch.operators.ecs import EcsFleetOperator\n",
    )

    assert task_instance(dag_run, "report").state == "success"
    rows = rows_of((tmp_path / "report.csv").read_text())
    assert {model: (row["status"], row["duration_seconds"], row["image"]) for model, row in rows.items()} == {
        model: ("SUCCEEDED", "60.0", "forecast:1") for model in ("m1", "m2", "m3")
    }


def test_an_ecs_task_not_waited_for_is_described_and_one_ecs_forgot_is_not_found(
    aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    """Tasks not waited for return their ARN, no result: the report describes them; ECS no longer knows m2's."""
    ecs_endpoint(aws_endpoint)
    aws_endpoint.ecs.hidden = ForgottenModel(aws_endpoint, "m2")
    entries = ecs_kwargs(models("m1", "m2", "m3"))

    dag_run = run(
        "forecast = EcsTaskOperator.partial(task_id='forecast', aws_conn_id='aws_fake', cluster='models', "
        f"task_definition='forecast', container_name='model', wait_for_completion=False).expand_kwargs({entries!r})\n"
        + report_task(str(tmp_path), models=entries, aws_conn_id="aws_fake", max_failure_fraction=0.5)
    )

    assert task_instance(dag_run, "report").state == "success"
    rows = rows_of((tmp_path / "report.csv").read_text())
    assert [rows[m]["status"] for m in ("m1", "m2", "m3")] == ["SUCCEEDED", "NOT_FOUND", "SUCCEEDED"]
    assert "no longer describes" in rows["m2"]["reason"]
    assert rows["m1"]["image"] == "forecast:1"


def test_the_report_goes_to_s3_and_links_to_the_s3_console(
    moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_ml_batch.testing import create_batch_queue

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_uri(moto))
    queue = create_batch_queue("aws_default")
    S3Hook().create_bucket("reports")
    entries = batch_kwargs(models("m1", "m2"))

    dag_run = run(
        "forecast = BatchJobOperator.partial(task_id='forecast', poll_interval=0.2, end_from_trigger=False, "
        f"job_queue={queue['job_queue']!r}, job_definition={queue['job_definition']!r}).expand_kwargs({entries!r})\n"
        + report_task("s3://reports/forecast/{{ ds }}/", models=entries)
    )

    assert task_instance(dag_run, "report").state == "success"
    prefix = f"forecast/{dag_run.logical_date:%Y-%m-%d}"
    s3 = S3Hook()
    rows = rows_of(s3.read_key(f"{prefix}/report.csv", "reports"))
    assert {model: row["status"] for model, row in rows.items()} == {"m1": "SUCCEEDED", "m2": "SUCCEEDED"}
    assert table_rows(s3.read_key(f"{prefix}/report.html", "reports")) == ["m1", "m2"]
    assert s3.check_for_key(f"{prefix}/report.png", "reports") == HAS_MATPLOTLIB
    summary = xcom(dag_run, "report")
    assert summary["html"] == f"s3://reports/{prefix}/report.html"
    operator = FleetReportOperator(task_id="report", fleet_task_ids="forecast", location="s3://reports")
    key = f"{prefix}/report.html".replace("/", "%2F")
    assert rendered_links(dag_run, operator)["Fleet report"] == (
        f"https://console.aws.amazon.com/s3/object/reports?region=eu-west-1&prefix={key}"
    )


def test_without_matplotlib_the_report_has_no_chart_and_says_so(
    aws_endpoint: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it raises
    aws_endpoint.batch.submitted_status = "SUCCEEDED"
    entries = batch_kwargs(models("m1", "m2"))

    dag_run = run(
        "forecast = BatchFleetOperator(task_id='forecast', aws_conn_id='aws_fake', job_queue='models', "
        f"job_definition='forecast', poll_interval=0.2, models={entries!r})\n"
        + report_task(str(tmp_path), aws_conn_id="aws_fake")
    )

    assert task_instance(dag_run, "report").state == "success"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.csv", "report.html"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("No chart: the chart needs matplotlib: pip install") == 1
    assert xcom(dag_run, "report")["chart"] is None


def test_the_failure_fraction_fails_the_report_with_the_counts_and_the_first_failed_models(
    aws_endpoint: Endpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    aws_endpoint.batch.on_submit = batch_outcomes(rejected="m1", failing="m2")
    entries = batch_kwargs(models("m1", "m2", "m3"))

    dag_run = run(
        "forecast = BatchFleetOperator(task_id='forecast', aws_conn_id='aws_fake', job_queue='models', "
        f"job_definition='forecast', poll_interval=0.2, allowed_failures=3, models={entries!r})\n"
        + report_task(str(tmp_path), aws_conn_id="aws_fake", max_failure_fraction=0.5)
    )

    assert task_instance(dag_run, "report").state == "failed"
    logged = caplog.text + capsys.readouterr().out
    assert (
        "2 of 3 models did not succeed, over max_failure_fraction=0.5: m1 (REJECTED: AWS Batch job of model m1 was"
    ) in logged, logged[-3000:]
    assert "m2 (FAILED: Essential container in task exited)" in logged
    assert (tmp_path / "report.csv").exists()
    assert (tmp_path / "report.html").exists()
    assert xcom(dag_run, "report")["failed"] == 2


def test_bad_thresholds_are_refused_naming_the_value() -> None:
    with pytest.raises(ValueError, match="max_failure_fraction must be between 0 and 1 or None, not 5"):
        FleetReportOperator(task_id="report", fleet_task_ids="forecast", location="/tmp", max_failure_fraction=5)
    with pytest.raises(ValueError, match=r"max_failures must be a number of models \(0 or more\) or None, not -1"):
        FleetReportOperator(task_id="report", fleet_task_ids="forecast", location="/tmp", max_failures=-1)


def test_importing_the_report_operator_imports_no_aws_sdk_hook_or_trigger() -> None:
    code = "import sys, json, airflow_ml_batch.operators.report; print(json.dumps(sorted(sys.modules)))"
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)

    heavy = ("boto3", "aiobotocore", "aiohttp", "matplotlib", "airflow_ml_batch.hooks", "airflow_ml_batch.triggers")
    assert [name for name in modules if name.startswith(heavy)] == []
    assert "airflow_ml_batch.operators.report" in modules


def test_several_fleet_tasks_in_one_report_name_their_models_from_what_they_ran(
    aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    """No ``models``: the per-model task's are read from its upstream task, the group's from its own list."""
    aws_endpoint.batch.submitted_status = "SUCCEEDED"

    dag_run = run(
        f"""
        @task
        def plan():
            return {batch_kwargs(models("m1", "m2"))!r}

        forecast = BatchJobOperator.partial(
            task_id="forecast", aws_conn_id="aws_fake", job_queue="models", job_definition="forecast",
            poll_interval=0.2, end_from_trigger=False,
        ).expand_kwargs(plan())
        backfill = BatchFleetOperator(
            task_id="backfill", aws_conn_id="aws_fake", job_queue="models", job_definition="forecast",
            poll_interval=0.2, models={batch_kwargs(models("b1", "b2"))!r},
        )
        [forecast, backfill] >> FleetReportOperator(
            task_id="report", fleet_task_ids=["forecast", "backfill"], location={str(tmp_path)!r},
            aws_conn_id="aws_fake",
        )
        """,
        "from airflow.decorators import task\n",
    )

    assert task_instance(dag_run, "report").state == "success"
    rows = rows_of((tmp_path / "report.csv").read_text())
    assert {model: row["status"] for model, row in rows.items()} == dict.fromkeys(["m1", "m2", "b1", "b2"], "SUCCEEDED")
    assert json.loads(rows["m1"]["parameters"]) == {}
