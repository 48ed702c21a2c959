"""The shared poller: every waiting trigger of a triggerer process described in a few batched calls.

:class:`SharedPoller` turns thousands of waiting triggers into a few batched describe calls: each trigger
registers the id it waits for with its own ``poll_interval`` through a :class:`Watch`; one task per (event
loop, connection, region, scope) describes the ids that are due, up to 100 per call, and wakes a trigger
only when its resource changes state (an :class:`Observation`). Transient errors (throttling, 5xx, network,
expired credentials) slow the poller down and never fail a trigger; any other error that lasts
:data:`PERSISTENT_ERROR_GRACE` fails every trigger of the poller at once, with the AWS message. An error
that one id causes (an ECS task of another cluster, a malformed id) fails that id's trigger only: the
call is split until the id is found. While the poller keeps failing, each watcher gets a warning for its
task's log (:data:`WARNING_AFTER`, :data:`WARNING_EVERY`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.jobs.errors import error_text, is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long errors that will not pass by themselves (access denied, say) may last before the waiting
#: tasks of that (connection, region, scope) fail; any answered call starts the clock again.
PERSISTENT_ERROR_GRACE = 600.0
_MIN_CALL_GAP, _MAX_CALL_GAP = 0.02, 2.0
_MAX_BACKOFF = 300.0
#: A round also describes ids due within this fraction of their interval, so that ids keep sharing calls.
_EARLY = 0.05
#: A new watcher's first describe comes within this many seconds (or its ``poll_interval``, if shorter):
#: with the poller's next round if that comes by then, else in a round of its own that the watchers
#: joining after it, within the same window, share.
_JOIN_WINDOW = 1.0
#: A failure streak (no describe answered) this many seconds long sends each watcher a warning (an
#: :class:`Observation` with ``warning``) for its task's log; short throttling blips send none.
WARNING_AFTER = 60.0
#: While the streak lasts, a watcher gets at most one warning per this many seconds.
WARNING_EVERY = 600.0
#: Calls a round may see fail, with none answered, before it takes the error for the poller's own (access
#: denied) rather than one id's; each failed round in a row allows two more, up to a whole bisection.
_UNANSWERED_FAILURES = 3


def within(awaitable: Awaitable[T], timeout: float | None) -> Awaitable[T | None]:
    """``await awaitable`` for at most ``timeout`` seconds (``None``: no limit); ``None`` if it did not end by then.

    ``asyncio.wait_for`` on Python 3.11 and older returns the result instead when a cancellation arrives
    together with it (python/cpython#86296): a trigger that the triggerer cancelled just as an observation
    came in would run on, and its clean-up (stop the job of a cleared task) would never run. Here the
    cancellation always goes through. With no ``timeout`` it is ``awaitable`` itself: no task nor coroutine
    of its own.
    """
    return awaitable if timeout is None else _within(awaitable, timeout)


async def _within(awaitable: Awaitable[T], timeout: float) -> T | None:
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait((task,), timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None


@dataclass(frozen=True)
class Observation:
    """What the poller saw of one watched resource: its description, or ``None`` when not returned.

    ``error``: the poller gave up (an error outlasted the grace, or AWS rejects this id alone).
    ``bug``: handling the answer raised (a bug, or an answer of a shape nobody expected); the trigger
    fails with it. ``warning``: no news of the resource, only that the poller keeps failing; the watcher
    logs it and waits on (``description`` is ``None`` then, and means nothing).
    """

    description: dict[str, Any] | None
    error: str | None = None
    bug: BaseException | None = None
    #: the id observed (set by the poller)
    resource: str | None = None
    #: the poller has been failing for a while and still tries: a message for the task's log
    warning: str | None = None

    def given_up(self) -> str | None:
        """Why the poller gave up on this id (``error``), if it did; raises ``bug``, with its traceback, if set."""
        if self.bug is not None:
            raise self.bug
        return self.error


def due_ids(due: dict[str, float], intervals: dict[str, float], now: float) -> list[str]:
    """The ids to describe at ``now``: those due, and those due within ``_EARLY`` (5 %) of their interval.

    Oldest due first, so that rounds cut short (steady throttling) still reach every id in turn.
    """
    return sorted(
        (resource for resource, at in due.items() if at - _EARLY * intervals[resource] <= now), key=due.__getitem__
    )


class SharedPoller(ABC):
    """Describes every watched resource of one (connection, region, scope) in batches, each at its own pace.

    Each watched id is due again ``poll_interval`` (the shortest of its own watchers', jittered) after it
    was described. Subclasses set :attr:`batch_size` and implement :meth:`request`, :meth:`found` and
    :meth:`state_of`.
    """

    batch_size: ClassVar[int] = 100
    #: the describe call, for messages ("DescribeJobs")
    operation: ClassVar[str] = "describe"
    _pollers: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, SharedPoller]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._pollers = weakref.WeakKeyDictionary()

    def __init__(self, hook: AwsServiceHook, scope: Hashable) -> None:
        self.hook = hook
        self.scope = scope
        self.calls = 0
        self.rounds = 0
        #: each id's watches: the one watch itself (most ids have one), else a tuple of them; no container of
        #: its own per id, as tens of thousands of them are what the garbage collector walks
        self._watchers: dict[str, Watch | tuple[Watch, ...]] = {}
        self._intervals: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self._last_state: dict[str, str | None] = {}
        self._call_gap = _MIN_CALL_GAP
        self._failures = 0
        self._failing_since: float | None = None
        #: when the current failure streak (any error, no describe answered since) began
        self._streak_since: float | None = None
        #: the entered watches: the poller is registered, and its task runs, while there is one
        self._holders: set[Watch] = set()
        self._joined = asyncio.Event()
        #: when the next round starts, as far as a joining id can tell (see :meth:`_first_describe_at`)
        self._next_round_at = float("inf")
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, hook: AwsServiceHook, scope: Hashable) -> SharedPoller | None:
        """The running poller of this event loop for ``hook``'s connection and region and ``scope``, if any."""
        return cls._pollers.get(asyncio.get_running_loop(), {}).get((hook.client_key, scope))

    @classmethod
    def watch(cls, hook: AwsServiceHook, scope: Hashable, resource_id: str, poll_interval: float) -> Watch:
        """A :class:`Watch` of ``resource_id`` (``async with``): an :class:`Observation` each time its state changes."""
        watch = Watch(cls, hook, scope, poll_interval)
        watch.add(resource_id)
        return watch

    @classmethod
    def watch_many(cls, hook: AwsServiceHook, scope: Hashable, poll_interval: float) -> Watch:
        """A :class:`Watch` (``async with``) of any number of ids, all reporting to one inbox (a group's jobs)."""
        return Watch(cls, hook, scope, poll_interval)

    @abstractmethod
    async def request(self, client: Any, ids: list[str]) -> Any:
        """Describe ``ids`` (at most :attr:`batch_size`) in one call; return the answer as it came."""

    @abstractmethod
    def found(self, answer: Any) -> dict[str, dict[str, Any]]:
        """The descriptions in an answer of :meth:`request`, by id (missing ids are left out)."""

    @staticmethod
    @abstractmethod
    def state_of(description: dict[str, Any]) -> str:
        """The part of a description whose change wakes the watcher (a status)."""

    async def describe(self, client: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        """:meth:`request` then :meth:`found`: the found descriptions of ``ids``, by id."""
        return self.found(await self.request(client, ids))

    # -- the watchers' clocks ---------------------------------------------------------------------------

    def _watches_of(self, resource: str) -> tuple[Watch, ...]:
        """The watches of ``resource`` (none if it is not watched)."""
        held = self._watchers.get(resource, ())
        return (held,) if isinstance(held, Watch) else held

    def _join(self, resource: str, watch: Watch) -> None:
        held = self._watchers.get(resource)
        self._watchers[resource] = watch if held is None else (*self._watches_of(resource), watch)
        self._intervals[resource] = min(watcher.interval for watcher in self._watches_of(resource))
        self._last_state.pop(resource, None)  # the next describe tells the new watcher the current state
        self._due[resource] = min(self._due.get(resource, float("inf")), self._first_describe_at(resource))
        self._joined.set()

    def _first_describe_at(self, resource: str) -> float:
        """When a joining id is first described: within :data:`_JOIN_WINDOW` (or its interval, if shorter).

        With the poller's next round if that round comes by then, else one window from now (also while a
        round is in progress); ids that join during that window ride that round, so triggers starting
        together (or arriving a few dozen per second, as Airflow's triggerer hands them over) share
        their first describe calls.
        """
        now = time.monotonic()
        window = min(_JOIN_WINDOW, self._intervals[resource])
        if self._next_round_at <= now + window:
            return max(self._next_round_at, now)
        self._next_round_at = now + window
        return self._next_round_at

    def _leave(self, resource: str, watch: Watch) -> None:
        watchers = tuple(watcher for watcher in self._watches_of(resource) if watcher is not watch)
        if watchers:
            self._watchers[resource] = watchers[0] if len(watchers) == 1 else watchers
            self._intervals[resource] = min(watcher.interval for watcher in watchers)
            return
        for table in (self._watchers, self._intervals, self._due, self._last_state):
            table.pop(resource, None)

    def _interval(self) -> float:
        """The shortest interval of any watcher: the base of the backoff."""
        return min(self._intervals.values(), default=1.0)

    async def _until_due(self) -> None:
        """Sleep until the earliest id is due; a joining watcher may make that sooner.

        A join only wakes the poller to look again: the round itself waits until an id is due, so that
        the ids joining meanwhile ride it (:meth:`_first_describe_at`).
        """
        while True:
            self._joined.clear()
            self._next_round_at = min(self._due.values(), default=float("inf"))
            wait = self._next_round_at - time.monotonic()
            if wait <= 0:
                return
            if not await within(self._joined.wait(), None if wait == float("inf") else wait):
                return

    # -- polling ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Poll until cancelled (the last watch leaves); a new client after a failure to create one."""
        while True:
            try:
                async with self.hook.async_client() as client:
                    await self._poll(client)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the client could not be created: on the same clock as a describe
                self._failed(error, "create the client")
                await asyncio.sleep(self._backoff())

    async def _poll(self, client: Any) -> None:
        """Describe each id when due, with ``client``, until cancelled (while no id is watched, sleep)."""
        while True:
            try:
                await self._until_due()
                if not await self._poll_round(client):
                    await asyncio.sleep(self._backoff())
            except Exception as bug:  # a bug of the poller itself: its watchers fail with it, never wait forever
                log.exception("%s: the poller failed", self._where())
                for resource in list(self._watchers):
                    for watch in self._watches_of(resource):
                        watch.put(Observation(None, bug=bug))
                self._due.clear()

    async def _poll_round(self, client: Any) -> bool:
        """Describe the due ids, :attr:`batch_size` per call; ``False`` when the round failed (back off).

        A call of several ids that fails with an error that will not pass by itself is split in halves,
        described later in the same round, down to single ids: an id whose own call fails is rejected
        (its watchers fail) if some call of the round was answered, which tells that the error is the
        id's and not the poller's. A round with no call answered fails as a whole (:meth:`_failed`), and
        stops splitting after a few failed calls (:meth:`_unanswered_failures`). Each id that causes an
        error costs about ``2 * log2(batch_size)`` more calls.
        """
        started = time.monotonic()
        self._next_round_at = float("inf")  # ids joining during this round open a window of their own
        ids = due_ids(self._due, self._intervals, started)
        if not ids:
            return True
        self.rounds += 1
        jitter = random.uniform(0.95, 1.05)  # one factor per round: ids described together stay together
        chunks = (ids[start : start + self.batch_size] for start in range(0, len(ids), self.batch_size))
        calls = _RoundCalls(collections.deque(chunks), first=self.calls)
        while calls.waiting:
            chunk = [resource for resource in calls.waiting.popleft() if resource in self._watchers]
            if not chunk:
                continue
            if self.calls > calls.first:
                await asyncio.sleep(self._call_gap)
            try:
                self.calls += 1
                answer = await self.request(client, chunk)
            except Exception as error:
                if self._split(calls, chunk, error):
                    continue
                break
            calls.answered = True
            self._answered()
            self._read(chunk, answer, started, jitter)
        if calls.answered:
            for resource, cause in calls.rejected:
                self._reject(resource, cause)
        if calls.error is not None and (is_transient(calls.error) or not calls.answered):
            self._failed(calls.error, f"describe {len(ids)} ids")
            return False
        return True

    def _split(self, calls: _RoundCalls, chunk: list[str], error: Exception) -> bool:
        """After a failed call of ``chunk``: describe its halves later in the round, or note its one id as
        rejected; ``False`` when the round stops there (a transient error, or too many failures unanswered)."""
        calls.error = error
        if is_transient(error):
            return False
        calls.failures += 1
        if not calls.answered and calls.failures >= self._unanswered_failures():
            return False
        if len(chunk) == 1:
            calls.rejected.append((chunk[0], error))
        else:
            calls.waiting.extend((chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]))
        return True

    def _unanswered_failures(self) -> int:
        """How many calls of a round may fail, none answered, before the error counts as the poller's."""
        whole_bisection = 2 * (self.batch_size - 1).bit_length() + 1
        return min(_UNANSWERED_FAILURES + 2 * self._failures, whole_bisection)

    def _read(self, chunk: list[str], answer: Any, started: float, jitter: float) -> None:
        """Set the next describe of the ids of an answered call, and deliver what the answer says of each."""
        for resource in chunk:
            if resource in self._due:
                self._due[resource] = started + self._intervals[resource] * jitter
        try:
            found = self.found(answer)
        except Exception as bug:
            log.exception("%s: could not read the %s answer", self._where(), self.operation)
            for resource in chunk:
                self._deliver(resource, Observation(None, bug=bug), force=True)
            return
        for resource in chunk:
            self._deliver(resource, Observation(found.get(resource)))

    def _reject(self, resource: str, error: Exception) -> None:
        """Fail the watchers of ``resource``: a call of it alone failed while other calls were answered."""
        message = f"{self._where()} fails for {resource} alone: {error_text(error)}"
        log.warning("%s; its waiting tasks fail", message)
        self._deliver(resource, Observation(None, error=message), force=True)

    def _answered(self) -> None:
        self._failures = 0
        self._failing_since = None
        self._streak_since = None
        self._call_gap = max(self._call_gap * 0.8, _MIN_CALL_GAP)

    def _failed(self, error: Exception, what: str) -> None:
        """Count a failed attempt; warn the watchers of a long streak; once non-transient errors outlast
        the grace, fail every watcher with it."""
        self._failures += 1
        self._call_gap = min(self._call_gap * 2, _MAX_CALL_GAP)
        transient = is_transient(error)
        log.warning(
            "%s: could not %s (%s, attempt %d%s); backing off",
            self._where(),
            what,
            error_text(error),
            self._failures,
            "" if transient else ", will not pass by itself",
        )
        now = time.monotonic()
        if self._streak_since is None:
            self._streak_since = now
        outlook = "the waiting tasks go on waiting"
        if not transient:
            if self._failing_since is None:
                self._failing_since = now
            failing = now - self._failing_since
            if failing >= PERSISTENT_ERROR_GRACE:
                message = f"{self._where()}: could not {what} for {failing:.0f}s; last error: {error_text(error)}"
                for resource in list(self._watchers):
                    self._deliver(resource, Observation(None, error=message), force=True)
                return
            left = PERSISTENT_ERROR_GRACE - failing
            outlook = f"it will not pass by itself: the waiting tasks fail if it lasts {left:.0f}s more"
        streak = now - self._streak_since
        if streak >= WARNING_AFTER:
            message = f"{self._where()}: could not {what} for {streak:.0f}s ({error_text(error)}); {outlook}"
            self._warn(message, now, self._streak_since)

    def _warn(self, message: str, now: float, streak_since: float) -> None:
        """Send ``message`` to each watch with ids, unless it had one of this streak within :data:`WARNING_EVERY`.

        One per watch (a group's too), about one of its ids, whatever their number.
        """
        for watch in self._holders:
            if watch.ids and watch.may_warn(now, streak_since):
                watch.put(Observation(None, warning=message, resource=min(watch.ids)))

    def _where(self) -> str:
        """The service, connection, region and scope of this poller, for messages."""
        conn_id, region, service, *_ = self.hook.client_key
        where = f"{self.operation} ({service}, connection {conn_id!r}, region {region or 'of the connection'}"
        return where + (f", {self.scope_name} {self.scope!r})" if self.scope is not None else ")")

    #: what ``scope`` is, for messages ("cluster")
    scope_name: ClassVar[str] = "scope"

    def _backoff(self) -> float:
        """Exponential backoff with full jitter, never shorter than a second."""
        ceiling = min(_MAX_BACKOFF, self._interval() * 2 ** min(self._failures, 8))
        return max(1.0, random.uniform(0, ceiling))

    def _deliver(self, resource: str, observation: Observation, force: bool = False) -> None:
        if resource not in self._watchers:  # it left during the call: nobody to tell, nothing to keep
            return
        if observation.description is not None:
            try:
                state: str | None = self.state_of(observation.description)
            except Exception as bug:
                log.exception("%s: could not read the state of %s", self._where(), resource)
                observation, state, force = Observation(None, bug=bug), None, True
        else:
            state = None
        if not force and resource in self._last_state and self._last_state[resource] == state:
            return
        self._last_state[resource] = state
        observation = replace(observation, resource=resource)
        for watch in self._watches_of(resource):
            watch.put(observation)
        if observation.error is not None or observation.bug is not None:
            self._due.pop(resource, None)  # its watchers end; nothing to describe until another joins


@dataclass
class _RoundCalls:
    """The calls of one poll round: those still to make, and what the ones made so far gave."""

    #: the ids of each call still to make
    waiting: collections.deque[list[str]]
    #: the poller's call count when the round began
    first: int = 0
    answered: bool = False
    #: calls that failed with an error that will not pass by itself
    failures: int = 0
    #: the last error
    error: Exception | None = None
    #: ids whose call of their own failed, with the error
    rejected: list[tuple[str, Exception]] = field(default_factory=list)


class Watch:
    """One trigger's watch of ids on the shared poller (:meth:`SharedPoller.watch`, :meth:`SharedPoller.watch_many`).

    ``async with`` it joins the poller of its (event loop, connection, region, scope), creating it if
    needed, and leaves it on exit: the poller stays registered while any watch is entered (even one
    with no ids yet), and the last watch to leave stops it. Every change of state of any
    of its ids arrives, in order, as an :class:`Observation` whose ``resource`` is the id: ``await``
    :meth:`next` (one reader). A waiting trigger's watch is one object while it waits (no queue, no set of
    its one id, no generator; and a future while it is awaited), as tens of thousands of them are what the
    garbage collector walks.
    """

    __slots__ = ("_ids", "_inbox", "_joining", "_waiter", "_warned_at", "interval", "poller")

    poller: SharedPoller

    def __init__(
        self, poller_class: type[SharedPoller], hook: AwsServiceHook, scope: Hashable, poll_interval: float
    ) -> None:
        self.interval = max(float(poll_interval), 0.1)
        #: the ids watched: none, one (most watches), or a set of several (a group's)
        self._ids: str | set[str] | None = None
        self._joining: tuple[type[SharedPoller], AwsServiceHook, Hashable] | None = (poller_class, hook, scope)
        self._inbox: collections.deque[Observation] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._warned_at: float | None = None

    @property
    def ids(self) -> frozenset[str]:
        """The ids this watch watches (a copy)."""
        held = self._ids
        if held is None:
            return frozenset()
        return frozenset((held,)) if isinstance(held, str) else frozenset(held)

    def watches(self, resource: str) -> bool:
        """Whether this watch watches ``resource``."""
        held = self._ids
        return held == resource if isinstance(held, str) else held is not None and resource in held

    async def __aenter__(self) -> Watch:
        assert self._joining is not None, "a Watch is entered once"
        (poller_class, hook, scope), self._joining = self._joining, None
        pollers = poller_class._pollers.setdefault(asyncio.get_running_loop(), {})
        key = (hook.client_key, scope)
        poller = pollers.get(key)
        if poller is None:
            poller = pollers[key] = poller_class(hook, scope)
        self.poller = poller
        poller._holders.add(self)
        for resource in self.ids:
            poller._join(resource, self)
        self._start_poller()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for resource in list(self.ids):
            self.remove(resource)
        poller = self.poller
        poller._holders.discard(self)
        if poller._holders:
            return
        pollers = poller._pollers.get(asyncio.get_running_loop(), {})
        key = (poller.hook.client_key, poller.scope)
        if pollers.get(key) is poller:
            del pollers[key]
        if poller._task is not None:
            poller._task.cancel()
            await asyncio.wait([poller._task])  # its client is closed before the last watcher leaves

    def add(self, resource: str) -> None:
        """Start watching ``resource``: its current state arrives soon."""
        held = self._ids
        if held is None:
            self._ids = resource
        elif isinstance(held, str):
            if held == resource:
                return
            self._ids = {held, resource}
        elif resource in held:
            return
        else:
            held.add(resource)
        if self._joining is None:  # entered: else joins on entering
            self.poller._join(resource, self)
            self._start_poller()

    def _start_poller(self) -> None:
        if self._ids and (self.poller._task is None or self.poller._task.done()):
            self.poller._task = asyncio.ensure_future(self.poller._run())

    def remove(self, resource: str) -> None:
        """Stop watching ``resource``."""
        if not self.watches(resource):
            return
        held = self._ids
        if isinstance(held, str):
            self._ids = None
        elif held is not None:
            held.discard(resource)
        self.poller._leave(resource, self)

    def may_warn(self, now: float, streak_since: float) -> bool:
        """Whether to warn this watch of a failure streak begun at ``streak_since``; if so, it counts as warned."""
        if self._warned_at is not None and self._warned_at >= streak_since and now - self._warned_at < WARNING_EVERY:
            return False
        self._warned_at = now
        return True

    def put(self, observation: Observation) -> None:
        """Deliver ``observation`` (the poller does)."""
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append(observation)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Observation:
        """The oldest observation not yet taken, once there is one; a cancelled wait takes none."""
        while not self._inbox:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        observation = self._inbox.popleft()
        if not self._inbox:
            self._inbox = None
        return observation
