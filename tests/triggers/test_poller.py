"""The shared poller (triggers/poller.py), mostly through Batch triggers against the scripted endpoint.

Clocks, batching, errors, joins and leaves, the registry of pollers, and the warnings a failing poller
sends its watchers.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import first_event

from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.testing.endpoint import AwsError, Call, Endpoint
from airflow_ml_batch.triggers import poller
from airflow_ml_batch.triggers.batch import BatchJobPoller, BatchJobTrigger
from airflow_ml_batch.triggers.poller import Observation, Watch, due_ids, within


def trigger_for(job_id: str, poll_interval: float = 0.05, **kwargs: Any) -> BatchJobTrigger:
    return BatchJobTrigger(
        job_id=job_id, aws_conn_id=kwargs.pop("aws_conn_id", "aws_fake"), poll_interval=poll_interval, **kwargs
    )


def described(fake: Endpoint) -> collections.Counter[str]:
    """How many times the endpoint was asked to describe each job."""
    return collections.Counter(job for op, body in fake.requests if op == "DescribeJobs" for job in body["jobs"])


async def stopped(waiting: Sequence[asyncio.Future[Any]]) -> None:
    for future in waiting:
        future.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


def poller_tasks() -> list[asyncio.Task[Any]]:
    """The running tasks of shared pollers in this event loop."""
    return [task for task in asyncio.all_tasks() if getattr(task.get_coro(), "__qualname__", "") == "SharedPoller._run"]


async def entered(watch: Watch) -> Watch:
    """``watch``, entered (the test leaves it when it chooses, with :func:`left`)."""
    return await watch.__aenter__()


async def left(watch: Watch) -> None:
    await watch.__aexit__(None, None, None)


async def next_of(watch: Watch) -> Observation:
    return await asyncio.wait_for(watch.next(), timeout=30)


class HeldPoller(BatchJobPoller):
    """A DescribeJobs poller whose calls say which ids they describe, then wait for the test's go-ahead."""

    def __init__(self, hook: BatchHook, scope: Any) -> None:
        super().__init__(hook, scope)
        self.asked: asyncio.Queue[list[str]] = asyncio.Queue()
        self.go = asyncio.Event()

    async def request(self, client: Any, ids: list[str]) -> Any:
        self.asked.put_nowait(ids)
        await self.go.wait()
        return await super().request(client, ids)


def test_a_round_takes_the_due_ids_and_those_almost_due_oldest_first() -> None:
    intervals = {"due": 30.0, "almost": 30.0, "later": 30.0, "fast": 5.0, "overdue": 30.0}
    due = {"due": 100.0, "almost": 101.0, "later": 110.0, "fast": 100.5, "overdue": 40.0}

    assert due_ids(due, intervals, now=100.0) == ["overdue", "due", "almost"]  # within 5% of 30 s, not of 5 s
    assert due_ids(due, intervals, now=100.3) == ["overdue", "due", "fast", "almost"]


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
    # two rounds (a second apart), each given up after a few calls: no split down to every id
    assert aws_endpoint.calls["DescribeJobs"] < 10, "the poller backed off and gave up"


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


async def test_a_group_entered_before_its_first_id_keeps_the_poller_when_the_last_other_watch_leaves(
    aws_endpoint: Endpoint,
) -> None:
    first, second, third = (aws_endpoint.batch.add_job("RUNNING") for _ in range(3))
    hook = BatchHook(aws_conn_id="aws_fake")
    single = await entered(BatchJobPoller.watch(hook, None, first, 0.05))
    assert (await next_of(single)).resource == first  # the poller's task runs
    group = await entered(BatchJobPoller.watch_many(hook, None, 0.05))  # no ids yet: joins, starts nothing

    await left(single)  # the last watch with ids leaves while the group still holds the poller
    assert BatchJobPoller.of(hook, None) is group.poller, "still registered: the group holds it"
    group.add(second)
    assert (await next_of(group)).resource == second
    later = await entered(BatchJobPoller.watch(hook, None, third, 0.05))
    assert later.poller is group.poller, "a later trigger shares the group's poller"
    assert (await next_of(later)).resource == third
    assert len(poller_tasks()) == 1
    task = group.poller._task

    await left(group)
    assert BatchJobPoller.of(hook, None) is later.poller
    await left(later)
    assert BatchJobPoller.of(hook, None) is None
    assert task is not None
    assert task.done()
    assert poller_tasks() == []


@pytest.mark.parametrize("order", list(itertools.permutations(("single", "group", "other"))))
async def test_the_poller_lives_while_any_watch_is_entered_whatever_the_order_they_leave(
    aws_endpoint: Endpoint, order: tuple[str, ...]
) -> None:
    hook = BatchHook(aws_conn_id="aws_fake")
    watches = {
        "single": await entered(BatchJobPoller.watch(hook, None, aws_endpoint.batch.add_job("RUNNING"), 0.05)),
        "group": await entered(BatchJobPoller.watch_many(hook, None, 0.05)),
        "other": await entered(BatchJobPoller.watch(hook, None, aws_endpoint.batch.add_job("RUNNING"), 0.05)),
    }
    shared = watches["single"].poller
    task = shared._task

    for name in order:
        await left(watches.pop(name))
        if not watches:
            break
        assert BatchJobPoller.of(hook, None) is shared
        assert poller_tasks() == [task]
        if list(watches) == ["group"]:  # left alone with no ids: its first job still gets described
            job = aws_endpoint.batch.add_job("RUNNING")
            watches["group"].add(job)
            assert (await next_of(watches["group"])).resource == job
            assert poller_tasks() == [task]

    assert BatchJobPoller.of(hook, None) is None
    assert task is not None
    assert task.done()
    assert poller_tasks() == []


async def test_an_id_that_leaves_during_a_call_leaves_no_state_behind(aws_endpoint: Endpoint) -> None:
    staying, leaving = (aws_endpoint.batch.add_job("RUNNING") for _ in range(2))
    hook = BatchHook(aws_conn_id="aws_fake")
    async with HeldPoller.watch(hook, None, staying, 0.05) as keeper:
        held = keeper.poller
        assert isinstance(held, HeldPoller)
        async with HeldPoller.watch(hook, None, leaving, 0.05):
            assert sorted(await held.asked.get()) == sorted([staying, leaving])  # in flight
        held.go.set()

        assert (await next_of(keeper)).resource == staying  # the answer about both was read
        assert set(held._last_state) == set(held._due) == set(held._intervals) == {staying}


async def test_watches_of_one_job_each_get_its_state_and_the_job_keeps_the_shortest_interval_of_those_left(
    aws_endpoint: Endpoint,
) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    hook = BatchHook(aws_conn_id="aws_fake")
    slow = await entered(BatchJobPoller.watch(hook, None, job, 30.0))
    fast = await entered(BatchJobPoller.watch(hook, None, job, 0.2))
    shared = slow.poller
    assert fast.poller is shared
    assert shared._intervals[job] == 0.2
    for watch in (slow, fast):
        description = (await next_of(watch)).description
        assert description is not None
        assert description["status"] == "RUNNING"

    await left(fast)
    assert shared._intervals[job] == 30.0  # the slow watch alone is left
    aws_endpoint.batch.set_job(job, status="SUCCEEDED")
    shared._due[job] = 0.0  # due now: the poller's next look tells the slow watch
    shared._joined.set()
    description = (await next_of(slow)).description
    assert description is not None
    assert description["status"] == "SUCCEEDED"
    await left(slow)
    assert shared._watchers == shared._intervals == shared._due == {}


async def test_a_watch_holds_one_id_or_several_and_forgets_those_removed() -> None:
    watch = Watch(BatchJobPoller, BatchHook(aws_conn_id="aws_fake"), None, 30.0)
    assert watch.ids == frozenset()
    watch.add("a")
    watch.add("a")
    assert watch.ids == {"a"}
    assert watch.watches("a")
    assert not watch.watches("b")
    watch.add("b")
    assert watch.ids == {"a", "b"}
    assert watch.watches("b")


async def test_an_error_that_one_id_causes_fails_its_trigger_only(aws_endpoint: Endpoint) -> None:
    jobs = [aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0}) for _ in range(250)]
    poisoned = "not-a-job-id"
    describe_jobs = aws_endpoint.operations["DescribeJobs"]

    def reject_poisoned(call: Call) -> Any:
        if poisoned in call.body["jobs"]:
            raise AwsError(400, "ClientException", f"Job id {poisoned} is malformed.")
        return describe_jobs(call)

    aws_endpoint.operations["DescribeJobs"] = reject_poisoned
    waited = [*jobs[:120], poisoned, *jobs[120:]]

    events = await asyncio.gather(*(first_event(trigger_for(job), timeout=60) for job in waited))

    by_job = {job: event.payload for job, event in zip(waited, events, strict=True)}
    assert {by_job[job]["status"] for job in jobs} == {"success"}
    assert by_job[poisoned]["status"] == "error"
    assert by_job[poisoned]["message"] == (
        f"Could not describe AWS Batch job {poisoned}: DescribeJobs (batch, connection 'aws_fake', region of "
        f"the connection) fails for {poisoned} alone: ClientException: Job id {poisoned} is malformed."
    )
    # a few rounds of at most 100 ids, and about 2 calls per halving down to the poisoned id
    bisection = 2 * math.ceil(math.log2(BatchJobPoller.batch_size))
    assert aws_endpoint.calls["DescribeJobs"] <= math.ceil(len(waited) / 100) + 2 + bisection


async def test_an_id_rejected_when_no_call_was_answered_waits_out_the_grace_as_a_poller_error(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alone on its poller, a failing id cannot be told from a failing poller: today's grace applies
    monkeypatch.setattr(poller, "PERSISTENT_ERROR_GRACE", 0.5)
    aws_endpoint.fail_next("DescribeJobs", times=10_000, status=400, code="ClientException")

    event = await first_event(trigger_for("not-a-job-id", 0.1), timeout=60)

    assert event.payload["status"] == "error"
    assert "could not describe 1 ids for" in event.payload["message"]
    assert "alone" not in event.payload["message"]
    assert aws_endpoint.calls["DescribeJobs"] <= 3


async def test_steady_throttling_still_describes_every_id_in_turn(aws_endpoint: Endpoint) -> None:
    jobs = [aws_endpoint.batch.add_job("RUNNING") for _ in range(250)]
    aws_endpoint.limit("batch", rate=1.0, burst=1.0)  # a round's first call gets through, the next is throttled
    waiting = [asyncio.ensure_future(first_event(trigger_for(job, 0.1))) for job in jobs]

    async def every_job_described() -> None:
        while len(described(aws_endpoint)) < len(jobs):  # noqa: ASYNC110 - the count lives in another thread
            await asyncio.sleep(0.05)

    try:
        # one 100-id call per round (a second apart): the oldest due first, not the first 100 each time
        await asyncio.wait_for(every_job_described(), timeout=8)
    finally:
        await stopped(waiting)
    assert aws_endpoint.throttled["DescribeJobs"] >= 1  # the limit bit: described in turn despite it


async def test_a_long_failure_streak_warns_each_watch_at_a_limited_rate(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "WARNING_AFTER", 0.5)
    monkeypatch.setattr(poller, "WARNING_EVERY", 2.0)
    jobs = [aws_endpoint.batch.add_job("RUNNING") for _ in range(3)]
    aws_endpoint.faults.throttle_until = time.time() + 5.0
    hook = BatchHook(aws_conn_id="aws_fake")

    async with BatchJobPoller.watch_many(hook, None, 0.05) as watch:
        for job in jobs:
            watch.add(job)
        warnings = []
        while (observation := await next_of(watch)).description is None:
            warnings.append(observation)

    # one per watch (not per id) after 0.5 s of failures, then one per 2 s while the 5-s streak lasts
    assert 2 <= len(warnings) <= 3 < aws_endpoint.throttled["DescribeJobs"]
    for warning in warnings:
        assert warning.resource in jobs
        assert (warning.error, warning.bug, warning.given_up()) == (None, None, None)
        assert warning.warning is not None
        assert warning.warning.startswith("DescribeJobs (batch, connection 'aws_fake', region of the connection)")
        assert "could not describe 3 ids for " in warning.warning
        assert "TooManyRequestsException: Too Many Requests); the waiting tasks go on waiting" in warning.warning


async def test_short_throttling_sends_no_warning(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    aws_endpoint.fail_next("DescribeJobs", times=2)  # 429 TooManyRequestsException

    async with BatchJobPoller.watch(BatchHook(aws_conn_id="aws_fake"), None, job, 0.05) as watch:
        observation = await next_of(watch)

    assert observation.warning is None
    assert observation.description is not None
    assert aws_endpoint.calls["DescribeJobs"] == 3
