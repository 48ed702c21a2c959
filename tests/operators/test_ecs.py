"""EcsTaskOperator in real DAGs (``dag.test()``) against moto and a scripted ECS endpoint."""

from __future__ import annotations

import importlib.metadata
import json
import threading
import urllib.request
from typing import Any

import pytest
from helpers import execute_error, expected_tags, rendered_links, run_dag, task_instance, xcom
from packaging.version import Version

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_VERSION
from airflow_ml_batch.fleet import ecs_kwargs, groups, parse_models
from airflow_ml_batch.jobs.ecs import started_by_for
from airflow_ml_batch.operators.ecs import TASK_ARN_XCOM_KEY, EcsTaskOperator
from airflow_ml_batch.testing.endpoint import Call, Endpoint

pytestmark = pytest.mark.usefixtures("airflow_db")

DEFINITION = {"family": "forecast", "containerDefinitions": [{"name": "model", "essential": True}]}


def ecs_task(conn_id: str, **arguments: Any) -> str:
    arguments = {"task_id": "forecast", "aws_conn_id": conn_id, "poll_interval": 0.2, **arguments}
    return "EcsTaskOperator(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n"


@pytest.mark.skipif(
    Version(importlib.metadata.version("moto")) < Version("5.1"),
    reason="moto before 5.1 gives ECS containers no exit code, so none of its tasks succeeds",
)
def test_run_defer_and_succeed_on_moto(aws_conn_id: str, ecs_cluster: dict[str, Any], moto: str) -> None:
    # moto moves the task RUNNING -> ... -> STOPPED over time, through its state manager
    transition = {"model_name": "ecs::task", "transition": {"progression": "time", "seconds": 1}}
    request = urllib.request.Request(
        f"{moto}/moto-api/state-manager/set-transition", data=json.dumps(transition).encode(), method="POST"
    )
    urllib.request.urlopen(request).close()

    dag_run = run_dag(
        ecs_task(
            aws_conn_id, end_from_trigger=False, container_name="model", command=["python", "train.py"], **ecs_cluster
        )
    )

    assert task_instance(dag_run, "forecast").state == "success"
    result = xcom(dag_run, "forecast")
    assert result["outcome"] == "success"
    assert result["last_status"] == "STOPPED"
    assert result["task_arn"] == xcom(dag_run, "forecast", TASK_ARN_XCOM_KEY)
    operator = EcsTaskOperator(task_id="forecast", aws_conn_id=aws_conn_id, **ecs_cluster)
    task_id = result["task_arn"].rsplit("/", 1)[-1]
    assert f"/tasks/{task_id}/configuration?region=" in str(rendered_links(dag_run, operator)["ECS Task"])


def test_fargate_request_with_tags_started_by_and_idempotency_token(aws_endpoint: Endpoint) -> None:
    aws_endpoint.ecs.task_definitions["forecast"] = DEFINITION
    finished = {
        "lastStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "containers": [{"name": "model", "exitCode": 0}],
    }
    aws_endpoint.ecs.new_task_fields = finished

    dag_run = run_dag(
        ecs_task(
            "aws_fake",
            cluster="models",
            task_definition="forecast",
            container_name="model",
            environment={"PRODUCT": "widgets"},
            cpu=512,
            memory=1024,
            tags={"team": "demand"},
        )
    )

    assert task_instance(dag_run, "forecast").state == "success"
    ((_, request),) = [(op, body) for op, body in aws_endpoint.requests if op == "RunTask"]
    assert request["launchType"] == "FARGATE"
    assert request["startedBy"] == started_by_for(dag_run.dag_id, "forecast", dag_run.run_id)
    assert len(request["clientToken"]) == 64
    assert request["propagateTags"] == "TASK_DEFINITION"
    assert {t["key"]: t["value"] for t in request["tags"]} == expected_tags(dag_run, team="demand")
    assert request["overrides"] == {
        "containerOverrides": [
            {"name": "model", "environment": [{"name": "PRODUCT", "value": "widgets"}], "cpu": 512, "memory": 1024}
        ],
        "cpu": "512",
        "memory": "1024",
    }


def test_a_lost_answer_is_sent_again_with_its_token_and_no_capacity_with_a_new_one(aws_endpoint: Endpoint) -> None:
    aws_endpoint.ecs.task_definitions["forecast"] = DEFINITION
    aws_endpoint.ecs.run_task_failures = [{"arn": "", "reason": "Capacity is unavailable at this time."}]
    aws_endpoint.fail_next("RunTask", times=1, status=400, code="ThrottlingException")
    aws_endpoint.lose_answers("RunTask", next=1)  # the no-capacity answer is not lost: it started nothing
    aws_endpoint.ecs.new_task_fields = {"lastStatus": "STOPPED", "containers": [{"name": "model", "exitCode": 0}]}

    dag_run = run_dag(ecs_task("aws_fake", cluster="models", task_definition="forecast"))

    assert task_instance(dag_run, "forecast").state == "success"
    assert aws_endpoint.calls["RunTask"] >= 4
    assert len(aws_endpoint.ecs.tasks) == 1
    tokens = [body["clientToken"] for op, body in aws_endpoint.requests if op == "RunTask"]
    # throttled (nothing done), no capacity (nothing started), then a new placement's token: sent twice, as
    # the first answer was lost, and ECS answers the second with the task the first started
    assert tokens[0] == tokens[1] != tokens[2] == tokens[3]


def test_a_failure_that_is_not_about_capacity_fails_fast(aws_endpoint: Endpoint) -> None:
    aws_endpoint.ecs.run_task_failures = [{"arn": "arn:container-instance", "reason": "ATTRIBUTE", "detail": "arm64"}]

    # the worker runs the task (submit_from_trigger=False): its execute raises before deferring (the trigger's
    # own message: tests/triggers/test_ecs.py)
    arguments = {"aws_conn_id": "aws_fake", "cluster": "models", "task_definition": "forecast"}
    message = execute_error("EcsTaskOperator", {**arguments, "submit_from_trigger": False})

    assert message == (
        "AirflowException: ECS could not run the task (cluster='models', task_definition='forecast'): "
        "arn:container-instance ATTRIBUTE arm64"
    )
    assert aws_endpoint.calls["RunTask"] == 1


def test_an_unknown_cluster_fails_with_the_aws_message(aws_conn_id: str, ecs_cluster: dict[str, Any]) -> None:
    arguments = {**ecs_cluster, "cluster": "no-such-cluster", "aws_conn_id": aws_conn_id, "submit_from_trigger": False}

    message = execute_error("EcsTaskOperator", arguments)

    assert message.startswith("AirflowException: ECS rejected RunTask (cluster='no-such-cluster'"), message


@pytest.mark.xfail(
    Version("3.0") <= AIRFLOW_VERSION < Version("3.1"),
    reason="Airflow 3.0's dag.test() resumes a retry with the previous try's trigger event",
    strict=True,
)
def test_a_retry_reattaches_to_the_running_task(aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    aws_endpoint.ecs.task_definitions["forecast"] = DEFINITION
    run_task, list_tasks = aws_endpoint.operations["RunTask"], aws_endpoint.operations["ListTasks"]
    started: list[str] = []

    def run_and_hide(call: Call) -> Any:
        answer = run_task(call)
        started.append(answer["tasks"][0]["taskArn"])
        aws_endpoint.ecs.hidden.add(started[-1])  # the first try cannot see it and fails
        return answer

    def list_then_finish(call: Call) -> Any:
        if started and aws_endpoint.ecs.hidden:  # the retry's look (the first try's trigger looked before)
            aws_endpoint.ecs.hidden.clear()
            finished = {"lastStatus": "STOPPED", "containers": [{"name": "model", "exitCode": 0}]}
            threading.Timer(1.0, aws_endpoint.ecs.set_task, args=(started[0],), kwargs=finished).start()
        return list_tasks(call)

    aws_endpoint.operations |= {"RunTask": run_and_hide, "ListTasks": list_then_finish}

    dag_run = run_dag(
        ecs_task(
            "aws_fake",
            cluster="models",
            task_definition="forecast",
            retries=1,
            missing_grace=0.3,
            end_from_trigger=False,
        )[:-2]
        + ", retry_delay=datetime.timedelta(0))\n"
    )

    ti = task_instance(dag_run, "forecast")
    assert ti.state == "success"
    assert ti.try_number == 2
    assert aws_endpoint.calls["RunTask"] == 1
    assert xcom(dag_run, "forecast")["task_arn"] == started[0]


def test_every_template_field_is_kept_as_given_until_rendering() -> None:
    fields = {field: "{{ params.value }}" for field in EcsTaskOperator.template_fields}

    operator = EcsTaskOperator(task_id="forecast", **fields)

    assert {field: getattr(operator, field) for field in EcsTaskOperator.template_fields} == fields


def logging_to(group: str, region: str) -> dict[str, Any]:
    options = {"awslogs-group": group, "awslogs-region": region, "awslogs-stream-prefix": "ecs"}
    return {"logDriver": "awslogs", "options": options}


LOGGING_DEFINITION = {
    "family": "forecast",
    "containerDefinitions": [
        {"name": "prepare", "essential": True, "logConfiguration": logging_to("/ecs/prepare", "eu-west-1")},
        {"name": "model", "essential": True, "logConfiguration": logging_to("/ecs/forecast", "us-east-2")},
    ],
}


def test_the_task_and_log_links_render_with_container_names_log_in_its_region(aws_endpoint: Endpoint) -> None:
    aws_endpoint.ecs.task_definitions["forecast"] = LOGGING_DEFINITION
    aws_endpoint.ecs.new_task_fields = {
        "lastStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "containers": [{"name": "prepare", "exitCode": 0}, {"name": "model", "exitCode": 0}],
    }
    # The worker saves the log link when it resumes; ended from the trigger, the trigger saves it
    # (tests/triggers/test_ecs.py), which dag.test() on Airflow 3 does not replay.
    arguments = {
        "cluster": "models",
        "task_definition": "forecast",
        "container_name": "model",
        "end_from_trigger": False,
    }

    dag_run = run_dag(ecs_task("aws_fake", **arguments))

    assert task_instance(dag_run, "forecast").state == "success"
    task_id = xcom(dag_run, "forecast", TASK_ARN_XCOM_KEY).rsplit("/", 1)[-1]
    assert rendered_links(dag_run, EcsTaskOperator(task_id="forecast", **arguments)) == {
        "CloudWatch Events": (
            "https://console.aws.amazon.com/cloudwatch/home?region=us-east-2#logsV2:log-groups/log-group/"
            f"%2Fecs%2Fforecast/log-events/ecs%2Fmodel%2F{task_id}"
        ),
        "ECS Task": (
            f"https://console.aws.amazon.com/ecs/v2/clusters/models/tasks/{task_id}/configuration?region=eu-west-1"
        ),
    }
    # Airflow 3 renders the links from what the worker run knows; Airflow 2's webserver reads their XComs.
    assert (xcom(dag_run, "forecast", "ecs_task") is None) is AIRFLOW_V_3_0_PLUS


@pytest.mark.parametrize(("propagate_tags", "sent"), [("{{ 'NO' ~ 'NE' }}", "NONE"), (None, "omitted")])
def test_propagate_tags_is_templated_and_can_be_left_out(
    aws_endpoint: Endpoint, propagate_tags: str | None, sent: str
) -> None:
    aws_endpoint.ecs.task_definitions["forecast"] = DEFINITION
    aws_endpoint.ecs.new_task_fields = {"lastStatus": "STOPPED", "containers": [{"name": "model", "exitCode": 0}]}

    dag_run = run_dag(ecs_task("aws_fake", cluster="models", task_definition="forecast", propagate_tags=propagate_tags))

    assert task_instance(dag_run, "forecast").state == "success"
    ((_, request),) = [(op, body) for op, body in aws_endpoint.requests if op == "RunTask"]
    assert request.get("propagateTags", "omitted") == sent


def test_a_group_of_models_runs_its_ecs_tasks_from_one_task_instance(aws_endpoint: Endpoint) -> None:
    aws_endpoint.ecs.task_definitions["forecast"] = DEFINITION
    aws_endpoint.ecs.new_task_fields = {
        "lastStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "containers": [{"name": "model", "exitCode": 0}],
    }
    fleet = parse_models({"defaults": {"resources": {"cpu": 256, "memory": 512}}, "models": [{"id": "a"}, {"id": "b"}]})
    (models,) = groups(ecs_kwargs(fleet))

    dag_run = run_dag(
        f"""
        EcsFleetOperator(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, cluster="models",
            task_definition="forecast", container_name="model", tags={{"team": "demand"}}, models={models!r},
        )
        """,
        imports="from airflow_ml_batch.operators.ecs import EcsFleetOperator\n",
    )

    assert task_instance(dag_run, "forecast").state == "success"
    assert [(r["model"], r["outcome"]) for r in xcom(dag_run, "forecast")] == [("a", "success"), ("b", "success")]
    requests = [body for op, body in aws_endpoint.requests if op == "RunTask"]
    assert len(requests) == 2
    tags = {t["key"]: t["value"] for t in requests[0]["tags"]}
    assert tags["team"] == "demand"
    assert tags["model_id"] == tags["airflow:model"] == "a"
    (container,) = requests[0]["overrides"]["containerOverrides"]
    assert container["cpu"] == 256
    assert {"name": "MODEL_ID", "value": "a"} in container["environment"]
