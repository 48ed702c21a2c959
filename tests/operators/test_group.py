"""What the group operators add (operators/group.py): labels, the table of every model, links; in real DAG runs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from helpers import execute_error, rendered_links, run_dag, task_instance, xcom

from airflow_ml_batch.operators.batch import BatchFleetOperator
from airflow_ml_batch.operators.ecs import EcsFleetOperator
from airflow_ml_batch.testing.endpoint import Endpoint

pytestmark = pytest.mark.usefixtures("airflow_db")

QUEUE_ARN = "arn:aws:batch:eu-west-1:123456789012:job-queue/models"


def fail_model(name: str) -> Any:
    """An ``on_submit`` that fails the job of the model called ``name`` and lets the others succeed."""

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        if f"-{name}-t" in body["jobName"]:
            container = {"exitCode": 3, "reason": "model diverged", "logStreamName": f"forecast/default/{name}"}
            return {"status": "FAILED", "statusReason": "Essential container in task exited", "container": container}
        container = {"exitCode": 0, "logStreamName": f"forecast/default/{body['jobName'][-12:]}"}
        return {"status": "SUCCEEDED", "container": container, "startedAt": 1_000, "stoppedAt": 91_000}

    return on_submit


def test_each_group_is_labelled_and_ends_on_a_worker_with_a_table_of_every_model(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    aws_endpoint.batch.on_submit = fail_model("m3")

    dag_run = run_dag(
        f"""
        models = [{{"tags": {{"model_id": f"m{{n}}"}}}} for n in range(5)]
        BatchFleetOperator.partial(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, job_queue={QUEUE_ARN!r},
            job_definition="forecast", allowed_failures=1,
        ).expand(models=groups(models, size=3))
        """,
        imports="from airflow_ml_batch.fleet import groups\n",
    )

    tis = sorted((ti for ti in dag_run.get_task_instances() if ti.task_id == "forecast"), key=lambda ti: ti.map_index)
    assert [ti.state for ti in tis] == ["success", "success"]
    assert [ti.rendered_map_index for ti in tis] == ["m0 .. m2 (3 models)", "m3 .. m4 (2 models)"]
    logged = caplog.text + capsys.readouterr().out
    # the worker that ends each group writes the table (the trigger does not: no end_from_trigger)
    assert "2 of 3 models succeeded" not in logged
    assert "1 of 2 models succeeded, 1 failed:" in logged
    assert "the task ends here, on the triggerer" not in logged
    table = logged[logged.index("1 of 2 models succeeded, 1 failed:") :].splitlines()[1:5]
    assert table[0].split() == ["model", "status", "duration", "tries", "exit", "code", "reason", "log"]
    assert table[2].split()[:5] == ["m3", "FAILED", "-", "1", "3"]  # failed models first
    assert "Essential container in task exited" in table[2]
    assert table[3].split()[:5] == ["m4", "SUCCEEDED", "1m30s", "1", "0"]
    assert "#logsV2:log-groups/log-group/%2Faws%2Fbatch%2Fjob/log-events/forecast%2Fdefault%2F" in table[3]


def test_groups_pushed_by_a_plan_task_each_pull_their_own_models(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"

    dag_run = run_dag(
        """
        @task
        def plan(ti=None):
            return push_groups([{"tags": {"model_id": f"m{n}"}} for n in range(5)], ti, size=2)

        BatchFleetOperator.partial(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, job_queue="models", job_definition="forecast"
        ).expand(models=plan())
        """,
        imports="from airflow.decorators import task\nfrom airflow_ml_batch.fleet import push_groups\n",
    )

    tis = sorted((ti for ti in dag_run.get_task_instances() if ti.task_id == "forecast"), key=lambda ti: ti.map_index)
    assert [ti.state for ti in tis] == ["success"] * 3
    # labelled with the models pulled, as a group given its entries is
    assert [ti.rendered_map_index for ti in tis] == ["m0 .. m1 (2 models)", "m2 .. m3 (2 models)", "m4"]
    # the plan's return value holds one small reference per group, its entries are in XComs of their own
    # (and each group's label, which Airflow 3.2+ renders before the run pulls the entries)
    assert xcom(dag_run, "plan") == [
        {"xcom_task_id": "plan", "xcom_key": key, "models_label": label}
        for key, label in (("models_00000", "m0 .. m1 (2 models)"), ("models_00001", "m2 .. m3 (2 models)"))
    ] + [{"xcom_task_id": "plan", "xcom_key": "models_00002", "models_label": "m4"}]
    labelled = BatchFleetOperator(
        task_id="forecast", job_queue="q", job_definition="d", models=xcom(dag_run, "plan")[0]
    )
    assert labelled.models_label == "m0 .. m1 (2 models)"  # the label a template renders before the pull
    models_by_group: dict[str, set[str]] = {}
    for operation, body in aws_endpoint.requests:
        if operation == "SubmitJob":
            models_by_group.setdefault(body["jobName"].split("--")[0], set()).add(body["tags"]["model_id"])
    assert sorted(models_by_group.values(), key=sorted) == [{"m0", "m1"}, {"m2", "m3"}, {"m4"}]


def test_a_reference_to_an_xcom_the_run_does_not_have_fails_clearly(aws_endpoint: Endpoint) -> None:
    arguments = {"job_queue": "models", "job_definition": "forecast", "aws_conn_id": "aws_fake"}
    arguments["models"] = {"xcom_task_id": "plan", "xcom_key": "models_00007"}

    error = execute_error("BatchFleetOperator", arguments)

    assert error.startswith("ValueError: models names the XCom 'models_00007' of task 'plan', which this DAG run")
    assert aws_endpoint.calls["SubmitJob"] == 0


def test_the_progress_line_names_the_models_that_failed_so_far(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    aws_endpoint.batch.on_submit = fail_model("m1")

    dag_run = run_dag(
        f"""
        BatchFleetOperator(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, job_queue={QUEUE_ARN!r},
            job_definition="forecast", models=[{{"job_name": "m0"}}, {{"job_name": "m1"}}], progress_interval=0.1,
        )
        """
    )

    assert task_instance(dag_run, "forecast").state == "failed"
    logged = caplog.text + capsys.readouterr().out
    assert "2 models: 1 FAILED, 1 SUCCEEDED; failed so far (1): m1" in logged
    assert [entry["model"] for entry in xcom(dag_run, "forecast")] == ["m0", "m1"]
    operator = BatchFleetOperator(task_id="forecast", job_queue="models", job_definition="forecast", models=[])
    link = rendered_links(dag_run, operator)["Batch Job Queue"]
    assert link == f"https://console.aws.amazon.com/batch/home?region=eu-west-1#queues/detail/{QUEUE_ARN}"


def test_an_ecs_group_links_to_its_clusters_tasks(aws_endpoint: Endpoint) -> None:
    operator = EcsFleetOperator(task_id="forecast", cluster="models", task_definition="forecast", models=[])
    aws_endpoint.ecs.task_definitions["forecast"] = {
        "family": "forecast",
        "containerDefinitions": [{"name": "model", "essential": True}],
    }
    aws_endpoint.ecs.new_task_fields = {"lastStatus": "STOPPED", "containers": [{"name": "model", "exitCode": 0}]}

    dag_run = run_dag(
        """
        EcsFleetOperator(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, cluster="models",
            task_definition="forecast", models=[{"tags": {"model_id": "m0"}}],
        )
        """,
        imports="from airflow_ml_batch.operators.ecs import EcsFleetOperator\n",
    )

    assert task_instance(dag_run, "forecast").state == "success"
    link = rendered_links(dag_run, operator)["ECS Cluster Tasks"]
    assert link == "https://console.aws.amazon.com/ecs/v2/clusters/models/tasks?region=eu-west-1"


def group_with_logs(endpoint: Endpoint, failing: str) -> None:
    """Each model's job prints two lines to its own stream; the job of model ``failing`` fails."""

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        model = body["jobName"].split("--", 1)[1].split("-")[1]
        stream = f"forecast/default/{model}"
        endpoint.logs.streams[("/aws/batch/job", stream)] = [(1_767_225_600_000, f"{model} loading"), f"{model} done"]
        status, code = ("FAILED", 1) if model == failing else ("SUCCEEDED", 0)
        return {"status": status, "container": {"exitCode": code, "logStreamName": stream}}

    endpoint.batch.on_submit = on_submit


@pytest.mark.parametrize(("job_logs", "copied"), [("on_failure", ["m1"]), ("always", ["m0", "m1", "m2"])])
def test_the_worker_that_ends_a_group_copies_each_models_log_under_its_name(
    aws_endpoint: Endpoint,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    job_logs: str,
    copied: list[str],
) -> None:
    caplog.set_level(logging.INFO)
    group_with_logs(aws_endpoint, failing="m1")
    models = [{"job_name": f"m{n}"} for n in range(3)]

    dag_run = run_dag(
        f"""
        BatchFleetOperator(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, job_queue="models",
            job_definition="forecast", models={models!r}, allowed_failures=1, job_logs={job_logs!r},
        )
        """
    )

    assert task_instance(dag_run, "forecast").state == "success"
    logged = caplog.text + capsys.readouterr().out
    assert [m for m in ("m0", "m1", "m2") if f"{m} done" in logged] == copied
    assert all(f"Model {m} (Job " in logged for m in copied)
    assert aws_endpoint.calls["GetLogEvents"] == len(copied)
    assert "loading" not in repr(xcom(dag_run, "forecast"))
