"""What every operator shares (operators/base.py), in real tasks against the scripted endpoint and moto."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import aws_connection_uri, run_dag, task_instance, xcom

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS
from airflow_ml_batch.jobs.groups import GroupSettings
from airflow_ml_batch.operators.batch import JOB_ID_XCOM_KEY
from airflow_ml_batch.operators.ecs import TASK_ARN_XCOM_KEY
from airflow_ml_batch.operators.group import ModelGroupOperator
from airflow_ml_batch.testing.endpoint import Endpoint

pytestmark = pytest.mark.usefixtures("airflow_db")

BATCH = {"job_queue": "models", "job_definition": "forecast"}
ECS = {"cluster": "models", "task_definition": "forecast"}
FAILURE_OF = """
def _failure_of(call):
    try:
        call()
    except BaseException as error:
        return type(error).__name__
"""


def deferral(operator: str, arguments: dict[str, Any], then: str = "", imports: str = "") -> Any:
    """Run ``operator(**arguments).execute()`` inside a real task and return what it deferred with.

    ``then`` is Python run after the deferral with ``op`` and ``context`` in scope; its value is returned
    as ``then`` next to the trigger's classpath and kwargs and the deferral's timeout in seconds.
    """
    dag_run = run_dag(
        f"""
        @task
        def run(**context):
            op = {operator}(task_id="inner", **{arguments!r})
            try:
                op.execute(context)
            except BaseException as error:
                if type(error).__name__ != "TaskDeferred":
                    raise
                deferred = error
            classpath, kwargs = deferred.trigger.serialize()
            timeout = deferred.timeout.total_seconds() if deferred.timeout is not None else None
            return {{"classpath": classpath, "kwargs": kwargs, "timeout": timeout, "then": {then or "None"}}}

        run()
        """,
        imports=FAILURE_OF + imports + "from airflow.decorators import task\n",
    )
    assert task_instance(dag_run, "run").state == "success"
    return xcom(dag_run, "run")


def test_the_deferral_carries_what_is_left_of_the_execution_timeout(aws_endpoint: Endpoint) -> None:
    # Airflow 3 enforces execution_timeout on a deferred task only through the deferral's timeout: a task
    # whose trigger never runs (no triggerer) must still time out.
    hour = timedelta(hours=1)
    deferred = deferral("BatchJobOperator", {"aws_conn_id": "aws_fake", **BATCH, "execution_timeout": hour})

    assert deferred["timeout"] is not None
    assert 3500 < deferred["timeout"] <= 3600
    # the trigger stops the job first, a little before Airflow would time the task out
    assert deferred["kwargs"]["deadline"] is not None


def test_no_execution_timeout_no_deferral_timeout(aws_endpoint: Endpoint) -> None:
    deferred = deferral("BatchJobOperator", {"aws_conn_id": "aws_fake", **BATCH})

    assert deferred["timeout"] is None
    assert deferred["kwargs"]["deadline"] is None


# what the trigger had submitted (submit_from_trigger) before it stopped running: its own request
SUBMITTED_BY_THE_TRIGGER = 'op.hook.conn.submit_job(**deferred.trigger.serialize()[1]["start"]["request"]), '


@pytest.mark.parametrize("submit_from_trigger", [True, False])
def test_a_timed_out_deferral_stops_the_job_before_failing(aws_endpoint: Endpoint, submit_from_trigger: bool) -> None:
    # What the worker runs when Airflow times a deferral out ("__fail__"): nobody watches the job any more.
    # The job's id was pushed before the deferral, or (submitted by the trigger) its name finds it.
    aws_endpoint.batch.submitted_status = "RUNNING"
    fail = '_failure_of(lambda: op.resume_execution("__fail__", {"error": "Trigger timeout"}, context))'
    deferred = deferral(
        "BatchJobOperator",
        {
            "aws_conn_id": "aws_fake",
            **BATCH,
            "execution_timeout": timedelta(minutes=10),
            "submit_from_trigger": submit_from_trigger,
        },
        then=f"[{SUBMITTED_BY_THE_TRIGGER if submit_from_trigger else ''}{fail}][-1]",
    )

    (job,) = aws_endpoint.batch.jobs.values()
    assert deferred["then"] in ("TaskDeferralTimeout", "TaskDeferralError")
    assert job["status"] == "FAILED"
    assert "execution_timeout" in job["statusReason"]


SUBMIT_GROUP = """
def _submit_group(op, context, models):
    # what the group's trigger had submitted before Airflow timed the task out with no trigger running
    prefix = op.group_identity(context)["prefix"]
    for index in range(models):
        name = f"{prefix}{index}-m{index}-t1-a1"
        op.hook.conn.submit_job(jobName=name, jobQueue="models", jobDefinition="forecast")
"""


def test_a_group_timed_out_with_no_trigger_stops_every_job_of_the_group(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    other = aws_endpoint.batch.add_job("RUNNING", jobName="another-group-0123456789--0-m0-t1-a1")
    models = [{"job_name": f"m{index}"} for index in range(3)]
    arguments = {"aws_conn_id": "aws_fake", **BATCH, "models": models, "execution_timeout": timedelta(minutes=10)}

    deferred = deferral(
        "BatchFleetOperator",
        arguments,
        then='[_submit_group(op, context, 3), _failure_of(lambda: op.resume_execution("__fail__", '
        '{"error": "Trigger timeout"}, context))][1]',
        imports=SUBMIT_GROUP,
    )

    assert deferred["then"] in ("TaskDeferralTimeout", "TaskDeferralError")
    group = [job for job_id, job in aws_endpoint.batch.jobs.items() if job_id != other]
    assert len(group) == 3
    assert all(job["status"] == "FAILED" and "execution_timeout" in job["statusReason"] for job in group)
    assert aws_endpoint.batch.jobs[other]["status"] == "RUNNING"


# What Airflow 2 does when it times a deferral out: the resumed run (next_method "__fail__") raises
# AirflowTaskTimeout before resume_execution, its execution_timeout counting from the first run's start,
# and calls on_kill (airflow.models.taskinstance._execute_task)
AIRFLOW_2_TIMEOUT = (
    '[setattr(context["ti"], "next_method", "__fail__"), op.pre_execute(context), op.on_kill(), '
    'setattr(context["ti"], "next_method", None)]'
)


@pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason="Airflow 3 times a deferral out through resume_execution")
@pytest.mark.parametrize("operator", ["BatchJobOperator", "BatchFleetOperator"])
def test_airflow_2_times_a_deferral_out_through_on_kill_and_the_jobs_are_stopped(
    aws_endpoint: Endpoint, operator: str
) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    arguments: dict[str, Any] = {"aws_conn_id": "aws_fake", **BATCH, "execution_timeout": timedelta(minutes=10)}
    then = f"[{SUBMITTED_BY_THE_TRIGGER}{AIRFLOW_2_TIMEOUT}]"  # the trigger submitted; its name finds it
    if operator == "BatchFleetOperator":
        arguments["models"] = [{"job_name": f"m{index}"} for index in range(3)]
        then = f"[_submit_group(op, context, 3), {AIRFLOW_2_TIMEOUT}]"

    deferral(operator, arguments, then=then, imports=SUBMIT_GROUP)

    jobs = list(aws_endpoint.batch.jobs.values())
    assert len(jobs) == (3 if operator == "BatchFleetOperator" else 1)
    assert all(job["status"] == "FAILED" and "execution_timeout" in job["statusReason"] for job in jobs)


@pytest.mark.parametrize("submit_from_trigger", [True, False])
def test_a_failed_trigger_leaves_the_job_to_a_retry(aws_endpoint: Endpoint, submit_from_trigger: bool) -> None:
    # A trigger that failed (not a timeout) says nothing about the job: a retry re-attaches to it.
    fail = '_failure_of(lambda: op.resume_execution("__fail__", {"error": "Trigger failure"}, context))'
    deferral(
        "BatchJobOperator",
        {"aws_conn_id": "aws_fake", **BATCH, "submit_from_trigger": submit_from_trigger},
        then=f"[{SUBMITTED_BY_THE_TRIGGER if submit_from_trigger else ''}{fail}][-1]",
    )

    (job,) = aws_endpoint.batch.jobs.values()
    assert job["status"] == "RUNNABLE"


@pytest.mark.parametrize("operator", ["BatchJobOperator", "EcsTaskOperator"])
def test_verify_and_botocore_config_reach_the_hook_and_the_trigger(aws_endpoint: Endpoint, operator: str) -> None:
    arguments = {"aws_conn_id": "aws_fake", "verify": False, "botocore_config": {"read_timeout": 7}}
    arguments |= BATCH if operator == "BatchJobOperator" else {"cluster": "models", "task_definition": "forecast"}

    deferred = deferral(operator, arguments, then="[op.hook.verify, op.hook.config.read_timeout]")

    assert deferred["then"] == [False, 7]
    assert deferred["kwargs"]["verify"] is False
    assert deferred["kwargs"]["botocore_config"] == {"read_timeout": 7}


@pytest.mark.parametrize(
    ("operator", "key"), [("BatchJobOperator", JOB_ID_XCOM_KEY), ("EcsTaskOperator", TASK_ARN_XCOM_KEY)]
)
def test_without_wait_for_completion_the_task_returns_the_id_at_once(
    aws_endpoint: Endpoint, operator: str, key: str
) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"  # jobs that run on after the task ended
    arguments = {"task_id": "start", "aws_conn_id": "aws_fake", "wait_for_completion": False}
    arguments |= BATCH if operator == "BatchJobOperator" else {"cluster": "models", "task_definition": "forecast"}

    dag_run = run_dag(f"{operator}(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n")

    assert task_instance(dag_run, "start").state == "success"
    started = xcom(dag_run, "start", key)
    assert started in (*aws_endpoint.batch.jobs, *aws_endpoint.ecs.tasks)
    assert xcom(dag_run, "start") == started
    assert aws_endpoint.calls["DescribeJobs"] + aws_endpoint.calls["DescribeTasks"] == 0


@pytest.mark.parametrize(
    ("operator", "where", "classpath", "key"),
    [
        ("BatchJobOperator", BATCH, "airflow_ml_batch.triggers.batch.BatchJobTrigger", JOB_ID_XCOM_KEY),
        ("EcsTaskOperator", ECS, "airflow_ml_batch.triggers.ecs.EcsTaskTrigger", TASK_ARN_XCOM_KEY),
    ],
)
def test_a_worker_run_that_the_trigger_submits_for_only_defers(
    aws_endpoint: Endpoint, operator: str, where: dict[str, Any], classpath: str, key: str
) -> None:
    # submit_from_trigger (the default): no AWS call, no hook, no connection looked up on the worker (this
    # one does not exist); the trigger gets the request, the try and the tries it may re-attach to
    arguments = {"aws_conn_id": "no_such_connection", **where, "retries": 2, "tags": {"team": "demand"}}

    deferred = deferral(operator, arguments, then="'hook' in vars(op)")

    assert deferred["then"] is False
    assert sum(aws_endpoint.calls.values()) == 0
    start = deferred["kwargs"]["start"]
    assert deferred["kwargs"].get("job_id") is None
    assert deferred["kwargs"].get("task_arn") is None
    tags = start["request"]["tags"]
    tags = tags if isinstance(tags, dict) else {tag["key"]: tag["value"] for tag in tags}
    assert (tags["team"], tags["airflow:try_number"]) == ("demand", "1")
    assert (start["try_number"], start["reattach_tries"], start["job_id_xcom_key"]) == (1, [1, 1], key)
    assert "airflow:try_number" not in start["identity"]
    # handed over by classpath (the worker does not import the trigger's module): the triggerer's trigger
    module, _, name = classpath.rpartition(".")
    assert deferred["classpath"] == classpath
    assert getattr(importlib.import_module(module), name)(**deferred["kwargs"]).serialize()[1] == {
        "job_id" if operator == "BatchJobOperator" else "task_arn": None,
        **deferred["kwargs"],
    }


def test_the_group_operators_take_every_group_setting_with_the_triggers_default() -> None:
    parameters = inspect.signature(ModelGroupOperator.__init__).parameters

    assert {f.name: parameters[f.name].default for f in fields(GroupSettings)} == {
        f.name: f.default for f in fields(GroupSettings)
    }


def test_a_group_operator_gives_its_group_settings_to_the_trigger(aws_endpoint: Endpoint) -> None:
    settings = {"model_retries": 2, "max_running": 3, "allowed_failures": 1, "submit_rate": 5.0}
    settings["progress_interval"] = 9.0

    deferred = deferral("BatchFleetOperator", {"aws_conn_id": "aws_fake", **BATCH, "models": [{}], **settings})

    assert deferred["classpath"] == "airflow_ml_batch.triggers.batch.BatchFleetTrigger"
    assert {name: deferred["kwargs"][name] for name in settings} == settings


def test_importing_the_operators_imports_no_aws_sdk_hook_or_trigger() -> None:
    # What a DAG file's parse pays for our operators: the dag-processor's parses and callbacks, and each task run.
    code = (
        "import sys, airflow_ml_batch.operators.batch, airflow_ml_batch.operators.ecs, json; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)

    heavy = ("boto3", "aiobotocore", "aiohttp", "airflow_ml_batch.hooks", "airflow_ml_batch.triggers")
    assert [name for name in modules if name.startswith(heavy)] == []
    assert "airflow_ml_batch.operators.batch" in modules


# -- job logs copied into the task log --------------------------------------------------------------------

LOG_GROUP = "/aws/batch/job"


def job_with_logs(endpoint: Endpoint, status: str, attempts: list[tuple[str, int, list[str]]]) -> None:
    """Jobs submitted from now on end with ``status`` after ``attempts``: (log stream, exit code, its lines)."""
    for n, (stream, _, lines) in enumerate(attempts):
        endpoint.logs.streams[(LOG_GROUP, stream)] = [
            (1_767_225_600_000 + 60_000 * n + i, line) for i, line in enumerate(lines)
        ]
    stream, exit_code, _ = attempts[-1]
    endpoint.batch.on_submit = lambda request: {
        "status": status,
        "statusReason": "Essential container in task exited",
        "container": {"exitCode": exit_code, "logStreamName": stream},
        "attempts": [{"container": {"exitCode": code, "logStreamName": name}} for name, code, _ in attempts],
    }


def batch_task(**arguments: Any) -> str:
    arguments = {"task_id": "forecast", "aws_conn_id": "aws_fake", "poll_interval": 0.2, **BATCH, **arguments}
    return "BatchJobOperator(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n"


def test_a_successful_jobs_log_is_copied_by_the_worker_with_always(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    job_with_logs(aws_endpoint, "SUCCEEDED", [("forecast/default/ok", 0, ["loading history", "mape 0.12"])])

    dag_run = run_dag(batch_task(job_logs="always", end_from_trigger=False))

    assert task_instance(dag_run, "forecast").state == "success"
    # Airflow 2 logs through the standard library, Airflow 3 through structlog to stdout.
    logged = caplog.text + capsys.readouterr().out
    assert f"log stream forecast/default/ok in {LOG_GROUP}" in logged
    assert logged.index("2026-01-01T00:00:00.000Z loading history") < logged.index("2026-01-01T00:00:00.001Z mape 0.12")
    assert aws_endpoint.calls["GetLogEvents"] == 1
    assert "mape 0.12" not in repr(xcom(dag_run, "forecast"))


def test_a_successful_jobs_log_is_not_copied_by_default(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    job_with_logs(aws_endpoint, "SUCCEEDED", [("forecast/default/ok", 0, ["mape 0.12"])])

    dag_run = run_dag(batch_task(end_from_trigger=False))

    assert task_instance(dag_run, "forecast").state == "success"
    assert "mape 0.12" not in caplog.text + capsys.readouterr().out
    assert aws_endpoint.calls["GetLogEvents"] == 0


def test_a_failed_jobs_log_is_copied_before_the_task_fails_and_goes_nowhere_else(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    job_with_logs(
        aws_endpoint,
        "FAILED",
        [
            ("forecast/default/a1", 137, ["epoch 1", "Killed"]),
            ("forecast/default/a2", 1, [*(f"row {n}" for n in range(5)), "ValueError: no history for sku-42"]),
        ],
    )
    aws_endpoint.fail_next("GetLogEvents", times=1, status=400, code="ThrottlingException")

    dag_run = run_dag(batch_task(job_log_lines=3))

    assert task_instance(dag_run, "forecast").state == "failed"
    # Airflow 2 logs to both, Airflow 3 (structlog) to stdout only.
    sources = [caplog.text, capsys.readouterr().out]
    logged = "".join(sources)
    assert "attempt 1 of 2: log stream forecast/default/a1" in logged
    assert "attempt 2 of 2: log stream forecast/default/a2" in logged
    assert logged.index("2026-01-01T00:00:00.001Z Killed") < logged.index("attempt 2 of 2")
    assert (
        "(earlier lines left out: the last 3 are copied here; the whole log: https://console.aws.amazon.com/" in logged
    )
    assert "row 2" not in logged
    # Copied once, with its time; neither the exception (logged with its message) nor the event has the line.
    assert {source.count("ValueError: no history for sku-42") for source in sources} <= {0, 1}
    assert "2026-01-01T00:01:00.005Z ValueError: no history for sku-42" in logged
    assert f"log: {LOG_GROUP} forecast/default/a2" in logged  # the failure message says where the log is
    result = xcom(dag_run, "forecast")  # the failed task's outcome, pushed before it failed
    assert (result["status"], result["exit_code"], result["log_stream"]) == ("FAILED", 1, "forecast/default/a2")
    assert [a["log_stream"] for a in result["attempts"]] == ["forecast/default/a1", "forecast/default/a2"]
    assert "Killed" not in repr(result)
    assert "no history" not in repr(result)
    assert aws_endpoint.calls["GetLogEvents"] == 3  # one throttled, then one per attempt


def test_a_failed_task_pushes_no_result_without_do_xcom_push(aws_endpoint: Endpoint) -> None:
    job_with_logs(aws_endpoint, "FAILED", [("forecast/default/a1", 1, ["boom"])])

    dag_run = run_dag(batch_task(job_logs="never", do_xcom_push=False))

    assert task_instance(dag_run, "forecast").state == "failed"
    assert xcom(dag_run, "forecast") is None
    assert aws_endpoint.calls["GetLogEvents"] == 0


REQUIRED = {
    "BatchJobOperator": BATCH,
    "BatchFleetOperator": {**BATCH, "models": [{}]},
    "EcsTaskOperator": {"cluster": "models", "task_definition": "forecast"},
    "EcsFleetOperator": {"cluster": "models", "task_definition": "forecast", "models": [{}]},
}


@pytest.mark.parametrize("operator", REQUIRED)
def test_a_bad_job_logs_fails_the_dag_at_parse_with_the_value(operator: str) -> None:
    from airflow_ml_batch.operators import batch, ecs

    cls = getattr(batch, operator, None) or getattr(ecs, operator)

    with pytest.raises(ValueError, match="job_logs must be one of 'never', 'on_failure', 'always', not 'sometimes'"):
        cls(task_id="forecast", job_logs="sometimes", **REQUIRED[operator])
    with pytest.raises(ValueError, match="job_log_lines must be a whole number from 1 to 9999, not -1"):
        cls(task_id="forecast", job_log_lines=-1, **REQUIRED[operator])
    assert cls(task_id="forecast", job_logs="always", **REQUIRED[operator]).job_log_lines == 200


def test_a_success_ended_on_the_triggerer_has_its_log_in_the_task_log(aws_endpoint: Endpoint, tmp_path: Path) -> None:
    """``airflow dags test`` with no listener plugin (examples off), so that the task ends on the triggerer."""
    job_with_logs(aws_endpoint, "SUCCEEDED", [("forecast/default/ok", 0, ["loading history", "mape 0.12"])])
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "forecast.py").write_text(
        "import datetime\n"
        "from airflow import DAG\n"
        "from airflow_ml_batch.operators.batch import BatchJobOperator\n"
        "with DAG('forecast', schedule=None, start_date=datetime.datetime(2026, 1, 1)):\n"
        f"    {batch_task(job_logs='always')}"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_AWS_FAKE=aws_connection_uri(aws_endpoint.url),
    )
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    run = subprocess.run([*airflow, "dags", "test", "forecast"], env=env, capture_output=True, text=True, timeout=600)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert "the task ends here, on the triggerer" in output
    assert f"log stream forecast/default/ok in {LOG_GROUP}" in output
    assert output.index("2026-01-01T00:00:00.000Z loading history") < output.index("2026-01-01T00:00:00.001Z mape 0.12")
    assert aws_endpoint.calls["GetLogEvents"] == 1
