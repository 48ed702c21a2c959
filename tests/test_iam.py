"""docs/iam.md: each mode's IAM policy allows every AWS call the package makes in that mode, and nothing more.

Each mode runs as a user runs it, through a real Airflow (``dag.test()``) against the scripted endpoint, with a
connection that assumes a role: a success with ``collect_metrics=True``, a failure whose log tail is read, a retry
that re-attaches to its job (per model) or a failed model retried (groups), and a task stopped at its
``execution_timeout``. Every operation the endpoint answered must be allowed by the mode's policy (plus the
assumed-role policy), and every action of the mode's policy must have been called, except the ones AWS checks
on top of a call (:data:`IMPLICIT`), which the endpoint cannot see.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import aws_connection_uri, run_dag, task_instance, xcom
from packaging.version import Version

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_VERSION, AirflowTaskTimeout
from airflow_ml_batch.testing.endpoint import ACCOUNT, Call, Endpoint
from airflow_ml_batch.testing.endpoint.batch import LOG_GROUP as BATCH_LOG_GROUP
from airflow_ml_batch.testing.endpoint.ecs import CONTAINER, task_definition
from airflow_ml_batch.testing.endpoint.ecs import LOG_GROUP as ECS_LOG_GROUP

pytestmark = pytest.mark.usefixtures("airflow_db")

DOC = Path(__file__).resolve().parent.parent / "docs" / "iam.md"
#: the ``##`` heading above each mode's policy in docs/iam.md
HEADINGS = {
    "batch": "AWS Batch, one task per model",
    "batch_groups": "AWS Batch groups",
    "ecs": "ECS, one task per model",
    "ecs_groups": "ECS groups",
    "assume_role": "A connection that assumes a role",
}
#: Actions AWS authorizes on top of a call the package makes, so that no endpoint call shows them: the modes
#: that must list them, and why.
IMPLICIT = {
    "batch:TagResource": (
        ("batch", "batch_groups"),
        "SubmitJob carries tags, which AWS Batch authorizes as TagResource",
    ),
    "ecs:TagResource": (("ecs", "ecs_groups"), "RunTask carries tags, which ECS authorizes as TagResource"),
    "iam:PassRole": (("ecs", "ecs_groups"), "RunTask passes the task definition's task and execution roles to ECS"),
}
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/airflow-models"
METRICS = '{"metrics": {"mape": 0.12}}'
COMMON = 'aws_conn_id="aws_fake", poll_interval=0.1'
#: as in tests/operators: Airflow 3.0's dag.test() resumes a retry with the earlier try's event, so the retry fails
RETRY_BROKEN = pytest.mark.xfail(
    Version("3.0") <= AIRFLOW_VERSION < Version("3.1"),
    reason="Airflow 3.0's dag.test() resumes a retry with the previous try's trigger event",
    strict=True,
)


def policies() -> dict[str, dict[str, Any]]:
    """The policy of each mode: the one JSON block under its heading in docs/iam.md."""
    blocks: dict[str, list[str]] = {}
    heading, block = "", None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if block is not None:
            if line.startswith("```"):
                blocks.setdefault(heading, []).append("\n".join(block))
                block = None
            else:
                block.append(line)
        elif line.startswith("## "):
            heading = line[3:].strip()
        elif line.strip() == "```json":
            block = []
    found = {}
    for mode, title in HEADINGS.items():
        assert len(blocks.get(title, [])) == 1, f"docs/iam.md needs one JSON policy under '## {title}'"
        found[mode] = json.loads(blocks[title][0])
    return found


def actions(policy: dict[str, Any]) -> list[str]:
    """Every action the policy allows (as written: wildcards stay)."""
    assert policy["Version"] == "2012-10-17"
    listed = []
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", statement
        names = statement["Action"]
        listed += [names] if isinstance(names, str) else names
    return listed


def matches(pattern: str, action: str) -> bool:
    """IAM's action match: case-insensitive, ``*`` and ``?`` wildcards."""
    return re.fullmatch(fnmatch.translate(pattern.lower()), action.lower()) is not None


def called_actions(endpoint: Endpoint) -> list[str]:
    """``service:Operation`` of every operation the endpoint answered."""
    services = {"batch": endpoint.batch, "ecs": endpoint.ecs, "logs": endpoint.logs, "sts": endpoint.sts}
    service_of = {operation: name for name, service in services.items() for operation in service.operations()}
    return sorted(f"{service_of[operation]}:{operation}" for operation, count in endpoint.calls.items() if count)


def assert_policy_fits(mode: str, endpoint: Endpoint) -> None:
    """The mode's policy (with the assumed role's) allows every call made, and has no action that was not."""
    documented = policies()
    called = called_actions(endpoint)
    granted = actions(documented[mode]) + actions(documented["assume_role"])
    assert "sts:AssumeRole" in called
    not_allowed = [action for action in called if not any(matches(p, action) for p in granted)]
    assert not not_allowed, f"'{HEADINGS[mode]}' in docs/iam.md does not allow {not_allowed}"
    for policy_mode in (mode, "assume_role"):
        never_called = [
            pattern
            for pattern in actions(documented[policy_mode])
            if pattern not in IMPLICIT and not any(matches(pattern, action) for action in called)
        ]
        assert not never_called, f"'{HEADINGS[policy_mode]}' in docs/iam.md allows {never_called}, never called"


@pytest.fixture
def aws(aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """The scripted endpoint, through an ``aws_fake`` connection that assumes a role (AssumeRole at the endpoint)."""
    url = aws_endpoint.url
    extra = {"role_arn": ROLE_ARN, "service_config": {"sts": {"endpoint_url": url}}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_FAKE", aws_connection_uri(url, **extra))
    return aws_endpoint


def batch_tags(body: dict[str, Any]) -> dict[str, str]:
    return dict(body.get("tags") or {})


def ecs_tags(body: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in body.get("tags") or []}


def batch_job(exit_code: int, stream: str) -> dict[str, Any]:
    status = "SUCCEEDED" if exit_code == 0 else "FAILED"
    return {
        "status": status,
        "statusReason": "Essential container in task exited",
        "container": {"exitCode": exit_code, "logStreamName": stream},
    }


def stopped_task(exit_code: int) -> dict[str, Any]:
    return {
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "stoppedReason": "Essential container in task exited",
        "containers": [{"name": CONTAINER, "lastStatus": "STOPPED", "exitCode": exit_code}],
    }


def hide_first_batch_job(endpoint: Endpoint, task_id: str) -> None:
    """The first job of ``task_id`` runs unseen by DescribeJobs until its retry lists it (ListJobs), then ends
    once the retry has described it: the first try fails (the job is missing), the retry re-attaches."""
    submit, list_jobs, describe = (endpoint.operations[op] for op in ("SubmitJob", "ListJobs", "DescribeJobs"))
    hidden: list[str] = []
    found: list[str] = []

    def submit_hidden(call: Call) -> Any:
        answer = submit(call)
        if batch_tags(call.body).get("airflow:task_id") == task_id and not hidden:
            hidden.append(answer["jobId"])
            endpoint.batch.hidden.add(answer["jobId"])
        return answer

    def list_and_show(call: Call) -> Any:
        endpoint.batch.hidden.difference_update(hidden)
        found.extend(hidden)
        return list_jobs(call)

    def describe_then_end(call: Call) -> Any:
        answer = copy.deepcopy(describe(call))  # as described now, not as it is once it ends
        for job_id in set(found) & set(call.body.get("jobs") or []):
            found.remove(job_id)
            endpoint.batch.set_job(job_id, **batch_job(0, "retried"))
        return answer

    endpoint.operations |= {"SubmitJob": submit_hidden, "ListJobs": list_and_show, "DescribeJobs": describe_then_end}


#: A timed-out task's execution_timeout: long enough for its trigger to submit the job before the deadline
#: even when the task run itself takes seconds to start (3 s on a busy 2-core machine; 10 s was not enough for a
#: group with three CI legs at once, 3 s not for a per-model task whose trigger submits).
TIMEOUT_SECONDS = 20
#: The state of a task that reached its execution_timeout, as ``run_timing_out`` returns it.
TIMED_OUT = "failed" if AIRFLOW_V_3_0_PLUS else None


def run_timing_out(tasks: str, imports: str = "") -> str | None:
    """``run_dag`` of a task ``timed_out`` that reaches its ``execution_timeout``: that task's state.

    ``None`` on Airflow 2, whose ``dag.test()`` lets the task's ``AirflowTaskTimeout`` out instead of failing
    the task; the calls it made are at the endpoint either way.
    """
    try:
        dag_run = run_dag(tasks, imports=imports)
    except AirflowTaskTimeout:
        if AIRFLOW_V_3_0_PLUS:
            raise
        return None
    return str(task_instance(dag_run, "timed_out").state)


def run_per_model(operator: str, where: str) -> None:
    """``operator`` per model (``where``: its queue or cluster): a success with metrics, a failure, a retry that
    re-attaches, and a task stopped at its ``execution_timeout``."""
    dag_run = run_dag(
        f"""
        where = {where}
        {operator}(task_id="ok", {COMMON}, collect_metrics=True, **where)
        {operator}(task_id="fails", {COMMON}, **where)
        {operator}(
            task_id="retried", {COMMON}, retries=1, retry_delay=datetime.timedelta(0), missing_grace=0.3, **where
        )
        """
    )
    timed_out = run_timing_out(
        f"""
        {operator}(
            task_id="timed_out", {COMMON}, execution_timeout=datetime.timedelta(seconds={TIMEOUT_SECONDS}), **{where},
        )
        """
    )

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"ok": "success", "fails": "failed", "retried": "success"}
    assert timed_out == TIMED_OUT
    assert xcom(dag_run, "ok")["metrics"] == {"mape": 0.12}
    assert task_instance(dag_run, "retried").try_number == 2


@RETRY_BROKEN
def test_batch_per_model_policy(aws: Endpoint) -> None:
    aws.logs.streams[(BATCH_LOG_GROUP, "ok")] = ["training", METRICS]
    aws.logs.streams[(BATCH_LOG_GROUP, "fails")] = ["Traceback (most recent call last):", "ValueError: bad data"]
    aws.logs.streams[(BATCH_LOG_GROUP, "retried")] = [METRICS]
    outcomes = {"ok": batch_job(0, "ok"), "fails": batch_job(1, "fails")}
    aws.batch.on_submit = lambda body: outcomes.get(batch_tags(body)["airflow:task_id"], {"status": "RUNNING"})
    hide_first_batch_job(aws, "retried")

    run_per_model("BatchJobOperator", 'dict(job_queue="models", job_definition="forecast")')

    assert aws.calls["SubmitJob"] == 4  # the retry re-attached
    assert len(aws.batch.terminated) == 1
    assert_policy_fits("batch", aws)


def test_batch_groups_policy(aws: Endpoint) -> None:
    streams = {"a": [METRICS], "b-1": ["ValueError: bad data"], "b-2": [METRICS]}
    for stream, lines in streams.items():
        aws.logs.streams[(BATCH_LOG_GROUP, stream)] = lines

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        tags = batch_tags(body)
        model, attempt = tags["airflow:model"], tags["airflow:attempt"]
        if model == "a":
            return batch_job(0, "a")
        if model == "b":
            return batch_job(1 if attempt == "1" else 0, f"b-{attempt}")
        return {"status": "RUNNING"}

    aws.batch.on_submit = on_submit

    dag_run = run_dag(
        f"""
        queue = dict(job_queue="models", job_definition="forecast")
        models = [{{"tags": {{"model_id": "a"}}}}, {{"tags": {{"model_id": "b"}}}}]
        BatchFleetOperator(task_id="group", {COMMON}, models=models, model_retries=1, collect_metrics=True, **queue)
        """
    )
    timed_out = run_timing_out(
        f"""
        queue = dict(job_queue="models", job_definition="forecast")
        BatchFleetOperator(
            task_id="timed_out", {COMMON}, models=[{{"tags": {{"model_id": "c"}}}}],
            execution_timeout=datetime.timedelta(seconds={TIMEOUT_SECONDS}), **queue,
        )
        """
    )

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"group": "success"}
    assert timed_out == TIMED_OUT
    results = xcom(dag_run, "group")
    assert [(r["model"], r["tries"], r["metrics"]) for r in results] == [
        ("a", 1, {"mape": 0.12}),
        ("b", 2, {"mape": 0.12}),
    ]
    assert len(aws.batch.terminated) == 1
    assert_policy_fits("batch_groups", aws)


def script_ecs(endpoint: Endpoint, outcome: Any) -> None:
    """Tasks end as ``outcome(tags, attempt)`` says (``None``: they keep running); each one's log is scripted."""
    endpoint.ecs.task_definitions["forecast"] = task_definition()
    run_task = endpoint.operations["RunTask"]

    def run_and_end(call: Call) -> Any:
        answer = run_task(call)
        arn = answer["tasks"][0]["taskArn"]
        exit_code = outcome(ecs_tags(call.body))
        if exit_code is None:
            endpoint.ecs.set_task(arn, lastStatus="RUNNING")
        else:
            endpoint.ecs.set_task(arn, **stopped_task(exit_code))
            stream = f"ecs/{CONTAINER}/{arn.rsplit('/', 1)[-1]}"
            endpoint.logs.streams[(ECS_LOG_GROUP, stream)] = [METRICS] if exit_code == 0 else ["ValueError: bad data"]
        return answer

    endpoint.operations["RunTask"] = run_and_end


def hide_first_ecs_task(endpoint: Endpoint, task_id: str) -> None:
    """As :func:`hide_first_batch_job`, for ECS: ListTasks shows it, the retry's DescribeTasks (with tags) ends it."""
    run_task, list_tasks, describe = (endpoint.operations[op] for op in ("RunTask", "ListTasks", "DescribeTasks"))
    hidden: list[str] = []
    found: list[str] = []

    def run_hidden(call: Call) -> Any:
        answer = run_task(call)
        if ecs_tags(call.body).get("airflow:task_id") == task_id and not hidden:
            hidden.append(answer["tasks"][0]["taskArn"])
            endpoint.ecs.hidden.add(hidden[0])
        return answer

    def list_and_show(call: Call) -> Any:
        endpoint.ecs.hidden.difference_update(hidden)
        found.extend(arn for arn in hidden if arn not in found)
        return list_tasks(call)

    def describe_then_end(call: Call) -> Any:
        answer = copy.deepcopy(describe(call))  # as described now, not as it is once it ends
        if call.body.get("include") == ["TAGS"]:
            for arn in set(found) & set(call.body.get("tasks") or []):
                found.remove(arn)
                endpoint.ecs.set_task(arn, **stopped_task(0))
        return answer

    endpoint.operations |= {"RunTask": run_hidden, "ListTasks": list_and_show, "DescribeTasks": describe_then_end}


@RETRY_BROKEN
def test_ecs_per_model_policy(aws: Endpoint) -> None:
    exit_codes = {"ok": 0, "fails": 1}
    script_ecs(aws, lambda tags: exit_codes.get(tags["airflow:task_id"]))
    hide_first_ecs_task(aws, "retried")

    run_per_model("EcsTaskOperator", 'dict(cluster="models", task_definition="forecast")')

    assert aws.calls["RunTask"] == 4  # the retry re-attached
    assert aws.calls["StopTask"] == 1
    assert_policy_fits("ecs", aws)


def test_ecs_groups_policy(aws: Endpoint) -> None:
    def outcome(tags: dict[str, str]) -> int | None:
        model, attempt = tags["airflow:model"], tags["airflow:attempt"]
        return {"a": 0, "b": 1 if attempt == "1" else 0}.get(model)

    script_ecs(aws, outcome)

    dag_run = run_dag(
        f"""
        cluster = dict(cluster="models", task_definition="forecast")
        models = [{{"tags": {{"model_id": "a"}}}}, {{"tags": {{"model_id": "b"}}}}]
        EcsFleetOperator(task_id="group", {COMMON}, models=models, model_retries=1, collect_metrics=True, **cluster)
        """,
        imports="from airflow_ml_batch.operators.ecs import EcsFleetOperator\n",
    )
    timed_out = run_timing_out(
        f"""
        cluster = dict(cluster="models", task_definition="forecast")
        EcsFleetOperator(
            task_id="timed_out", {COMMON}, models=[{{"tags": {{"model_id": "c"}}}}],
            execution_timeout=datetime.timedelta(seconds={TIMEOUT_SECONDS}), **cluster,
        )
        """,
        imports="from airflow_ml_batch.operators.ecs import EcsFleetOperator\n",
    )

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"group": "success"}
    assert timed_out == TIMED_OUT
    results = xcom(dag_run, "group")
    assert [(r["model"], r["tries"], r["metrics"]) for r in results] == [
        ("a", 1, {"mape": 0.12}),
        ("b", 2, {"mape": 0.12}),
    ]
    assert aws.calls["StopTask"] == 1
    assert_policy_fits("ecs_groups", aws)


def test_the_implicit_actions_are_in_the_modes_that_need_them() -> None:
    documented = policies()
    for action, (modes, reason) in IMPLICIT.items():
        for mode in modes:
            assert action in actions(documented[mode]), f"'{HEADINGS[mode]}' lacks {action}: {reason}"
    for mode in ("ecs", "ecs_groups"):
        (pass_role,) = [s for s in documented[mode]["Statement"] if s["Action"] == "iam:PassRole"]
        assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}


def test_actions_match_as_iam_matches_them() -> None:
    assert matches("batch:Describe*", "batch:DescribeJobs")
    assert matches("ECS:runtask", "ecs:RunTask")
    assert matches("logs:Get?ogEvents", "logs:GetLogEvents")
    assert not matches("batch:SubmitJob", "batch:SubmitJobs")
    assert not matches("ecs:*", "batch:SubmitJob")
