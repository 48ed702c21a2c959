"""A per-model trigger that submits its own job (triggers.start.StartsJob), against the scripted Batch endpoint."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent
from helpers import clear_before_its_turn, clear_while_submitting, first_event, task_instance

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS
from airflow_ml_batch.links.batch import BatchJobLink
from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.triggers import start as start_module
from airflow_ml_batch.triggers.batch import BatchJobTrigger

NAME = "forecast-model-3-abcdef12"
IDENTITY = {"airflow:dag_id": "d", "airflow:task_id": "model", "airflow:run_id": "r", "airflow:map_index": "3"}


def start(try_number: int = 1, reattach_tries: tuple[int, int] = (1, 1), **tags: str) -> dict[str, Any]:
    request = {
        "jobName": NAME,
        "jobQueue": "models",
        "jobDefinition": "forecast",
        "tags": {**IDENTITY, "airflow:try_number": str(try_number), **tags},
    }
    return {
        "request": request,
        "try_number": try_number,
        "reattach_tries": list(reattach_tries),
        "identity": IDENTITY,
        "job_id_xcom_key": "batch_job_id",
    }


def submitting(try_number: int = 1, reattach_tries: tuple[int, int] = (1, 1), **kwargs: Any) -> BatchJobTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    return BatchJobTrigger(start=start(try_number, reattach_tries), aws_conn_id="aws_fake", **kwargs)


def jobs_named(endpoint: Endpoint) -> list[str]:
    return [job_id for job_id, job in endpoint.batch.jobs.items() if job["jobName"] == NAME]


def submit_directly(endpoint: Endpoint, try_number: int) -> str:
    """A job that an earlier trigger (or try) submitted: sent to the endpoint as the trigger would."""

    async def submit() -> str:
        trigger = submitting(try_number)
        async with trigger.hook.async_client() as client:
            return await trigger.send_start(client)

    return asyncio.run(submit())


async def cancelled_once_submitted(endpoint: Endpoint) -> None:
    """A trigger cancelled as a triggerer restart cancels it, once AWS has its job."""
    first = asyncio.ensure_future(first_event(submitting()))
    while not endpoint.batch.jobs:  # noqa: ASYNC110 - the jobs live in the endpoint's thread
        await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


def test_the_trigger_submits_the_job_once_and_ends_with_its_id_and_links(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.on_submit = lambda body: {"status": "SUCCEEDED", "container": {"exitCode": 0}}

    event = asyncio.run(first_event(submitting(end_from_trigger=True)))

    assert isinstance(event, TaskSuccessEvent)
    (job_id,) = jobs_named(aws_endpoint)
    assert event.xcoms["return_value"]["job_id"] == job_id
    assert event.xcoms["batch_job_id"] == job_id
    if AIRFLOW_V_3_0_PLUS:  # the rendered URL, which Airflow 3 shows (Airflow 2 renders it from the data)
        assert job_id in event.xcoms[BatchJobLink().xcom_key]
    else:
        assert event.xcoms[BatchJobLink.key]["job_id"] == job_id
    assert aws_endpoint.calls["SubmitJob"] == 1
    assert aws_endpoint.batch.jobs[job_id]["tags"]["airflow:try_number"] == "1"


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_lost_submit_answer_makes_no_second_job(aws_endpoint: Endpoint, mode: str) -> None:
    aws_endpoint.batch.on_submit = lambda body: {"status": "SUCCEEDED", "container": {"exitCode": 0}}
    aws_endpoint.faults.update({"list_lag_seconds": 1.0})  # found only by the lookup's second or third look
    aws_endpoint.lose_answers("SubmitJob", next=1, mode=mode)

    event = asyncio.run(first_event(submitting(), timeout=60))

    assert event.payload["status"] == "success"
    assert jobs_named(aws_endpoint) == [event.payload["job_id"]]
    assert aws_endpoint.calls["SubmitJob"] == 1


def test_a_restarted_trigger_waits_for_the_job_its_try_submitted(aws_endpoint: Endpoint) -> None:
    # the triggerer restarts after the first trigger submitted: the task is still deferred (its state cannot
    # be read here, which leaves the job alone too); the next trigger of the same try finds the job
    aws_endpoint.batch.submitted_status = "RUNNING"

    async def restart() -> Any:
        await cancelled_once_submitted(aws_endpoint)
        (job_id,) = aws_endpoint.batch.jobs
        aws_endpoint.batch.set_job(job_id, status="SUCCEEDED", container={"exitCode": 0})
        return await first_event(submitting())

    event = asyncio.run(restart())

    assert event.payload["status"] == "success"
    assert jobs_named(aws_endpoint) == [event.payload["job_id"]]
    assert aws_endpoint.calls["SubmitJob"] == 1
    assert not aws_endpoint.batch.terminated


@pytest.mark.parametrize("reattach", [True, False])
def test_a_retry_reattaches_to_the_earlier_trys_running_job_or_stops_it(aws_endpoint: Endpoint, reattach: bool) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    earlier = submit_directly(aws_endpoint, try_number=1)
    aws_endpoint.batch.on_submit = lambda body: {"status": "SUCCEEDED", "container": {"exitCode": 0}}

    async def retry() -> Any:
        waiting = asyncio.ensure_future(first_event(submitting(2, (1, 2) if reattach else (1, 1))))
        if reattach:  # the earlier job ends once the trigger has found it running (not after a set time):
            # its ListJobs, then the DescribeJobs of what it listed, on which it chooses to re-attach
            while not aws_endpoint.calls["DescribeJobs"]:  # noqa: ASYNC110 - the calls live in the endpoint's thread
                await asyncio.sleep(0.01)
            aws_endpoint.batch.set_job(earlier, status="SUCCEEDED", container={"exitCode": 0})
        return await waiting

    event = asyncio.run(retry())

    assert event.payload["status"] == "success"
    if reattach:
        assert event.payload["job_id"] == earlier
        assert aws_endpoint.calls["SubmitJob"] == 1, "no second job"
        assert not aws_endpoint.batch.terminated
    else:
        assert event.payload["job_id"] != earlier
        assert aws_endpoint.batch.terminated == [earlier]
        assert aws_endpoint.batch.jobs[event.payload["job_id"]]["tags"]["airflow:try_number"] == "2"


def test_a_refused_request_fails_with_the_aws_message_and_the_values(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.on_submit = lambda body: {"reject": "Job queue models does not exist"}

    event = asyncio.run(first_event(submitting()))

    assert event.payload["status"] == "failed"
    assert "Job queue models does not exist" in event.payload["message"]
    assert "job_queue='models'" in event.payload["message"]
    assert "job_definition='forecast'" in event.payload["message"]
    assert aws_endpoint.calls["SubmitJob"] == 1


def test_a_deadline_that_comes_while_a_lost_answer_is_looked_for_stops_the_job(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "RUNNING"
    # looked for at about 0, 1 and 3 s (the listing shows it from 2 s on); the deadline at 3 s comes first
    # or just after: either way the job is stopped (a loaded machine sends SubmitJob well within 3 s)
    aws_endpoint.faults.update({"list_lag_seconds": 2.0})
    aws_endpoint.lose_answers("SubmitJob", next=1)

    event = asyncio.run(first_event(submitting(deadline=time.time() + 3.0), timeout=60))

    assert event.payload["status"] == "timeout"
    (job_id,) = jobs_named(aws_endpoint)
    assert aws_endpoint.batch.terminated == [job_id]
    assert aws_endpoint.calls["SubmitJob"] == 1


def test_throttling_slows_the_submission_and_never_fails_it(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.on_submit = lambda body: {"status": "SUCCEEDED", "container": {"exitCode": 0}}
    # the next three SubmitJob calls are refused as throttled: counted, not timed (a trigger that starts late on
    # a loaded machine would miss a window of throttling)
    aws_endpoint.fail_next("SubmitJob", times=3)

    event = asyncio.run(first_event(submitting(), timeout=60))

    assert event.payload["status"] == "success"
    assert len(jobs_named(aws_endpoint)) == 1
    assert aws_endpoint.calls["SubmitJob"] == 4  # three refused, then the one that submitted


def test_a_second_job_the_listing_showed_late_is_stopped(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the triggerer restarts just after the first trigger submitted; the listing does not show that job yet,
    # so the next trigger submits another; its later look finds the first and stops it
    monkeypatch.setattr(start_module, "LOOKUP_SECONDS", 0.5)
    aws_endpoint.batch.submitted_status = "RUNNING"
    aws_endpoint.faults.update({"list_lag_seconds": 0.6})

    async def restart() -> Any:
        await cancelled_once_submitted(aws_endpoint)
        second = asyncio.ensure_future(first_event(submitting(), timeout=30))
        while not aws_endpoint.batch.terminated:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for job_id in jobs_named(aws_endpoint):
            if job_id not in aws_endpoint.batch.terminated:
                aws_endpoint.batch.set_job(job_id, status="SUCCEEDED", container={"exitCode": 0})
        return await second

    event = asyncio.run(restart())

    assert event.payload["status"] == "success"
    first_job, second_job = sorted(jobs_named(aws_endpoint), key=lambda j: aws_endpoint.batch.jobs[j]["createdAt"])
    assert event.payload["job_id"] == second_job
    assert aws_endpoint.batch.terminated == [first_job]
    assert Counter(job["jobName"] for job in aws_endpoint.batch.jobs.values())[NAME] == 2


@pytest.mark.usefixtures("airflow_db")
def test_a_cancel_while_the_submission_is_in_flight_stops_the_job_aws_accepted(aws_endpoint: Endpoint) -> None:
    # The user clears the task while its SubmitJob is on its way: AWS creates the job and answers late; once
    # the answer comes, that job is stopped.
    aws_endpoint.batch.submitted_status = "RUNNING"
    aws_endpoint.faults.update({"hold_submit": {"map_indexes": ["3"], "seconds": 3.0}})
    dag_run = clear_while_submitting(
        f"BatchJobTrigger(start={start()!r}, aws_conn_id='aws_fake', poll_interval=0.05)",
        submitting="getattr(trigger, '_sending', None) is not None",
        imports="from airflow_ml_batch.triggers.batch import BatchJobTrigger\n",
    )

    assert task_instance(dag_run, "end_trigger").state == "success"
    (job_id,) = aws_endpoint.batch.jobs
    assert aws_endpoint.batch.terminated == [job_id]
    assert aws_endpoint.calls["SubmitJob"] == 1


@pytest.mark.usefixtures("airflow_db")
def test_a_restarted_trigger_cleared_before_its_turn_stops_the_job_its_try_submitted(aws_endpoint: Endpoint) -> None:
    # The triggerer restarted after the try's job was submitted; the user clears the task while its trigger
    # still waits for its turn to start (it does not know the job yet): one listing finds the job, which stops.
    aws_endpoint.batch.submitted_status = "RUNNING"
    job_id = submit_directly(aws_endpoint, try_number=1)
    dag_run = clear_before_its_turn(
        f"BatchJobTrigger(start={start()!r}, aws_conn_id='aws_fake', poll_interval=0.05)",
    )

    assert task_instance(dag_run, "end_trigger").state == "success"
    assert aws_endpoint.batch.terminated == [job_id]
    assert aws_endpoint.calls["SubmitJob"] == 1, "nothing submitted once cancelled"
