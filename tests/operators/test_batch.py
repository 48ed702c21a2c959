"""BatchJobOperator in real DAGs (``dag.test()``) against moto and a scripted Batch endpoint."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import execute_error, expected_tags, rendered_links, run_dag, task_instance, xcom
from packaging.version import Version

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_VERSION
from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.jobs.batch import job_name_for
from airflow_ml_batch.operators.batch import JOB_ID_XCOM_KEY, BatchJobOperator
from airflow_ml_batch.testing.endpoint import Call, Endpoint

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_submit_defer_and_succeed(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    dag_run = run_dag(simple_task(aws_conn_id, batch_queue, end_from_trigger=False))

    assert task_instance(dag_run, "forecast").state == "success"
    result = xcom(dag_run, "forecast")
    assert result["status"] == "SUCCEEDED"
    assert result["job_id"] == xcom(dag_run, "forecast", JOB_ID_XCOM_KEY)
    (job,) = BatchHook(aws_conn_id=aws_conn_id).conn.describe_jobs(jobs=[result["job_id"]])["jobs"]
    assert job["jobName"] == job_name_for(dag_run.dag_id, "forecast", dag_run.run_id)
    operator = BatchJobOperator(task_id="forecast", aws_conn_id=aws_conn_id, **batch_queue)
    link = rendered_links(dag_run, operator)["Batch Job Details"]
    assert link == f"https://console.aws.amazon.com/batch/home?region=eu-west-1#jobs/detail/{result['job_id']}"
    # Airflow 3 renders the link from what the worker run knows; Airflow 2's webserver reads its XCom.
    assert (xcom(dag_run, "forecast", "batch_job_details") is None) is AIRFLOW_V_3_0_PLUS


def test_the_job_is_tagged_for_cost_attribution_and_overridden(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"
    queue = {"job_queue": "models", "job_definition": "forecast"}
    overrides = {"command": ["python", "train.py"], "environment": {"PRODUCT": "widgets"}, "memory": 1024}

    dag_run = run_dag(simple_task("aws_fake", queue, tags={"team": "demand"}, **overrides))

    assert task_instance(dag_run, "forecast").state == "success"
    ((_, request),) = [(op, body) for op, body in aws_endpoint.requests if op == "SubmitJob"]
    assert request["propagateTags"] is True
    assert request["tags"] == expected_tags(dag_run, team="demand")
    assert request["containerOverrides"] == {
        "command": ["python", "train.py"],
        "environment": [{"name": "PRODUCT", "value": "widgets"}],
        "resourceRequirements": [{"type": "MEMORY", "value": "1024"}],
    }


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_lost_submit_answer_makes_one_job_which_the_task_waits_for(aws_endpoint: Endpoint, mode: str) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"
    aws_endpoint.lose_answers("SubmitJob", next=1, mode=mode)

    dag_run = run_dag(simple_task("aws_fake", {"job_queue": "models", "job_definition": "forecast"}))

    assert task_instance(dag_run, "forecast").state == "success"
    (job_id,) = aws_endpoint.batch.jobs
    assert xcom(dag_run, "forecast", JOB_ID_XCOM_KEY) == job_id
    assert aws_endpoint.calls["SubmitJob"] == 1


def simple_task(conn_id: str, queue: dict[str, str], **extra: Any) -> str:
    arguments = {"task_id": "forecast", "aws_conn_id": conn_id, "poll_interval": 0.2, **queue, **extra}
    return "BatchJobOperator(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n"


def test_success_ends_the_task_from_the_trigger(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    dag_run = run_dag(simple_task(aws_conn_id, batch_queue))

    assert task_instance(dag_run, "forecast").state == "success"
    result = xcom(dag_run, "forecast")
    job_id = xcom(dag_run, "forecast", JOB_ID_XCOM_KEY)
    assert (result["job_id"], result["status"]) == (job_id, "SUCCEEDED")


def test_failed_job_fails_the_task(
    aws_conn_id: str, batch_queue: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # moto fails every job it runs

    dag_run = run_dag(simple_task(aws_conn_id, batch_queue))

    assert task_instance(dag_run, "forecast").state == "failed"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"job_queue": "no-such-queue"}, "job_queue='no-such-queue'"),
        ({"job_definition": "no-such-definition"}, "job_definition='no-such-definition'"),
    ],
)
def test_bad_input_fails_fast_with_the_aws_message(
    aws_conn_id: str, batch_queue: dict[str, str], override: dict[str, str], expected: str
) -> None:
    # the worker submits (submit_from_trigger=False): its execute raises before deferring
    arguments = {"aws_conn_id": aws_conn_id, "submit_from_trigger": False, **batch_queue, **override}

    message = execute_error("BatchJobOperator", arguments)

    assert message.startswith("AirflowException: AWS Batch rejected job"), message
    assert expected in message
    assert "does not exist" in message  # the AWS message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"job_queue": "no-such-queue"}, "job_queue='no-such-queue'"),
        ({"job_definition": "no-such-definition"}, "job_definition='no-such-definition'"),
    ],
)
def test_bad_input_submitted_from_the_trigger_fails_the_task_with_the_aws_message(
    aws_conn_id: str,
    batch_queue: dict[str, str],
    override: dict[str, str],
    expected: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dag_run = run_dag(simple_task(aws_conn_id, {**batch_queue, **override}, retries=0))

    assert task_instance(dag_run, "forecast").state == "failed"
    logged = caplog.text + capsys.readouterr().out
    assert "AWS Batch rejected job" in logged or "AWS Batch could not list the jobs" in logged
    assert expected in logged
    assert "does not exist" in logged or "not found" in logged  # the AWS message
    assert BatchHook(aws_conn_id=aws_conn_id).conn.list_jobs(jobQueue=batch_queue["job_queue"])["jobSummaryList"] == []


def test_invalid_job_name_fails_before_any_call(aws_endpoint: Endpoint) -> None:
    queue = {"job_queue": "models", "job_definition": "forecast"}

    message = execute_error("BatchJobOperator", {"aws_conn_id": "aws_fake", "job_name": "bad name!", **queue})

    assert message.startswith("ValueError: Invalid AWS Batch job name 'bad name!'"), message
    assert sum(aws_endpoint.calls.values()) == 0


@pytest.mark.xfail(
    Version("3.0") <= AIRFLOW_VERSION < Version("3.1"),
    reason="Airflow 3.0's dag.test() resumes a retry with the previous try's trigger event",
    strict=True,
)
def test_a_retry_reattaches_to_the_running_job_instead_of_submitting_again(aws_endpoint: Endpoint) -> None:
    # The first try's job is invisible to DescribeJobs long enough for that try to fail, while it keeps
    # running: the retry must find it (ListJobs + tags) and wait for it, not submit a copy.
    submitted: list[str] = []
    submit, list_jobs = aws_endpoint.operations["SubmitJob"], aws_endpoint.operations["ListJobs"]

    def submit_and_hide(call: Call) -> Any:
        answer = submit(call)
        submitted.append(answer["jobId"])
        aws_endpoint.batch.hidden.add(answer["jobId"])
        aws_endpoint.batch.set_job(answer["jobId"], status="RUNNING")
        return answer

    def list_then_finish(call: Call) -> Any:
        if submitted and aws_endpoint.batch.hidden:  # the retry's look (the first try's trigger looked before)
            aws_endpoint.batch.hidden.clear()  # visible again; it finishes a moment after the retry found it
            timer = threading.Timer(1.0, aws_endpoint.batch.set_job, (submitted[0],), {"status": "SUCCEEDED"})
            timer.start()
        return list_jobs(call)

    aws_endpoint.operations |= {"SubmitJob": submit_and_hide, "ListJobs": list_then_finish}
    queue = {"job_queue": "models", "job_definition": "forecast"}

    dag_run = run_dag(
        simple_task("aws_fake", queue, retries=1, missing_grace=0.3, end_from_trigger=False)[:-2]
        + ", retry_delay=datetime.timedelta(0))\n"
    )

    ti = task_instance(dag_run, "forecast")
    assert ti.state == "success", ti.state
    assert ti.try_number == 2
    assert aws_endpoint.calls["SubmitJob"] == 1
    assert aws_endpoint.calls["ListJobs"] == 2  # each try's trigger looks once for the jobs the task has
    assert xcom(dag_run, "forecast")["job_id"] == submitted[0]


def test_the_operator_is_built_on_the_running_airflows_base_operator() -> None:
    from airflow_ml_batch._compat import BaseOperator

    assert issubclass(BatchJobOperator, BaseOperator)
    assert BaseOperator.__module__.startswith("airflow.sdk") is AIRFLOW_V_3_0_PLUS


def test_every_template_field_is_kept_as_given_until_rendering() -> None:
    # No logic on template fields in __init__: a Jinja string must survive untouched to be rendered.
    fields = {field: "{{ params.value }}" for field in BatchJobOperator.template_fields}

    operator = BatchJobOperator(task_id="forecast", **fields)

    assert {field: getattr(operator, field) for field in BatchJobOperator.template_fields} == fields


def test_a_group_of_models_runs_from_one_task_instance(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"
    models = [
        {"environment": {"MODEL_ID": "a"}, "tags": {"model_id": "a"}},
        {"environment": {"MODEL_ID": "b"}, "tags": {"model_id": "b"}, "memory": 4096},
    ]

    dag_run = run_dag(
        f"""
        BatchFleetOperator(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, job_queue="models",
            job_definition="forecast", tags={{"team": "demand"}}, environment={{"STAGE": "prod"}}, models={models!r},
        )
        """
    )

    assert task_instance(dag_run, "forecast").state == "success"
    results = xcom(dag_run, "forecast")
    assert [(r["model"], r["status"], r["succeeded"]) for r in results] == [
        ("a", "SUCCEEDED", True),
        ("b", "SUCCEEDED", True),
    ]
    requests = sorted((body for op, body in aws_endpoint.requests if op == "SubmitJob"), key=lambda b: b["jobName"])
    assert [r["containerOverrides"]["environment"] for r in requests] == [
        [{"name": "STAGE", "value": "prod"}, {"name": "MODEL_ID", "value": model}] for model in ("a", "b")
    ]
    assert requests[1]["containerOverrides"]["resourceRequirements"] == [{"type": "MEMORY", "value": "4096"}]
    assert requests[0]["tags"] == expected_tags(
        dag_run, team="demand", model_id="a", **{"airflow:model": "a", "airflow:attempt": "1"}
    )


def test_a_fleet_maps_over_groups_with_one_job_per_model(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"

    dag_run = run_dag(
        """
        models = [{"tags": {"model_id": f"m{n}"}} for n in range(5)]
        BatchFleetOperator.partial(
            task_id="forecast", aws_conn_id="aws_fake", poll_interval=0.2, job_queue="models", job_definition="forecast"
        ).expand(models=groups(models, size=2))
        """,
        imports="from airflow_ml_batch.fleet import groups\n",
    )

    states = [ti.state for ti in dag_run.get_task_instances() if ti.task_id == "forecast"]
    assert states == ["success"] * 3
    names = [body["jobName"] for op, body in aws_endpoint.requests if op == "SubmitJob"]
    assert len(names) == len(set(names)) == 5
    assert len({name.split("--")[0] for name in names}) == 3  # one group prefix per map index


def test_a_model_entry_with_an_argument_the_operator_does_not_take_fails_clearly(aws_endpoint: Endpoint) -> None:
    arguments = {"job_queue": "models", "job_definition": "forecast", "aws_conn_id": "aws_fake"}
    arguments["models"] = [{"tags": {"model_id": "a"}}, {"colour": "blue"}]

    error = execute_error("BatchFleetOperator", arguments)

    assert error.startswith("ValueError: models[1] has arguments the operator does not take: colour")
    assert aws_endpoint.calls["SubmitJob"] == 0
