"""The shared poller's core, through Batch triggers against the scripted endpoint: clocks, errors, joins, leaves."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest
from helpers import first_event

from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.triggers import base, poller
from airflow_ml_batch.triggers.base import job_abandoned
from airflow_ml_batch.triggers.batch import BatchJobPoller, BatchJobTrigger
from airflow_ml_batch.triggers.poller import Observation, Watch, due_ids, within


def trigger_for(job_id: str, poll_interval: float = 0.05, **kwargs: Any) -> BatchJobTrigger:
    return BatchJobTrigger(
        job_id=job_id, aws_conn_id=kwargs.pop("aws_conn_id", "aws_fake"), poll_interval=poll_interval, **kwargs
    )


def described(fake: Endpoint) -> collections.Counter[str]:
    """How many times the endpoint was asked to describe each job."""
    return collections.Counter(job for op, body in fake.requests if op == "DescribeJobs" for job in body["jobs"])


async def stopped(waiting: list[asyncio.Future[Any]]) -> None:
    for future in waiting:
        future.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


def test_a_round_takes_the_due_ids_and_those_almost_due() -> None:
    intervals = {"due": 30.0, "almost": 30.0, "later": 30.0, "fast": 5.0}
    due = {"due": 100.0, "almost": 101.0, "later": 110.0, "fast": 100.5}

    assert due_ids(due, intervals, now=100.0) == ["due", "almost"]  # within 5% of 30 s, not of 5 s
    assert due_ids(due, intervals, now=100.3) == ["due", "almost", "fast"]


@pytest.mark.parametrize(
    ("state", "abandoned"),
    [("deferred", False), ("<unknown>", False), (None, True), ("scheduled", True), ("success", True), ("failed", True)],
)
def test_which_task_states_leave_a_cancelled_triggers_job_to_nobody(state: str | None, abandoned: bool) -> None:
    assert job_abandoned(state) is abandoned
    assert job_abandoned(state, try_number=2, own_try=2) is abandoned, "the same try: the state decides"


@pytest.mark.parametrize(
    ("state", "try_number", "own_try", "abandoned"),
    [
        ("deferred", 3, 2, True),  # the next try deferred again before the cancelled trigger read the state
        ("running", 3, 2, True),
        ("deferred", None, 2, False),  # Airflow 3's triggerer reads no try number: the state decides
        ("deferred", 3, None, False),
        ("<unknown>", 3, 2, False),  # a doubt never terminates
    ],
)
def test_a_task_on_another_try_than_the_jobs_abandons_it_whatever_its_state(
    state: str, try_number: int | None, own_try: int | None, abandoned: bool
) -> None:
    assert job_abandoned(state, try_number, own_try) is abandoned


async def test_a_trigger_cancelled_as_an_update_arrives_is_cancelled() -> None:
    # Python 3.11's asyncio.wait_for returns the update here instead (cpython#86296): the trigger that the
    # triggerer cancelled would go on running, and a test awaiting it would hang.
    updates: asyncio.Queue[str] = asyncio.Queue()
    waiting = asyncio.ensure_future(within(updates.get(), 60))
    await asyncio.sleep(0.01)
    updates.put_nowait("an update")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_waiting_within_a_time_gives_the_result_or_none_and_keeps_later_updates() -> None:
    updates: asyncio.Queue[str] = asyncio.Queue()
    assert await within(updates.get(), 0.05) is None
    updates.put_nowait("first")
    assert await within(updates.get(), 0.05) == "first"
    updates.put_nowait("second")
    assert await within(updates.get(), 0) == "second"  # ready: a zero timeout still takes it
    updates.put_nowait("third")
    assert await within(updates.get(), None) == "third"  # no timeout: a plain await


async def test_a_watch_hands_over_observations_in_order_and_a_cancelled_wait_takes_none() -> None:
    watch = Watch(BatchJobPoller, BatchHook(aws_conn_id="aws_fake"), None, 30.0)
    first, second, third = (Observation({"status": status}) for status in ("RUNNABLE", "RUNNING", "SUCCEEDED"))
    waiting = asyncio.ensure_future(watch.next())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while nothing came
    with pytest.raises(asyncio.CancelledError):
        await waiting

    waiting = asyncio.ensure_future(watch.next())
    await asyncio.sleep(0)
    watch.put(first)
    waiting.cancel()  # cancelled as an observation arrives: the observation waits for the next reader
    with pytest.raises(asyncio.CancelledError):
        await waiting
    watch.put(second)
    watch.put(third)

    assert [await watch.next() for _ in range(3)] == [first, second, third]
    assert await within(watch.next(), 0.01) is None
    watch.put(first)
    assert await within(watch.next(), 0.01) is first


async def test_each_job_is_described_at_its_own_triggers_interval(aws_endpoint: Endpoint) -> None:
    slow = [aws_endpoint.batch.add_job("RUNNING") for _ in range(150)]
    fast = [aws_endpoint.batch.add_job("RUNNING") for _ in range(5)]
    waiting = [asyncio.ensure_future(first_event(trigger_for(job, 2.0))) for job in slow]
    waiting += [asyncio.ensure_future(first_event(trigger_for(job, 0.2))) for job in fast]

    while aws_endpoint.calls["DescribeJobs"] < 1:  # noqa: ASYNC110 - the count lives in another thread
        await asyncio.sleep(0.01)
    await asyncio.sleep(3.0)
    await stopped(waiting)

    counts = described(aws_endpoint)
    assert max(counts[job] for job in slow) <= 3, "a 2-s job is described at most 3 times in 3 s"
    assert min(counts[job] for job in fast) >= 8, "a 0.2-s job about every 0.2 s"
    sizes = [len(body["jobs"]) for op, body in aws_endpoint.requests if op == "DescribeJobs"]
    assert max(sizes) <= 100
    assert sum(1 for size in sizes if size > 5) <= 8, "the slow jobs are not described with every fast round"


async def test_a_watcher_joining_mid_round_is_described_soon_not_at_the_others_pace(aws_endpoint: Endpoint) -> None:
    running = [aws_endpoint.batch.add_job("RUNNING") for _ in range(250)]
    waiting = [asyncio.ensure_future(first_event(trigger_for(job, 30.0))) for job in running]
    while aws_endpoint.calls["DescribeJobs"] < 1:  # noqa: ASYNC110 - the count lives in another thread
        await asyncio.sleep(0.005)
    done = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0})

    joined = time.monotonic()
    event = await first_event(trigger_for(done, 30.0), timeout=5)
    await stopped(waiting)

    assert event.payload["status"] == "success"
    assert described(aws_endpoint)[done] == 1
    # right after the round in progress, or in a round of its own within _JOIN_WINDOW: not in 30 s
    assert time.monotonic() - joined < poller._JOIN_WINDOW + 2.0


async def test_watchers_arriving_a_few_per_second_share_their_first_describes(aws_endpoint: Endpoint) -> None:
    # Airflow's triggerer hands a poller its triggers a few dozen per second: each still learns its job's
    # state within the join window, and those arriving within one window share one call.
    jobs = [aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0}) for _ in range(250)]
    waited: list[float] = []

    async def wait(job: str) -> Any:
        joined = time.monotonic()
        event = await first_event(trigger_for(job, 30.0), timeout=30)
        waited.append(time.monotonic() - joined)
        return event

    waiting = []
    for start in range(0, len(jobs), 10):  # 50 per second for 5 s
        waiting += [asyncio.ensure_future(wait(job)) for job in jobs[start : start + 10]]
        await asyncio.sleep(0.2)
    events = await asyncio.gather(*waiting)

    assert {event.payload["status"] for event in events} == {"success"}
    assert max(waited) < poller._JOIN_WINDOW + 2.0, "each within the window (and a loaded machine's slack)"
    assert aws_endpoint.calls["DescribeJobs"] <= 8, "about one call per window, not one per arrival"


async def test_a_persistent_error_fails_every_waiting_task_at_once_with_the_aws_message(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "PERSISTENT_ERROR_GRACE", 0.5)
    jobs = [aws_endpoint.batch.add_job("RUNNING") for _ in range(250)]
    aws_endpoint.fail_next("DescribeJobs", times=10_000, status=400, code="AccessDeniedException")
    ended: dict[str, float] = {}

    async def wait(job: str) -> Any:
        event = await first_event(trigger_for(job, 0.1), timeout=60)
        ended[job] = time.monotonic()
        return event

    events = await asyncio.gather(*(wait(job) for job in jobs))

    assert {event.payload["status"] for event in events} == {"error"}
    message = events[-1].payload["message"]
    assert message.startswith(
        f"Could not describe AWS Batch job {jobs[-1]}: DescribeJobs (batch, connection 'aws_fake'"
    )
    assert "AccessDeniedException: AccessDeniedException (injected)" in message
    assert max(ended.values()) - min(ended.values()) < 0.5, "all at once, not one chunk after another"
    assert aws_endpoint.calls["DescribeJobs"] < 10, "the poller backed off and gave up, it did not retry each chunk"


async def test_transient_errors_never_start_the_error_clock(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "PERSISTENT_ERROR_GRACE", 0.0)  # any error that counts fails at once
    job = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0})
    aws_endpoint.fail_next("DescribeJobs", times=1, status=429, code="TooManyRequestsException")
    aws_endpoint.fail_next("DescribeJobs", times=1, status=503, code="ServiceUnavailableException")
    aws_endpoint.fail_next("DescribeJobs", times=1, status=400, code="ExpiredTokenException")

    event = await first_event(trigger_for(job), timeout=60)

    assert event.payload["status"] == "success"
    assert aws_endpoint.calls["DescribeJobs"] == 4


async def test_an_answer_that_cannot_be_read_fails_only_its_trigger_with_the_traceback(aws_endpoint: Endpoint) -> None:
    broken = aws_endpoint.batch.add_job("RUNNING")
    del aws_endpoint.batch.jobs[broken]["status"]  # an answer our parsing does not expect
    fine = aws_endpoint.batch.add_job("RUNNING")
    other = asyncio.ensure_future(first_event(trigger_for(fine)))

    with pytest.raises(KeyError, match="status"):
        await first_event(trigger_for(broken))
    aws_endpoint.batch.set_job(fine, status="SUCCEEDED", container={"exitCode": 0})

    assert (await other).payload["status"] == "success"


async def test_a_client_that_cannot_be_created_ends_with_its_reason(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "PERSISTENT_ERROR_GRACE", 0.5)

    events = await asyncio.gather(
        *(first_event(trigger_for(f"job-{n}", aws_conn_id="no_such_connection"), timeout=60) for n in range(3))
    )

    assert {event.payload["status"] for event in events} == {"error"}
    message = events[0].payload["message"]
    assert "connection 'no_such_connection'" in message
    assert "could not create the client" in message
    # the Amazon provider falls back to botocore's defaults for a connection it cannot find: no region
    assert message.endswith("last error: NoRegionError: You must specify a region.")
    assert aws_endpoint.calls["DescribeJobs"] == 0


async def test_cancelling_while_a_describe_is_in_flight_ends_the_trigger_and_the_poller(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    trigger = trigger_for(job)
    with aws_endpoint.lock:  # the endpoint answers nothing until released: the first describe hangs
        waiting = asyncio.ensure_future(first_event(trigger))
        await asyncio.sleep(1.0)
        waiting.cancel()
        await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), timeout=5)
        assert BatchJobPoller.of(trigger.hook, None) is None, "the last watcher's leave stops the poller"
    assert waiting.cancelled()
    assert aws_endpoint.calls["TerminateJob"] == 0, "a cancel whose task state is unknown leaves the job running"
