"""How a group's trigger submits its models: within the account's rate, once per attempt, never twice.

:class:`SubmitsModels` is the part of :class:`~airflow_ml_batch.triggers.group.RunGroupTrigger` that starts
jobs: a submitter task beside the wait sends the waiting models one after the other (at most
``max_running`` running), each paced by a :class:`SubmitPacer` per connection and region shared by every
group of the triggerer. A call that starts a job is sent once (botocore's retries off): after a lost answer,
the job is looked for by its name before it is sent again (:data:`~airflow_ml_batch.jobs.batch.LOOKUP_SECONDS`),
unless resending is safe (ECS's ``clientToken``); a second job the listing shows late is stopped by later
sweeps. Closing sends nothing more and waits for the calls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from abc import abstractmethod
from collections.abc import Coroutine, Hashable
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_ml_batch.jobs.batch import LOOKUP_SECONDS
from airflow_ml_batch.jobs.errors import answer_lost, backoff, error_text, is_throttling, is_transient
from airflow_ml_batch.jobs.pacing import AdaptiveRate
from airflow_ml_batch.triggers.poller import Observation, Watch, within

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.base import AwsServiceHook
    from airflow_ml_batch.jobs.groups import GroupSettings
    from airflow_ml_batch.triggers.base import JobSettings


#: Capacity failures (ECS's "no capacity right now") a model's start may meet before the model fails.
CAPACITY_TRIES = 10
#: Seconds a cancelled or ended trigger waits for its calls in flight (a SubmitJob, a lookup) to end.
IN_FLIGHT_WAIT = LOOKUP_SECONDS + 90.0


class SubmitPacer:
    """The calls that start (or stop) jobs of every group of one event loop on one connection and region.

    At most ``rate`` calls per second (:class:`~airflow_ml_batch.jobs.pacing.AdaptiveRate`): throttling halves the pace
    (once per burst sent at the old pace), each second without throttling brings back a tenth of ``rate``, so that
    groups submitting together stay under the account's limit even when another client spends some of it.
    Each slot goes to the waiting caller of the lowest turn (a group's map index): the groups listed first,
    which hold the models listed first, submit first, rather than every group a share of the pace.
    """

    _pacers: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, SubmitPacer]]]
    _pacers = weakref.WeakKeyDictionary()

    def __init__(self, rate: float) -> None:
        rate = max(float(rate), 0.1)
        self.pace = AdaptiveRate(rate, rate, floor=min(0.5, rate), quiet_seconds=1.0, step=rate / 10)
        #: the callers waiting: (turn, arrival, the future set when their slot comes), lowest first
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._next_release: asyncio.TimerHandle | None = None

    @property
    def rate(self) -> float:
        """Calls per second now."""
        return self.pace.rate

    @classmethod
    def of(cls, key: Hashable, rate: float) -> SubmitPacer:
        """The pacer of this event loop for ``key`` (connection, region, operation)."""
        pacers = cls._pacers.setdefault(asyncio.get_running_loop(), {})
        pacer = pacers.get(key)
        if pacer is None:
            pacer = pacers[key] = cls(rate)
        return pacer

    async def wait(self, turn: int = -1) -> None:
        """Wait for this caller's slot: each slot goes to the lowest ``turn`` waiting, the first come among equals.

        :param turn: where the caller queues; a group passes its task's map index (:func:`pacing_turn`).
        """
        slot = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (turn, next(self._arrivals), slot))
        self._book_next()
        await slot  # a cancelled caller's future is cancelled too: its slot goes to the next

    def _book_next(self) -> None:
        """Book the next slot at the pace, if someone waits and none is booked."""
        if self._next_release is None and self._waiting:
            loop = asyncio.get_running_loop()
            self._next_release = loop.call_later(self.pace.reserve(), self._release)

    def _release(self) -> None:
        """A slot came: let the first waiting caller go, and book the next slot."""
        self._next_release = None
        while self._waiting:
            slot = heapq.heappop(self._waiting)[2]
            if not slot.done():
                slot.set_result(None)
                break
        self._book_next()

    def throttled(self) -> None:
        """AWS said "too many": go at half the pace."""
        self.pace.throttled()


def pacing_turn(trigger: Any) -> int:
    """Where a trigger's calls queue at a :class:`SubmitPacer`: its task's map index (``-1``: not mapped, or unknown).

    :func:`~airflow_ml_batch.fleet.groups` and :func:`~airflow_ml_batch.fleet.push_groups` keep the order of the
    models: the models listed first (the longest, in a longest-first fleet) start first.
    """
    map_index = getattr(getattr(trigger, "task_instance", None), "map_index", None)
    return -1 if map_index is None else int(map_index)


class RejectedError(Exception):
    """AWS refused to start a model's job, for a reason that will not pass (the message says which)."""


class DeadlineReached(Exception):
    """The task's deadline came while a call was still being tried again."""


class NoCapacity(Exception):
    """A start that failed for want of capacity: nothing was started; tried again, a bounded number of times."""


#: The name of :class:`NoCapacity` in releases before it bounded its tries.
TryAgain = NoCapacity


class SubmitsModels:
    """Submitting a group's models (mixed into :class:`~airflow_ml_batch.triggers.group.RunGroupTrigger`).

    Its state: ``_pending`` (models waiting, next first), ``_resend`` (of those, whose last answer was lost and
    no job found), ``_busy`` (being submitted), ``_looking`` (whose job is looked for), ``_calls`` (the
    submitter and the lookups while they run), ``_closing``/``_closed`` (nothing more is sent), ``_sweeps``
    (when to look for second jobs), ``_error`` (a bug in a submission: the trigger fails with it).
    """

    # what the group's trigger gives
    log: Any
    noun: ClassVar[str]
    resend_is_safe: ClassVar[bool]
    group_settings: GroupSettings
    _by_index: dict[int, dict[str, Any]]
    _jobs: dict[int, str]
    _states: dict[int, str]
    _results: dict[int, dict[str, Any]]
    _attempts: dict[int, int]
    _watch: Watch

    @property
    @abstractmethod
    def hook(self) -> AwsServiceHook: ...

    @property
    @abstractmethod
    def settings(self) -> JobSettings: ...

    @property
    @abstractmethod
    def submit_rate(self) -> float: ...

    @abstractmethod
    async def submit(self, client: Any, model: dict[str, Any], attempt: int, placement: int) -> str: ...

    @abstractmethod
    async def find_submitted(self, client: Any, model: dict[str, Any], attempt: int) -> str | None: ...

    @abstractmethod
    def _wait_for(self, index: int, job_id: str) -> None: ...

    @abstractmethod
    def _entry(
        self, model: dict[str, Any], result: dict[str, Any], succeeded: bool, message: str | None
    ) -> dict[str, Any]: ...

    # -- submitting -------------------------------------------------------------------------------------

    def _start_submission(self, pending: list[int]) -> None:
        self._pending = pending
        self._resend: set[int] = set()
        self._busy: set[int] = set()
        self._looking: set[int] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._closing = False
        self._rejected_in_a_row = 0
        self._sweeps: list[float] = []
        self._error: BaseException | None = None
        self._submit_more = asyncio.Event()
        self._closed = asyncio.Event()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the wait (a submission, a lookup); a bug in it fails the trigger."""
        call = asyncio.ensure_future(self._reporting_errors(work))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _reporting_errors(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as error:
            self._error = self._error or error
        self._wake()

    def _wake(self) -> None:
        """Make the waiting loop look again (a result or a rejection came without an observation)."""
        watch = getattr(self, "_watch", None)
        if watch is not None and not self._closing:
            watch.put(Observation(None))

    async def _submit_pending(self) -> None:
        """Submit waiting models one after the other while ``max_running`` allows, until the trigger closes."""
        while not self._closing:
            if not (self._pending and self._room()) or self._refused_from_the_start():
                self._submit_more.clear()
                await self._submit_more.wait()
                continue
            index = self._pending.pop(0)
            self._busy.add(index)
            try:
                await self._submit(self._by_index[index])
            finally:
                self._busy.discard(index)
            self._wake()

    def _refused_from_the_start(self) -> bool:
        """Whether AWS refused the first five submissions and accepted none: the request itself is wrong."""
        return self._rejected_in_a_row >= 5 and not self._jobs

    def _room(self) -> bool:
        running = sum(1 for index in self._jobs if index not in self._results) + len(self._busy | self._looking)
        cap = self.group_settings.max_running
        return cap is None or running < cap

    def _past_deadline(self) -> bool:
        return self.settings.deadline is not None and time.time() >= self.settings.deadline

    async def _submit(self, model: dict[str, Any]) -> None:
        """Send ``model``'s next attempt until AWS starts it, refuses it or its answer is lost (then look for it).

        Throttling and connections never made only slow it down; capacity failures end it after
        :data:`CAPACITY_TRIES`; nothing is sent once the trigger closes or its deadline has passed.
        """
        index = int(model["index"])
        resending = index in self._resend
        if resending:
            self._resend.discard(index)
            attempt = self._attempts.get(index, 1)  # the same attempt: its job was never found
        else:
            attempt = self._attempts[index] = self._attempts.get(index, 0) + 1
        pacer = SubmitPacer.of((self.hook.client_key, type(self).__name__), self.submit_rate)
        failures = placement = 0
        while True:
            await pacer.wait(pacing_turn(self))
            if self._closing or self._past_deadline():  # this attempt started nothing: never submitted
                self._pending.insert(0, index)
                if resending:
                    self._resend.add(index)
                elif not failures:
                    self._attempts[index] = attempt - 1
                return
            try:
                async with self.hook.async_client(send_once=True) as client:
                    job_id = await self.submit(client, model, attempt, placement + 1)
            except RejectedError as rejected:
                self._rejected_in_a_row += 1
                self._fail_unstarted(
                    model, "REJECTED", f"{self.noun[:-1]} of model {model['label']} was rejected: {rejected}"
                )
                return
            except NoCapacity as no_capacity:
                placement += 1
                if placement >= CAPACITY_TRIES:
                    message = f"no capacity for model {model['label']} after {placement} tries: {no_capacity}"
                    self._fail_unstarted(model, "NO_CAPACITY", message)
                    return
                self.log.warning("Model %s: %s; trying again", model["label"], no_capacity)
                await self._pause(backoff(placement, first=1.0, longest=60.0))
                continue
            except Exception as error:
                if not is_transient(error):
                    raise
                failures += 1
                if answer_lost(error) and not self.resend_is_safe:
                    self.log.warning(
                        "Submitting model %s: %s; looking for its job before sending it again",
                        model["label"],
                        error_text(error),
                    )
                    self._looking.add(index)
                    self._spawn(self._look_for(model, attempt))
                    return
                if is_throttling(error):
                    pacer.throttled()
                self.log.warning("Submitting model %s: %s; trying again", model["label"], error_text(error))
                await self._pause(backoff(failures))
                continue
            self._rejected_in_a_row = 0
            self._started(index, job_id)
            return

    async def _look_for(self, model: dict[str, Any], attempt: int) -> None:
        """Find the job of a submission whose answer was lost, for up to ``LOOKUP_SECONDS`` (the listing lags).

        Found: it is waited for. Not found: the model is submitted again under the same attempt, and the
        group's jobs are listed again later to stop a second job the listing showed late.
        """
        index = int(model["index"])
        deadline, pause = time.monotonic() + LOOKUP_SECONDS, 1.0
        try:
            while True:
                try:
                    async with self.hook.async_client() as client:
                        job_id = await self.find_submitted(client, model, attempt)
                except Exception as error:
                    if not is_transient(error):
                        raise
                    job_id = None
                    self.log.warning("Looking for the job of model %s: %s", model["label"], error_text(error))
                if job_id is not None:
                    self.log.info("Model %s: job %s was submitted (its answer was lost)", model["label"], job_id)
                    self._started(index, job_id)
                    return
                if time.monotonic() + pause > deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 8.0)
        finally:
            self._looking.discard(index)
        if self._closing:
            self.log.warning("Model %s: no job found for attempt %d; submitting no more", model["label"], attempt)
            return
        self.log.warning(
            "Model %s: no job found for attempt %d after %.0fs; submitting it again",
            model["label"],
            attempt,
            LOOKUP_SECONDS,
        )
        self._resend.add(index)
        self._pending.insert(0, index)
        now = time.time()  # the lost job may be listed later still: look twice, the second time much later
        self._sweeps += [now + 2 * LOOKUP_SECONDS, now + 6 * LOOKUP_SECONDS]
        self._submit_more.set()

    def _started(self, index: int, job_id: str) -> None:
        """AWS started ``job_id`` for model ``index``: wait for it (unless the trigger closes: then it is stopped)."""
        self._wait_for(index, job_id)
        self._states[index] = "SUBMITTED"
        self._results.pop(index, None)
        if not self._closing:
            self._watch.add(job_id)

    def _fail_unstarted(self, model: dict[str, Any], status: str, message: str) -> None:
        """End ``model`` with no job: AWS refused it, or had no capacity for it."""
        index = int(model["index"])
        self.log.error("%s", message)
        result = {"job_id": None, "status": status, "status_reason": message}
        self._results[index] = self._entry(model, result, False, message)
        self._states[index] = status

    def _stop_sending(self) -> None:
        """Send no call that starts a job from now on; pauses between calls end."""
        self._closing = True
        self._closed.set()
        self._submit_more.set()

    async def _close(self) -> None:
        """Send nothing more; wait for the calls in flight (bounded), so that every job they started is known."""
        self._stop_sending()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=IN_FLIGHT_WAIT)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` between two calls, or less if the trigger closes meanwhile."""
        await within(self._closed.wait(), seconds)
