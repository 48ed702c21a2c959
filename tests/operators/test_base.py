"""What every operator shares (operators/base.py), in real tasks against the scripted endpoint and moto."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta
from typing import Any

import pytest
from helpers import run_dag, task_instance, xcom

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS
from airflow_ml_batch.jobs.groups import GroupSettings
from airflow_ml_batch.operators.batch import JOB_ID_XCOM_KEY
from airflow_ml_batch.operators.ecs import TASK_ARN_XCOM_KEY
from airflow_ml_batch.operators.group import ModelGroupOperator
from airflow_ml_batch.testing.endpoint import Endpoint

pytestmark = pytest.mark.usefixtures("airflow_db")

BATCH = {"job_queue": "models", "job_definition": "forecast"}
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


def test_a_timed_out_deferral_stops_the_job_before_failing(aws_endpoint: Endpoint) -> None:
    # What the worker runs when Airflow times a deferral out ("__fail__"): nobody watches the job any more.
    deferred = deferral(
        "BatchJobOperator",
        {"aws_conn_id": "aws_fake", **BATCH, "execution_timeout": timedelta(minutes=10)},
        then='_failure_of(lambda: op.resume_execution("__fail__", {"error": "Trigger timeout"}, context))',
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
    then = AIRFLOW_2_TIMEOUT
    if operator == "BatchFleetOperator":
        arguments["models"] = [{"job_name": f"m{index}"} for index in range(3)]
        then = f"[_submit_group(op, context, 3), {AIRFLOW_2_TIMEOUT}]"

    deferral(operator, arguments, then=then, imports=SUBMIT_GROUP)

    jobs = list(aws_endpoint.batch.jobs.values())
    assert len(jobs) == (3 if operator == "BatchFleetOperator" else 1)
    assert all(job["status"] == "FAILED" and "execution_timeout" in job["statusReason"] for job in jobs)


def test_a_failed_trigger_leaves_the_job_to_a_retry(aws_endpoint: Endpoint) -> None:
    # A trigger that failed (not a timeout) says nothing about the job: a retry re-attaches to it.
    deferral(
        "BatchJobOperator",
        {"aws_conn_id": "aws_fake", **BATCH},
        then='_failure_of(lambda: op.resume_execution("__fail__", {"error": "Trigger failure"}, context))',
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
