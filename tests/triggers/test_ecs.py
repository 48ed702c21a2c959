"""EcsTaskTrigger as the triggerer runs it, against a scripted ECS endpoint."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent
from helpers import first_event

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS
from airflow_ml_batch.hooks.ecs import EcsHook
from airflow_ml_batch.jobs.ecs import client_token_for
from airflow_ml_batch.links.ecs import EcsTaskLink
from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.testing.endpoint.core import AwsError
from airflow_ml_batch.triggers import start as start_module
from airflow_ml_batch.triggers import submission as submission_module
from airflow_ml_batch.triggers.ecs import DEFINITION_ATTEMPTS, EcsFleetTrigger, EcsTaskPoller, EcsTaskTrigger

DEFINITION = {
    "family": "forecast",
    "containerDefinitions": [
        {
            "name": "model",
            "essential": True,
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {"awslogs-group": "/ecs/forecast", "awslogs-stream-prefix": "ecs"},
            },
        },
        {"name": "metrics-sidecar", "essential": False},
    ],
}


@pytest.fixture
def ecs(aws_endpoint: Endpoint) -> Endpoint:
    aws_endpoint.ecs.task_definitions["forecast"] = DEFINITION
    return aws_endpoint


def trigger_for(task_arn: str, **kwargs: Any) -> EcsTaskTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    return EcsTaskTrigger(cluster="models", task_arn=task_arn, aws_conn_id="aws_fake", **kwargs)


def stopped(
    stop_code: str, reason: str, model: dict[str, Any], sidecar: dict[str, Any] | None = None
) -> dict[str, Any]:
    started = datetime.datetime(2026, 11, 30, 1, 0, tzinfo=datetime.timezone.utc)
    containers = [{"name": "model", **model}, {"name": "metrics-sidecar", **(sidecar or {"exitCode": 0})}]
    return {
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "stopCode": stop_code,
        "stoppedReason": reason,
        "containers": containers,
        "startedAt": started.timestamp(),
        "stoppedAt": (started + datetime.timedelta(minutes=10)).timestamp(),
    }


async def test_success_when_essential_containers_exit_zero_even_if_a_sidecar_fails(ecs: Endpoint) -> None:
    task = ecs.ecs.add_task("RUNNING")

    async def finish() -> None:
        await asyncio.sleep(0.5)
        ecs.ecs.set_task(
            task,
            **stopped(
                "EssentialContainerExited", "Essential container in task exited", {"exitCode": 0}, {"exitCode": 2}
            ),
        )

    event, _ = await asyncio.gather(first_event(trigger_for(task)), finish())

    assert event.payload["status"] == "success"
    result = event.payload["result"]
    assert result["outcome"] == "success"
    assert result["duration_seconds"] == 600
    assert (result["log_group"], result["log_stream"]) == ("/ecs/forecast", f"ecs/model/{task.rsplit('/', 1)[-1]}")


async def test_a_failing_sidecar_fails_the_task_when_asked(ecs: Endpoint) -> None:
    task = ecs.ecs.add_task(
        **stopped("EssentialContainerExited", "Essential container in task exited", {"exitCode": 0}, {"exitCode": 2})
    )

    event = await first_event(trigger_for(task, fail_on_sidecars=True))

    assert event.payload["status"] == "failed"
    assert event.payload["result"]["outcome"] == "container_failed"


@pytest.mark.parametrize(
    ("stop_code", "reason", "model", "outcome", "said"),
    [
        (
            "TaskFailedToStart",
            "CannotPullContainerError: pull image manifest has been retried 5 time(s)",
            {},
            "failed_to_start",
            "failed to start: CannotPullContainerError",
        ),
        (
            "TaskFailedToStart",
            "ResourceInitializationError: unable to pull secrets",
            {},
            "failed_to_start",
            "failed to start: ResourceInitializationError",
        ),
        (
            "SpotInterruption",
            "Your Spot Task was interrupted.",
            {"exitCode": 143},
            "spot_interruption",
            "Spot capacity reclaimed",
        ),
        (
            "EssentialContainerExited",
            "Essential container in task exited",
            {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"},
            "out_of_memory",
            "ran out of memory",
        ),
        (
            "EssentialContainerExited",
            "Essential container in task exited",
            {"exitCode": 1},
            "container_failed",
            "essential container exit with a non-zero code",
        ),
        (
            "UserInitiated",
            "Stopped by an operator",
            {"exitCode": 143},
            "stopped",
            "was stopped by a user (StopTask): Stopped by an operator",
        ),
        (
            "ServiceSchedulerInitiated",
            "Scaling activity initiated by deployment",
            {"exitCode": 137},
            "stopped",
            "was stopped by the ECS service scheduler: Scaling activity",
        ),
    ],
)
async def test_each_failure_class_is_named_with_its_reason_and_log(
    ecs: Endpoint, stop_code: str, reason: str, model: dict[str, Any], outcome: str, said: str
) -> None:
    task = ecs.ecs.add_task(**stopped(stop_code, reason, model))
    ecs.logs.streams[("/ecs/forecast", f"ecs/model/{task.rsplit('/', 1)[-1]}")] = ["loading history", "Traceback: boom"]

    event = await first_event(trigger_for(task, log_tail_lines=2, job_logs="always"))

    assert event.payload["status"] == "failed"
    assert event.payload["result"]["outcome"] == outcome
    message = event.payload["message"]
    assert said in message
    assert f"(stop code {stop_code})" in message
    assert "container model: exit code" in message
    assert message.endswith(f"  log: /ecs/forecast ecs/model/{task.rsplit('/', 1)[-1]}")
    assert "Traceback" not in repr(event.payload)
    assert ecs.calls["GetLogEvents"] == 0


async def test_a_task_stopped_with_stop_task_is_stopped_by_a_user(ecs: Endpoint) -> None:
    task = ecs.ecs.add_task("RUNNING")

    async def stop() -> None:
        await asyncio.sleep(0.3)
        killed = [{"name": "model", "exitCode": 143}, {"name": "metrics-sidecar", "exitCode": 137}]
        ecs.ecs.set_task(task, containers=killed)  # what SIGTERM, then SIGKILL, does; the task is still RUNNING
        hook = EcsHook(aws_conn_id="aws_fake")
        await asyncio.to_thread(hook.conn.stop_task, cluster="models", task=task, reason="Stopped by Dana")

    event, _ = await asyncio.gather(first_event(trigger_for(task)), stop())

    assert event.payload["status"] == "failed"
    assert event.payload["result"]["outcome"] == "stopped"
    assert "was stopped by a user (StopTask): Stopped by Dana (stop code UserInitiated)" in event.payload["message"]


def regional_definition(*containers: tuple[str, bool, str | None]) -> dict[str, Any]:
    """A definition of ``(name, essential, awslogs-region)`` containers, each logging to ``/ecs/<name>``."""
    return {
        "family": "forecast",
        "containerDefinitions": [
            {
                "name": name,
                "essential": essential,
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": f"/ecs/{name}",
                        "awslogs-stream-prefix": "ecs",
                        **({"awslogs-region": region} if region else {}),
                    },
                },
            }
            for name, essential, region in containers
        ],
    }


async def test_the_log_is_the_essential_containers_copied_from_its_log_region(
    ecs: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    ecs.ecs.task_definitions["forecast"] = regional_definition(
        ("log-router", False, None), ("model", True, "us-east-2")
    )
    task = ecs.ecs.add_task(
        **stopped("EssentialContainerExited", "Essential container in task exited", {"exitCode": 0})
    )
    task_id = task.rsplit("/", 1)[-1]
    ecs.logs.streams[("/ecs/log-router", f"ecs/log-router/{task_id}")] = ["router up"]
    ecs.logs.streams[("/ecs/model", f"ecs/model/{task_id}")] = [(1_767_225_600_000, "model done")]

    event = await first_event(trigger_for(task, end_from_trigger=True, job_logs="always"))

    assert isinstance(event, TaskSuccessEvent)
    # Airflow 2 logs through the standard library, Airflow 3 through structlog to stdout.
    logged = caplog.text + capsys.readouterr().out
    assert f"log stream ecs/model/{task_id} in /ecs/model" in logged
    assert "2026-01-01T00:00:00.000Z model done" in logged
    assert "router up" not in logged
    assert [region for operation, region in ecs.regions if operation == "GetLogEvents"] == ["us-east-2"]
    assert {region for operation, region in ecs.regions if operation != "GetLogEvents"} == {"eu-west-1"}


async def test_metrics_and_the_log_link_come_from_container_name_in_its_region(ecs: Endpoint) -> None:
    ecs.ecs.task_definitions["forecast"] = regional_definition(
        ("prepare", True, "eu-west-1"), ("model", True, "us-east-2")
    )
    task = ecs.ecs.add_task(**stopped("EssentialContainerExited", "done", {"exitCode": 0}, {"exitCode": 0}))
    task_id = task.rsplit("/", 1)[-1]
    ecs.logs.streams[("/ecs/prepare", f"ecs/prepare/{task_id}")] = ['{"metrics": {"rows": 10}}']
    ecs.logs.streams[("/ecs/model", f"ecs/model/{task_id}")] = ['{"metrics": {"mape": 0.12}}']
    link = {"region_name": "eu-west-1", "aws_domain": "aws.amazon.com"}

    event = await first_event(
        trigger_for(task, container_name="model", collect_metrics=True, end_from_trigger=True, log_link=link)
    )

    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms is not None
    assert event.xcoms["return_value"]["metrics"] == {"mape": 0.12}
    if AIRFLOW_V_3_0_PLUS:  # Airflow 3 shows the rendered URL, kept under the link's own XCom key
        assert event.xcoms["_link_JobLogsLink"] == (
            "https://console.aws.amazon.com/cloudwatch/home?region=us-east-2#logsV2:log-groups/log-group/"
            f"%2Fecs%2Fmodel/log-events/ecs%2Fmodel%2F{task_id}"
        )
    else:  # Airflow 2's webserver renders it from the link's data
        assert event.xcoms["cloudwatch_events"] == {
            **link,
            "awslogs_region": "us-east-2",
            "awslogs_group": "/ecs/model",
            "awslogs_stream_name": f"ecs/model/{task_id}",
        }
    assert [region for operation, region in ecs.regions if operation == "GetLogEvents"] == ["us-east-2"]


async def test_a_throttled_task_definition_read_is_retried_while_the_poller_goes_on(ecs: Endpoint) -> None:
    ecs.fail_next("DescribeTaskDefinition", times=4, status=400, code="ThrottlingException")
    ecs.fail_next("DescribeTaskDefinition", times=1, status=503, code="ServiceUnavailableException")
    task = ecs.ecs.add_task(**stopped("EssentialContainerExited", "done", {"exitCode": 0}, {"exitCode": 2}))

    event = await first_event(trigger_for(task))

    assert event.payload["status"] == "success", "the failing sidecar is not essential"
    assert event.payload["result"]["essential_containers"] == ["model"]
    assert event.payload["result"]["warnings"] == []
    assert ecs.calls["DescribeTaskDefinition"] == 6
    assert ecs.calls["DescribeTasks"] >= 3, "poll rounds went on while the definition read backed off"


async def test_an_unreadable_task_definition_judges_every_container_and_says_so(
    ecs: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    ecs.fail_next("DescribeTaskDefinition", times=100, status=400, code="AccessDeniedException")
    first, second = (
        ecs.ecs.add_task(**stopped("EssentialContainerExited", "done", {"exitCode": 0}, {"exitCode": 2}))
        for _ in range(2)
    )
    keeper = asyncio.ensure_future(first_event(trigger_for(ecs.ecs.add_task("RUNNING"))))  # keeps the poller alive

    event = await first_event(trigger_for(first))
    again = await first_event(trigger_for(second))
    keeper.cancel()
    await asyncio.gather(keeper, return_exceptions=True)

    assert event.payload["status"] == "failed"
    result = event.payload["result"]
    assert result["outcome"] == "container_failed", "the sidecar is judged too"
    assert result["essential_containers"] is None
    (warning,) = result["warnings"]
    assert warning.startswith("the essential containers are unknown, so all containers are judged")
    assert "AccessDeniedException" in warning
    assert f"  warning: {warning}" in event.payload["message"]
    # Airflow 2 logs through the standard library, Airflow 3 through structlog to stdout.
    logged = caplog.text + capsys.readouterr().out
    assert f"{first.rsplit('/', 1)[-1]}: {warning}" in logged
    assert "AccessDeniedException" in logged.split(" (attempt 1)")[1].splitlines()[0], "each error is logged"
    assert ecs.calls["DescribeTaskDefinition"] == DEFINITION_ATTEMPTS, "retried, then not read again for a while"
    assert again.payload["result"]["warnings"] == result["warnings"]


async def test_throttling_never_fails_and_tasks_share_calls_per_cluster(ecs: Endpoint) -> None:
    tasks = [ecs.ecs.add_task("RUNNING") for _ in range(250)]
    ecs.fail_next("DescribeTasks", times=3, status=400, code="ThrottlingException")
    ecs.fail_next("DescribeTasks", times=1, status=503, code="ServiceUnavailableException")
    waiting = [asyncio.ensure_future(first_event(trigger_for(task, poll_interval=0.2), timeout=120)) for task in tasks]

    first = trigger_for(tasks[0])

    async def rounds_done(count: int) -> EcsTaskPoller:
        while (poller := EcsTaskPoller.of(first.hook, first.scope)) is None or poller.rounds < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return poller  # type: ignore[return-value]

    poller = await asyncio.wait_for(rounds_done(3), timeout=90)
    rounds, calls = poller.rounds, ecs.calls["DescribeTasks"]
    for task in tasks:
        ecs.ecs.set_task(task, **stopped("EssentialContainerExited", "done", {"exitCode": 0}))
    events = await asyncio.gather(*waiting)

    assert {event.payload["status"] for event in events} == {"success"}
    assert calls - 4 <= 3 * rounds, f"{calls} DescribeTasks calls (4 of them refused) in {rounds} rounds"
    assert ecs.calls["DescribeTaskDefinition"] == 1, "one definition read for all tasks of it"


async def test_a_task_gone_from_describe_tasks_fails_clearly(ecs: Endpoint) -> None:
    task = ecs.ecs.add_task("RUNNING")
    ecs.ecs.hidden.add(task)  # what ECS does an hour after a task stopped, e.g. after a long triggerer outage

    event = await first_event(trigger_for(task, missing_grace=0.3))

    assert event.payload["status"] == "missing"
    assert f"ECS task {task} was not found" in event.payload["message"]


async def test_deadline_stops_the_task(ecs: Endpoint) -> None:
    task = ecs.ecs.add_task("RUNNING")

    event = await first_event(trigger_for(task, deadline=time.time() + 0.3))

    assert event.payload["status"] == "timeout"
    assert ecs.ecs.tasks[task]["lastStatus"] == "STOPPED"
    assert "execution_timeout" in ecs.ecs.tasks[task]["stoppedReason"]


async def test_neither_a_restart_nor_on_kill_with_an_unknown_task_state_stops_the_task(ecs: Endpoint) -> None:
    # tests/triggers/test_batch.py runs on_kill against real task states; StopTask is the deadline test's
    task = ecs.ecs.add_task("RUNNING")
    waiting = asyncio.ensure_future(first_event(trigger_for(task)))
    await asyncio.sleep(0.3)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)

    await trigger_for(task).on_kill()

    assert ecs.ecs.tasks[task]["lastStatus"] == "RUNNING"
    assert ecs.calls["StopTask"] == 0


async def test_end_from_trigger(ecs: Endpoint) -> None:
    task = ecs.ecs.add_task(**stopped("EssentialContainerExited", "done", {"exitCode": 0}))

    event = await first_event(trigger_for(task, end_from_trigger=True))

    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms["return_value"]["task_arn"] == task


def test_serialize_round_trips_through_airflows_trigger_model() -> None:
    from airflow.models.trigger import Trigger

    trigger = EcsTaskTrigger(
        cluster="models", task_arn="arn:task", aws_conn_id="x", fail_on_sidecars=True, container_name="model"
    )
    stored = Trigger.from_object(trigger)

    assert stored.classpath == "airflow_ml_batch.triggers.ecs.EcsTaskTrigger"
    assert EcsTaskTrigger(**stored.kwargs).serialize() == trigger.serialize()
    assert stored.kwargs["container_name"] == "model"


def test_kwargs_stored_before_container_name_existed_still_load() -> None:
    _, kwargs = EcsTaskTrigger(cluster="models", task_arn="arn:task").serialize()
    del kwargs["container_name"]

    assert EcsTaskTrigger(**kwargs).container_name is None


def fleet_trigger(count: int, **kwargs: Any) -> EcsFleetTrigger:
    models = [
        {"index": n, "label": f"m{n}", "request": {"cluster": "models", "taskDefinition": "forecast", "tags": []}}
        for n in range(count)
    ]
    job = {"aws_conn_id": "aws_fake", "cluster": "models", "poll_interval": 0.05, "end_from_trigger": False}
    job["missing_grace"] = 600.0
    group = {"prefix": "forecast-0123456789--", "try_number": 1, "reattachable": [1, 1], "reattach": True}
    return EcsFleetTrigger(models=models, group=group, job=job, **kwargs)


def run_task_requests(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [body for operation, body in endpoint.requests if operation == "RunTask"]


async def test_a_fleet_starts_one_task_per_model_with_its_identity(ecs: Endpoint) -> None:
    ecs.ecs.new_task_fields = stopped("EssentialContainerExited", "done", {"exitCode": 0})
    ecs.ecs.run_task_failures = [{"reason": "RESOURCE:MEMORY"}]  # no capacity once: tried again, not an attempt

    event = await first_event(fleet_trigger(3), timeout=60)

    assert event.payload["status"] == "success"
    assert [(r["model"], r["outcome"], r["tries"]) for r in event.payload["result"]] == [
        ("m0", "success", 1),
        ("m1", "success", 1),
        ("m2", "success", 1),
    ]
    requests = run_task_requests(ecs)
    assert len(requests) == 4
    assert {r["startedBy"] for r in requests} == {"forecast-0123456789--"}
    # ECS answers a repeated token with its first outcome: the capacity retry, a new placement, has its own
    assert len({r["clientToken"] for r in requests}) == 4
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in requests[1:]]
    assert sorted(t["airflow:model_index"] for t in tags) == ["0", "1", "2"]
    assert {(t["airflow:try_number"], t["airflow:attempt"]) for t in tags} == {("1", "1")}


async def test_a_restarted_fleet_trigger_starts_no_second_task(ecs: Endpoint) -> None:
    running = asyncio.ensure_future(first_event(fleet_trigger(4), timeout=60))
    while len(ecs.ecs.tasks) < 4:  # noqa: ASYNC110 - the tasks live in the endpoint's thread
        await asyncio.sleep(0.02)
    running.cancel()  # a triggerer restart
    with pytest.raises(asyncio.CancelledError):
        await running

    restarted = asyncio.ensure_future(first_event(fleet_trigger(4), timeout=60))
    await asyncio.sleep(0.5)
    for arn in list(ecs.ecs.tasks):
        ecs.ecs.set_task(arn, **stopped("EssentialContainerExited", "done", {"exitCode": 0}))
    event = await restarted

    assert event.payload["status"] == "success"
    assert len(run_task_requests(ecs)) == 4
    assert {r["task_arn"] for r in event.payload["result"]} == set(ecs.ecs.tasks)


async def test_a_spot_interruption_gets_the_models_retry(ecs: Endpoint) -> None:
    interrupted = stopped("SpotInterruption", "Your Spot Task was interrupted.", {"exitCode": 143})
    finished = stopped("EssentialContainerExited", "done", {"exitCode": 0})
    answers = iter([interrupted, finished])

    def stop_next() -> None:
        for arn, task in list(ecs.ecs.tasks.items()):
            if task["lastStatus"] != "STOPPED":
                ecs.ecs.set_task(arn, **next(answers))

    async def interrupt() -> None:
        for _ in range(2):
            while not any(t["lastStatus"] != "STOPPED" for t in ecs.ecs.tasks.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            stop_next()

    event, _ = await asyncio.gather(first_event(fleet_trigger(1, model_retries=1), timeout=60), interrupt())

    assert event.payload["status"] == "success"
    (result,) = event.payload["result"]
    assert result["tries"] == 2
    assert len(run_task_requests(ecs)) == 2


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_lost_run_task_answers_start_no_second_task(ecs: Endpoint, mode: str) -> None:
    # RunTask started the task, then its answer was lost: sent again with its clientToken, ECS answers
    # with the task it started
    ecs.ecs.new_task_fields = stopped("EssentialContainerExited", "done", {"exitCode": 0})
    ecs.lose_answers("RunTask", fraction=0.3, mode=mode, seed=4)

    event = await first_event(fleet_trigger(12), timeout=60)

    assert event.payload["status"] == "success"
    assert ecs.stats()["lost_answers"]["RunTask"] >= 2
    assert len(ecs.ecs.tasks) == 12
    assert {r["task_arn"] for r in event.payload["result"]} == set(ecs.ecs.tasks)


async def test_capacity_failures_end_after_a_bounded_number_of_tries(
    ecs: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submission_module, "CAPACITY_TRIES", 3)
    ecs.ecs.run_task_failures = [{"arn": "", "reason": "RESOURCE:MEMORY"}] * 3

    event = await first_event(fleet_trigger(1), timeout=60)

    assert event.payload["status"] == "failed"
    (result,) = event.payload["result"]
    assert result["status"] == "NO_CAPACITY"
    assert "no capacity for model m0 after 3 tries: RESOURCE:MEMORY" in result["message"]
    assert len({r["clientToken"] for r in run_task_requests(ecs)}) == 3, "each placement a token of its own"
    assert ecs.ecs.tasks == {}


async def test_a_cluster_that_cannot_be_listed_fails_the_group_naming_it(ecs: Endpoint) -> None:
    def no_such_cluster(call: Any) -> Any:
        raise AwsError(400, "ClusterNotFoundException", "Cluster not found.")

    ecs.operations["ListTasks"] = no_such_cluster

    event = await first_event(fleet_trigger(3), timeout=30)

    assert event.payload["status"] == "failed"
    assert event.payload["message"] == (
        "ECS could not list the tasks of cluster='models': ClusterNotFoundException: Cluster not found."
    )
    assert ecs.calls["RunTask"] == 0


# -- a per-model trigger that runs its own task (EcsTaskOperator(submit_from_trigger=True)) -------------------

STARTED_BY = "airflow-0123456789abcdef"
IDENTITY = {"airflow:dag_id": "d", "airflow:task_id": "model", "airflow:run_id": "r", "airflow:map_index": "3"}


def running(try_number: int = 1, reattach_tries: tuple[int, int] = (1, 1), **kwargs: Any) -> EcsTaskTrigger:
    """A trigger that runs its task, as ``EcsTaskOperator`` defers to it."""
    tags = {**IDENTITY, "airflow:try_number": str(try_number)}
    request = {
        "cluster": "models",
        "taskDefinition": "forecast",
        "launchType": "FARGATE",
        "startedBy": STARTED_BY,
        "clientToken": client_token_for(STARTED_BY, try_number),
        "tags": [{"key": key, "value": value} for key, value in tags.items()],
    }
    start = {
        "request": request,
        "try_number": try_number,
        "reattach_tries": list(reattach_tries),
        "identity": IDENTITY,
        "job_id_xcom_key": "ecs_task_arn",
        "capacity_tries": kwargs.pop("capacity_tries", 8),
    }
    kwargs.setdefault("poll_interval", 0.05)
    return EcsTaskTrigger(cluster="models", start=start, aws_conn_id="aws_fake", **kwargs)


async def test_the_trigger_runs_the_task_once_and_ends_with_its_arn_and_links(ecs: Endpoint) -> None:
    ecs.ecs.new_task_fields = stopped("EssentialContainerExited", "done", {"exitCode": 0})

    event = await first_event(running(end_from_trigger=True), timeout=30)

    assert isinstance(event, TaskSuccessEvent)
    (task_arn,) = ecs.ecs.tasks
    assert event.xcoms["return_value"]["task_arn"] == task_arn
    assert event.xcoms["ecs_task_arn"] == task_arn
    if AIRFLOW_V_3_0_PLUS:  # the rendered URL (Airflow 2 renders it from the data)
        assert f"/clusters/models/tasks/{task_arn.rsplit('/', 1)[-1]}/" in event.xcoms[EcsTaskLink().xcom_key]
    else:
        assert event.xcoms[EcsTaskLink.key]["task_id"] == task_arn.rsplit("/", 1)[-1]
    (request,) = run_task_requests(ecs)
    assert request["startedBy"] == STARTED_BY
    assert ecs.calls["ListTasks"] == 2  # running and stopped, once


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_a_lost_run_task_answer_is_sent_again_with_its_token(ecs: Endpoint, mode: str) -> None:
    ecs.ecs.new_task_fields = stopped("EssentialContainerExited", "done", {"exitCode": 0})
    ecs.lose_answers("RunTask", next=1, mode=mode)

    event = await first_event(running(), timeout=30)

    assert event.payload["status"] == "success"
    assert list(ecs.ecs.tasks) == [event.payload["job_id"]]
    first, second = run_task_requests(ecs)
    assert first["clientToken"] == second["clientToken"], "ECS answered the same token with the task it started"


async def test_no_capacity_is_tried_again_with_a_new_token_a_bounded_number_of_times(ecs: Endpoint) -> None:
    ecs.ecs.run_task_failures = [{"arn": "", "reason": "RESOURCE:MEMORY"}] * 3

    event = await first_event(running(capacity_tries=3), timeout=60)

    assert event.payload["status"] == "failed"
    assert event.payload["message"] == "no capacity after 3 tries: RESOURCE:MEMORY"
    assert len({r["clientToken"] for r in run_task_requests(ecs)}) == 3, "each placement a token of its own"
    assert ecs.ecs.tasks == {}


async def test_a_failure_that_is_not_about_capacity_fails_with_the_values(ecs: Endpoint) -> None:
    ecs.ecs.run_task_failures = [{"arn": "arn:container-instance", "reason": "ATTRIBUTE", "detail": "arm64"}]

    event = await first_event(running(), timeout=30)

    assert event.payload["status"] == "failed"
    assert event.payload["message"] == (
        "ECS could not run the task (cluster='models', task_definition='forecast'): "
        "arn:container-instance ATTRIBUTE arm64"
    )
    assert ecs.calls["RunTask"] == 1


async def test_an_unknown_cluster_fails_with_the_aws_message(ecs: Endpoint) -> None:
    def no_such_cluster(call: Any) -> Any:
        raise AwsError(400, "ClusterNotFoundException", "Cluster not found.")

    ecs.operations["ListTasks"] = no_such_cluster

    event = await first_event(running(), timeout=30)

    assert event.payload["status"] == "failed"
    assert event.payload["message"] == (
        "ECS could not list the tasks of cluster='models': ClusterNotFoundException: Cluster not found."
    )
    assert ecs.calls["RunTask"] == 0


@pytest.mark.parametrize("reattach", [True, False])
async def test_a_retry_reattaches_to_the_earlier_trys_running_task_or_stops_it(ecs: Endpoint, reattach: bool) -> None:
    earlier_trigger = running(try_number=1)
    async with earlier_trigger.hook.async_client() as client:
        earlier = await earlier_trigger.send_start(client)
    ecs.ecs.new_task_fields = stopped("EssentialContainerExited", "done", {"exitCode": 0})

    waiting = asyncio.ensure_future(first_event(running(2, (1, 2) if reattach else (1, 1)), timeout=30))
    await asyncio.sleep(0.5)
    ecs.ecs.set_task(earlier, **stopped("EssentialContainerExited", "done", {"exitCode": 0}))
    event = await waiting

    assert event.payload["status"] == "success"
    stopped_by_user = [body["task"] for operation, body in ecs.requests if operation == "StopTask"]
    if reattach:
        assert event.payload["job_id"] == earlier
        assert ecs.calls["RunTask"] == 1, "no second task"
        assert not stopped_by_user
    else:
        assert event.payload["job_id"] != earlier
        assert stopped_by_user == [earlier]
        assert ecs.calls["RunTask"] == 2


async def test_a_restarted_trigger_waits_for_the_task_its_try_ran(ecs: Endpoint) -> None:
    first = asyncio.ensure_future(first_event(running(), timeout=30))
    while not ecs.ecs.tasks:  # noqa: ASYNC110 - the tasks live in the endpoint's thread
        await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    (task_arn,) = ecs.ecs.tasks
    ecs.ecs.set_task(task_arn, **stopped("EssentialContainerExited", "done", {"exitCode": 0}))

    event = await first_event(running(), timeout=30)

    assert event.payload["status"] == "success"
    assert event.payload["job_id"] == task_arn
    assert ecs.calls["RunTask"] == 1


async def test_answers_lost_for_good_fail_the_task_and_stop_what_they_started(
    ecs: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(start_module, "START_PATIENCE", 1.0)
    ecs.lose_answers("RunTask", next=1000)  # ECS starts the task and every answer is a 500

    event = await first_event(running(), timeout=30)

    assert event.payload["status"] == "failed"
    assert event.payload["message"].startswith("RunTask kept failing for 1s")
    (task_arn,) = ecs.ecs.tasks  # one token, one task, however often it was sent
    assert [body["task"] for operation, body in ecs.requests if operation == "StopTask"] == [task_arn]
    assert ecs.calls["RunTask"] >= 2
