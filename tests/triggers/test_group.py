"""RunGroupTrigger (through BatchFleetTrigger) as the triggerer runs it, against the scripted Batch endpoint."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.models.trigger import Trigger
from airflow.triggers.base import TaskSuccessEvent
from helpers import clear_before_its_turn, clear_while_submitting, first_event, task_instance

from airflow_ml_batch.jobs.groups import parse_job_name
from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.testing.endpoint.core import AwsError
from airflow_ml_batch.triggers import base as trigger_base
from airflow_ml_batch.triggers import group as group_module
from airflow_ml_batch.triggers import submission as submission_module
from airflow_ml_batch.triggers.batch import BatchFleetTrigger
from airflow_ml_batch.triggers.group import GroupSettings

PREFIX = "forecast-0123456789--"


def group_trigger(
    count: int, try_number: int = 1, reattachable: tuple[int, int] = (1, 1), prefix: str = PREFIX, **kwargs: Any
) -> Any:
    models = [
        {
            "index": index,
            "label": f"m{index}",
            "request": {"jobQueue": "models", "jobDefinition": "forecast", "tags": {"airflow:model": f"m{index}"}},
        }
        for index in range(count)
    ]
    job = {"aws_conn_id": "aws_fake", "poll_interval": 0.05, "missing_grace": 600.0, "end_from_trigger": False}
    group = {"prefix": prefix, "try_number": try_number, "reattachable": list(reattachable), "reattach": True}
    return BatchFleetTrigger(models=models, group=group, job=job, **kwargs)


def submitted(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [body for operation, body in endpoint.requests if operation == "SubmitJob"]


def fail_models(endpoint: Endpoint, failing: dict[int, int]) -> None:
    """Jobs succeed at once, except the first ``failing[index]`` submitted for model ``index``, which fail."""
    seen: Counter[int] = Counter()

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        parsed = parse_job_name(PREFIX, body["jobName"])
        assert parsed is not None
        seen[parsed[0]] += 1
        if seen[parsed[0]] <= failing.get(parsed[0], 0):
            return {"status": "FAILED", "statusReason": "Essential container exited", "container": {"exitCode": 1}}
        return {"status": "SUCCEEDED", "container": {"exitCode": 0}}

    endpoint.batch.on_submit = on_submit


def test_serialize_round_trips_through_airflows_trigger_model() -> None:
    trigger = group_trigger(3, model_retries=2, max_running=10, allowed_failures=1)

    stored = Trigger.from_object(trigger)
    module, _, name = stored.classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**stored.kwargs)

    assert stored.classpath == "airflow_ml_batch.triggers.batch.BatchFleetTrigger"
    assert rebuilt.serialize() == trigger.serialize()


def test_a_trigger_serialized_by_an_earlier_release_loads() -> None:
    # what Airflow stored for a group trigger before GroupSettings: the same keys, every setting at the top
    _, kwargs = group_trigger(2).serialize()
    settings = {"model_retries": 2, "max_running": 10, "allowed_failures": 1, "submit_rate": 5.0}
    stored = {"models": kwargs["models"], "group": kwargs["group"], "job": kwargs["job"], **settings}
    stored["progress_interval"] = 60.0

    trigger = BatchFleetTrigger(**stored)

    assert trigger.group_settings == GroupSettings(**settings, progress_interval=60.0)
    assert trigger.serialize()[1] == stored


async def test_every_model_is_submitted_once_and_reported_in_order(aws_endpoint: Endpoint) -> None:
    fail_models(aws_endpoint, {})

    event = await first_event(group_trigger(5))

    assert event.payload["status"] == "success"
    results = event.payload["result"]
    assert [r["model"] for r in results] == ["m0", "m1", "m2", "m3", "m4"]
    assert all(r["succeeded"] and r["status"] == "SUCCEEDED" and r["tries"] == 1 for r in results)
    bodies = submitted(aws_endpoint)
    assert sorted(b["jobName"] for b in bodies) == sorted(f"{PREFIX}{i}-m{i}-t1-a1" for i in range(5))
    assert all(b["tags"]["airflow:try_number"] == "1" and b["tags"]["airflow:attempt"] == "1" for b in bodies)
    assert {r["job_id"] for r in results} == set(aws_endpoint.batch.jobs)


async def test_a_failed_model_gets_model_retries_inside_the_group(aws_endpoint: Endpoint) -> None:
    fail_models(aws_endpoint, {2: 1})

    event = await first_event(group_trigger(4, model_retries=1))

    assert event.payload["status"] == "success"
    assert [r["tries"] for r in event.payload["result"]] == [1, 1, 2, 1]
    assert len(submitted(aws_endpoint)) == 5
    assert f"{PREFIX}2-m2-t1-a2" in {b["jobName"] for b in submitted(aws_endpoint)}


async def test_the_group_fails_after_every_model_ended_beyond_allowed_failures(aws_endpoint: Endpoint) -> None:
    fail_models(aws_endpoint, {1: 9, 3: 9})

    tolerated = await first_event(group_trigger(5, allowed_failures=2))
    failed = await first_event(group_trigger(5, try_number=2, allowed_failures=1))

    assert tolerated.payload["status"] == "success"
    assert [r["succeeded"] for r in tolerated.payload["result"]] == [True, False, True, False, True]
    assert failed.payload["status"] == "failed"
    assert failed.payload["message"].startswith("2 of 5 models failed (AWS Batch jobs; allowed_failures=1).")
    assert "model m1" in failed.payload["message"]
    assert "exit code 1" in failed.payload["message"]
    assert len(failed.payload["result"]) == 5


async def test_a_retried_group_resubmits_exactly_the_failed_models(aws_endpoint: Endpoint) -> None:
    failing = {index: 1 for index in (3, 7, 11, 12, 19)}
    fail_models(aws_endpoint, failing)
    first = await first_event(group_trigger(20))
    before, requests_before = len(submitted(aws_endpoint)), len(aws_endpoint.requests)

    retry = await first_event(group_trigger(20, try_number=2, reattachable=(1, 2)))

    assert first.payload["status"] == "failed"
    assert first.payload["message"].startswith("5 of 20 models failed")
    assert retry.payload["status"] == "success"
    again = submitted(aws_endpoint)[before:]
    assert sorted(parse_job_name(PREFIX, b["jobName"]) for b in again) == [(i, 2, 1) for i in sorted(failing)]
    assert [r["job_id"] for r in retry.payload["result"] if r["index"] not in failing] == [
        r["job_id"] for r in first.payload["result"] if r["index"] not in failing
    ]
    # try 1's failed jobs are known from the listing: neither described nor their logs read again
    failed_jobs = {r["job_id"] for r in first.payload["result"] if r["index"] in failing}
    retry_requests = aws_endpoint.requests[requests_before:]
    described = {job_id for operation, body in retry_requests if operation == "DescribeJobs" for job_id in body["jobs"]}
    assert described
    assert not described & failed_jobs
    assert [operation for operation, _ in retry_requests if operation == "GetLogEvents"] == []


async def test_a_restarted_trigger_waits_for_the_jobs_already_submitted(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    running = asyncio.ensure_future(first_event(group_trigger(6), timeout=60))
    while len(aws_endpoint.batch.jobs) < 6:  # noqa: ASYNC110 - the jobs live in the endpoint's thread
        await asyncio.sleep(0.02)
    running.cancel()  # a triggerer restart: no task instance to read, so nothing is stopped
    with pytest.raises(asyncio.CancelledError):
        await running

    restarted = asyncio.ensure_future(first_event(group_trigger(6), timeout=60))
    await asyncio.sleep(0.5)
    for job_id in list(aws_endpoint.batch.jobs):
        aws_endpoint.batch.set_job(job_id, status="SUCCEEDED", container={"exitCode": 0})
    event = await restarted

    assert event.payload["status"] == "success"
    assert len(submitted(aws_endpoint)) == 6
    assert aws_endpoint.batch.terminated == []
    assert {r["job_id"] for r in event.payload["result"]} == set(aws_endpoint.batch.jobs)


async def test_jobs_of_a_cleared_try_are_stopped_and_every_model_runs_again(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    cleared = asyncio.ensure_future(first_event(group_trigger(3), timeout=60))
    while len(aws_endpoint.batch.jobs) < 3:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    cleared.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cleared
    old = set(aws_endpoint.batch.jobs)
    fail_models(aws_endpoint, {})

    # the next try after a clear: no earlier try may be re-attached to
    event = await first_event(group_trigger(3, try_number=2, reattachable=(2, 2)))

    assert event.payload["status"] == "success"
    assert set(aws_endpoint.batch.terminated) == old
    assert {r["job_id"] for r in event.payload["result"]}.isdisjoint(old)


async def test_max_running_caps_the_groups_jobs_at_once(aws_endpoint: Endpoint) -> None:
    active_at_submit: list[int] = []

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        active_at_submit.append(sum(job["status"] == "RUNNING" for job in aws_endpoint.batch.jobs.values()))
        return {"status": "RUNNING"}

    aws_endpoint.batch.on_submit = on_submit

    async def finish_one_by_one() -> None:
        """Once two run, give the group time to submit a third (it must not), then end one."""
        jobs = aws_endpoint.batch.jobs
        while len(jobs) < 7 or any(job["status"] == "RUNNING" for job in jobs.values()):
            await asyncio.sleep(0.3)
            running = [job_id for job_id, job in jobs.items() if job["status"] == "RUNNING"]
            if len(running) == 2 or (running and len(jobs) == 7):
                aws_endpoint.batch.set_job(running[0], status="SUCCEEDED", container={"exitCode": 0})

    event, _ = await asyncio.gather(first_event(group_trigger(7, max_running=2), timeout=60), finish_one_by_one())

    assert event.payload["status"] == "success"
    assert len(active_at_submit) == 7
    assert max(active_at_submit) <= 1  # at most one other job running when a job is submitted
    assert max(active_at_submit) == 1


async def test_throttling_slows_submission_and_never_fails_it(aws_endpoint: Endpoint) -> None:
    fail_models(aws_endpoint, {})
    aws_endpoint.fail_next("SubmitJob", times=3)

    event = await first_event(group_trigger(4), timeout=60)

    assert event.payload["status"] == "success"
    assert aws_endpoint.throttled["SubmitJob"] + len(submitted(aws_endpoint)) >= 4
    assert len(aws_endpoint.batch.jobs) == 4


async def test_groups_sharing_the_pace_submit_in_the_order_of_their_map_index(aws_endpoint: Endpoint) -> None:
    """The first groups hold the models listed first (the longest, in a longest-first fleet): they go first."""
    aws_endpoint.batch.on_submit = lambda body: {"status": "SUCCEEDED", "container": {"exitCode": 0}}
    later, first = group_trigger(3, prefix="forecast-later--", submit_rate=2.0), group_trigger(3, submit_rate=2.0)
    for trigger, map_index in ((later, 1), (first, 0)):
        trigger.task_instance = SimpleNamespace(task_id="forecast", map_index=map_index, try_number=1)

    events = await asyncio.gather(first_event(later, timeout=60), first_event(first, timeout=60))

    assert [event.payload["status"] for event in events] == ["success", "success"]
    names = [body["jobName"] for body in submitted(aws_endpoint)]
    groups = ["later" if name.startswith("forecast-later--") else "first" for name in names]
    # the very first slot goes to whichever group asked first; every slot after it, to map index 0 until it is done
    assert sorted(groups) == ["first"] * 3 + ["later"] * 3
    assert groups[-2:] == ["later", "later"]


async def test_a_wrong_queue_fails_fast_with_the_aws_message_and_the_value(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.on_submit = lambda body: {"reject": "Job queue models does not exist"}

    event = await first_event(group_trigger(50), timeout=30)

    assert event.payload["status"] == "failed"
    assert "Job queue models does not exist" in event.payload["message"]
    assert "job_queue='models'" in event.payload["message"]
    assert aws_endpoint.calls["SubmitJob"] == 5  # the first five, then no more


async def test_the_group_ends_from_the_trigger_with_every_result_and_its_table(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    fail_models(aws_endpoint, {})
    trigger = group_trigger(2)
    trigger.job["end_from_trigger"] = True

    event = await first_event(trigger)

    assert isinstance(event, TaskSuccessEvent)
    assert [r["model"] for r in event.xcoms["return_value"]] == ["m0", "m1"]
    logged = caplog.text + capsys.readouterr().out
    table = logged[logged.index("2 of 2 models succeeded: the task ends here, on the triggerer") :].splitlines()
    assert [row.split()[:2] for row in table[3:5]] == [["m0", "SUCCEEDED"], ["m1", "SUCCEEDED"]]


async def test_a_group_ended_on_the_triggerer_copies_the_models_logs_there_with_always(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)

    def on_submit(body: dict[str, Any]) -> dict[str, Any]:
        stream = f"forecast/default/{body['jobName']}"
        aws_endpoint.logs.streams[("/aws/batch/job", stream)] = [f"{body['jobName']} says hello"]
        return {"status": "SUCCEEDED", "container": {"exitCode": 0, "logStreamName": stream}}

    aws_endpoint.batch.on_submit = on_submit
    trigger = group_trigger(2)
    trigger.job.update(end_from_trigger=True, job_logs="always")

    event = await first_event(trigger)

    assert isinstance(event, TaskSuccessEvent)
    logged = caplog.text + capsys.readouterr().out
    assert f"{PREFIX}0-m0-t1-a1 says hello" in logged
    assert f"{PREFIX}1-m1-t1-a1 says hello" in logged
    assert "Model m1 (Job " in logged
    assert aws_endpoint.calls["GetLogEvents"] == 2


def jobs_per_name(endpoint: Endpoint) -> Counter[str]:
    return Counter(job["jobName"] for job in endpoint.batch.jobs.values())


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_lost_submit_answers_make_no_second_job(aws_endpoint: Endpoint, mode: str) -> None:
    # AWS created each job; a quarter of the answers never came back
    fail_models(aws_endpoint, {})
    aws_endpoint.lose_answers("SubmitJob", fraction=0.25, mode=mode, seed=7)

    event = await first_event(group_trigger(40), timeout=60)

    assert event.payload["status"] == "success"
    assert aws_endpoint.stats()["lost_answers"]["SubmitJob"] >= 5
    assert len(aws_endpoint.batch.jobs) == 40
    assert set(jobs_per_name(aws_endpoint).values()) == {1}
    assert {r["job_id"] for r in event.payload["result"]} == set(aws_endpoint.batch.jobs)


async def test_a_lost_job_the_listing_shows_late_is_found_before_submitting_again(aws_endpoint: Endpoint) -> None:
    fail_models(aws_endpoint, {})
    aws_endpoint.faults.update({"list_lag_seconds": 1.5})
    aws_endpoint.lose_answers("SubmitJob", next=3)

    event = await first_event(group_trigger(6), timeout=60)

    assert event.payload["status"] == "success"
    assert aws_endpoint.calls["SubmitJob"] == 6, "found by their names: none sent again"
    assert set(jobs_per_name(aws_endpoint).values()) == {1}


async def test_a_second_job_listed_after_its_model_was_sent_again_is_stopped(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the listing lags more than the lookup waits: the model is submitted again, and once the listing
    # shows the first job too, that one is stopped
    for module in (group_module, submission_module):  # the lookup's wait, the later sweeps
        monkeypatch.setattr(module, "LOOKUP_SECONDS", 0.4)
    aws_endpoint.batch.submitted_status = "RUNNING"
    aws_endpoint.faults.update({"list_lag_seconds": 1.0})
    aws_endpoint.lose_answers("SubmitJob", next=1)

    async def finish_after_the_stop() -> None:
        while not aws_endpoint.batch.terminated:  # noqa: ASYNC110 - the jobs live in the endpoint's thread
            await asyncio.sleep(0.05)
        for job_id, job in list(aws_endpoint.batch.jobs.items()):
            if job["status"] == "RUNNING":
                aws_endpoint.batch.set_job(job_id, status="SUCCEEDED", container={"exitCode": 0})

    event, _ = await asyncio.gather(first_event(group_trigger(2), timeout=60), finish_after_the_stop())

    assert event.payload["status"] == "success"
    (lost,) = aws_endpoint.batch.terminated
    assert jobs_per_name(aws_endpoint)[aws_endpoint.batch.jobs[lost]["jobName"]] == 2
    assert "a SubmitJob answer was lost" in aws_endpoint.batch.jobs[lost]["statusReason"]
    assert lost not in {r["job_id"] for r in event.payload["result"]}


async def test_the_deadline_holds_while_aws_throttles_every_call(aws_endpoint: Endpoint) -> None:
    aws_endpoint.faults.update({"throttle_seconds": 600})
    trigger = group_trigger(3)
    trigger.job["deadline"] = time.time() + 2

    event = await first_event(trigger, timeout=20)

    assert event.payload["status"] == "timeout"
    assert "3 models never submitted" in event.payload["message"]
    assert aws_endpoint.batch.jobs == {}


async def test_the_deadline_holds_while_submitting_and_stops_what_started(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    trigger = group_trigger(6, submit_rate=0.5)  # twelve seconds to submit them all
    trigger.job["deadline"] = time.time() + 5.0  # a loaded machine takes a second or more to create the client

    event = await first_event(trigger, timeout=20)

    assert event.payload["status"] == "timeout"
    started = set(aws_endpoint.batch.jobs)
    assert 0 < len(started) < 6
    assert set(aws_endpoint.batch.terminated) == started
    assert (
        f"stopped {len(started)} running AWS Batch jobs, {6 - len(started)} models never submitted"
        in (event.payload["message"])
    )


async def test_stops_are_tried_again_and_those_that_keep_failing_are_named(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trigger_base, "STOP_ATTEMPTS", 2)
    aws_endpoint.batch.submitted_status = "RUNNING"
    trigger = group_trigger(3)
    trigger.job["deadline"] = time.time() + 1.0
    aws_endpoint.fail_next("TerminateJob", times=1, status=500, code="ServerException")  # one stop, tried again

    first = await first_event(trigger, timeout=30)
    aws_endpoint.fail_next("TerminateJob", times=100, status=500, code="ServerException")
    again = group_trigger(3, try_number=2)  # its own jobs, none of which can be stopped
    again.job["deadline"] = time.time() + 1.0
    second = await first_event(again, timeout=30)

    assert first.payload["status"] == "timeout"
    assert "stopped 3 running" in first.payload["message"]
    assert len(aws_endpoint.batch.terminated) == 3
    assert second.payload["status"] == "timeout"
    assert "could not stop 3, which may still run" in second.payload["message"]
    assert "ServerException" in second.payload["message"]


async def test_a_job_queue_that_cannot_be_listed_fails_the_group_naming_it(aws_endpoint: Endpoint) -> None:
    def no_such_queue(call: Any) -> Any:
        raise AwsError(400, "ClientException", "Job Queue models does not exist")

    aws_endpoint.operations["ListJobs"] = no_such_queue

    event = await first_event(group_trigger(3), timeout=30)

    assert event.payload["status"] == "failed"
    assert event.payload["message"] == (
        "AWS Batch could not list the jobs of job_queue='models': ClientException: Job Queue models does not exist"
    )
    assert aws_endpoint.calls["SubmitJob"] == 0


@pytest.mark.usefixtures("airflow_db")
def test_a_cancel_while_a_submission_is_in_flight_stops_the_job_aws_accepted(aws_endpoint: Endpoint) -> None:
    # The user clears the group task while SubmitJob of its first model is on its way: AWS creates the job
    # and answers late. Nothing more is submitted, and once the answer comes, that job is stopped.
    aws_endpoint.batch.submitted_status = "RUNNING"
    aws_endpoint.faults.update({"hold_submit": {"map_indexes": ["7"], "seconds": 4.0}})
    models = [
        {"index": n, "label": f"m{n}", "request": {"jobQueue": "models", "jobDefinition": "forecast", "tags": tags}}
        for n, tags in enumerate([{"airflow:map_index": "7"}, {}, {}])
    ]
    trigger = (
        f"BatchFleetTrigger(models={models!r}, group={{'prefix': {PREFIX!r}, 'try_number': 1, "
        "'reattachable': [1, 1], 'reattach': True}, job={'aws_conn_id': 'aws_fake', 'poll_interval': 0.05})"
    )
    dag_run = clear_while_submitting(
        trigger,
        submitting="getattr(trigger, '_busy', None)",
        imports="from airflow_ml_batch.triggers.batch import BatchFleetTrigger\n",
    )

    assert task_instance(dag_run, "end_trigger").state == "success"
    (job_id,) = aws_endpoint.batch.jobs
    assert aws_endpoint.batch.jobs[job_id]["jobName"] == f"{PREFIX}0-m0-t1-a1"
    assert aws_endpoint.batch.terminated == [job_id]
    assert aws_endpoint.calls["SubmitJob"] == 1, "nothing more submitted once cancelled"


@pytest.mark.usefixtures("airflow_db")
def test_a_restarted_group_cleared_before_its_turn_stops_the_jobs_its_try_submitted(aws_endpoint: Endpoint) -> None:
    # The triggerer restarted once the group's jobs were submitted; the user clears the group task while its
    # trigger still waits for its turn (it has not listed the jobs yet): it lists them and stops them all.
    aws_endpoint.batch.submitted_status = "RUNNING"

    async def submit_then_restart() -> None:
        running = asyncio.ensure_future(first_event(group_trigger(3), timeout=60))
        while len(aws_endpoint.batch.jobs) < 3:  # noqa: ASYNC110 - the jobs live in the endpoint's thread
            await asyncio.sleep(0.02)
        running.cancel()  # a triggerer restart: no task instance to read, so nothing is stopped
        await asyncio.gather(running, return_exceptions=True)

    asyncio.run(submit_then_restart())
    assert aws_endpoint.batch.terminated == []
    models = [
        {"index": n, "label": f"m{n}", "request": {"jobQueue": "models", "jobDefinition": "forecast", "tags": {}}}
        for n in range(3)
    ]
    dag_run = clear_before_its_turn(
        f"BatchFleetTrigger(models={models!r}, group={{'prefix': {PREFIX!r}, 'try_number': 1, "
        "'reattachable': [1, 1], 'reattach': True}, job={'aws_conn_id': 'aws_fake', 'poll_interval': 0.05})",
    )

    assert task_instance(dag_run, "end_trigger").state == "success"
    assert sorted(aws_endpoint.batch.terminated) == sorted(aws_endpoint.batch.jobs)
    assert aws_endpoint.calls["SubmitJob"] == 3, "nothing submitted once cancelled"


def test_without_a_submit_rate_a_group_submits_at_the_rate_aws_publishes() -> None:
    from airflow_ml_batch.triggers.ecs import EcsFleetTrigger

    ecs = EcsFleetTrigger(**group_trigger(1).serialize()[1])

    assert (group_trigger(1).submit_rate, ecs.submit_rate) == (50.0, 20.0)
    assert group_trigger(1, submit_rate=5.0).submit_rate == 5.0
