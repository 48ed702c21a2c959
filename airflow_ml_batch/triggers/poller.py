"""The shared poller: every waiting trigger of a triggerer process described in a few batched calls.

:class:`SharedPoller` turns thousands of waiting triggers into a few batched describe calls: each trigger
registers the id it waits for with its own ``poll_interval`` through a :class:`Watch`; one task per (event
loop, connection, region, scope) describes the ids that are due, up to 100 per call, and wakes a trigger
only when its resource changes state (an :class:`Observation`). Transient errors (throttling, 5xx, network,
expired credentials) slow the poller down and never fail a trigger; any other error that lasts
:data:`PERSISTENT_ERROR_GRACE` fails every trigger of the poller at once, with the AWS message.
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
from dataclasses import dataclass, replace
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

    ``error``: the poller gave up (an error outlasted the grace). ``bug``: handling the answer raised
    (a bug, or an answer of a shape nobody expected); the trigger fails with it.
    """

    description: dict[str, Any] | None
    error: str | None = None
    bug: BaseException | None = None
    #: the id observed (set by the poller)
    resource: str | None = None

    def given_up(self) -> str | None:
        """Why the poller gave up on this id (``error``), if it did; raises ``bug``, with its traceback, if set."""
        if self.bug is not None:
            raise self.bug
        return self.error


def due_ids(due: dict[str, float], intervals: dict[str, float], now: float) -> list[str]:
    """The ids to describe at ``now``: those due, and those due within ``_EARLY`` (5 %) of their interval."""
    return [resource for resource, at in due.items() if at - _EARLY * intervals[resource] <= now]


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
        self._watchers: dict[str, list[Watch]] = {}
        self._intervals: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self._last_state: dict[str, str | None] = {}
        self._call_gap = _MIN_CALL_GAP
        self._failures = 0
        self._failing_since: float | None = None
        self._joined = asyncio.Event()
        #: when the next round starts, as far as a joining id can tell (see :meth:`_first_describe_at`)
        self._next_round_at = float("inf")
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, hook: AwsServiceHook, scope: Hashable) -> SharedPoller | None:
        """The running poller of this event loop for ``hook``'s connection and region and ``scope``, if any."""
        return cls._pollers.get(asyncio.get_running_loop(), {}).get((hook._shared_client_key, scope))

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

    def _join(self, resource: str, watch: Watch) -> None:
        self._watchers.setdefault(resource, []).append(watch)
        self._intervals[resource] = min(watcher.interval for watcher in self._watchers[resource])
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
        watchers = self._watchers.get(resource, [])
        if watch in watchers:
            watchers.remove(watch)
        if watchers:
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
        while self._watchers:
            try:
                async with self.hook.async_client() as client:
                    await self._poll_while_watched(client)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the client could not be created: on the same clock as a describe
                self._failed(error, "create the client")
                await asyncio.sleep(self._backoff())

    async def _poll_while_watched(self, client: Any) -> None:
        try:
            while self._watchers:
                await self._until_due()
                if not await self._poll_round(client):
                    await asyncio.sleep(self._backoff())
        except Exception as bug:  # a bug of the poller itself: its watchers fail with it, never wait forever
            log.exception("%s: the poller failed", self._where())
            for resource in list(self._watchers):
                for watch in self._watchers[resource]:
                    watch.put(Observation(None, bug=bug))
            self._due.clear()

    async def _poll_round(self, client: Any) -> bool:
        """Describe the due ids, :attr:`batch_size` per call; ``False`` when a call failed."""
        started = time.monotonic()
        self._next_round_at = float("inf")  # ids joining during this round open a window of their own
        ids = due_ids(self._due, self._intervals, started)
        if not ids:
            return True
        self.rounds += 1
        jitter = random.uniform(0.95, 1.05)  # one factor per round: ids described together stay together
        for start in range(0, len(ids), self.batch_size):
            if start:
                await asyncio.sleep(self._call_gap)
            chunk = [resource for resource in ids[start : start + self.batch_size] if resource in self._watchers]
            if not chunk:
                continue
            try:
                self.calls += 1
                answer = await self.request(client, chunk)
            except Exception as error:
                self._failed(error, f"describe {len(chunk)} ids")
                return False
            self._answered()
            for resource in chunk:
                if resource in self._due:
                    self._due[resource] = started + self._intervals[resource] * jitter
            try:
                found = self.found(answer)
            except Exception as bug:
                log.exception("%s: could not read the %s answer", self._where(), self.operation)
                for resource in chunk:
                    self._deliver(resource, Observation(None, bug=bug), force=True)
                continue
            for resource in chunk:
                self._deliver(resource, Observation(found.get(resource)))
        return True

    def _answered(self) -> None:
        self._failures = 0
        self._failing_since = None
        self._call_gap = max(self._call_gap * 0.8, _MIN_CALL_GAP)

    def _failed(self, error: Exception, what: str) -> None:
        """Count a failed call; once non-transient errors outlast the grace, fail every watcher with it."""
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
        if transient:
            return
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        if now - self._failing_since < PERSISTENT_ERROR_GRACE:
            return
        message = (
            f"{self._where()}: could not {what} for {now - self._failing_since:.0f}s; last error: {error_text(error)}"
        )
        for resource in list(self._watchers):
            self._deliver(resource, Observation(None, error=message), force=True)

    def _where(self) -> str:
        """The service, connection, region and scope of this poller, for messages."""
        conn_id, region, service, *_ = self.hook._shared_client_key
        where = f"{self.operation} ({service}, connection {conn_id!r}, region {region or 'of the connection'}"
        return where + (f", {self.scope_name} {self.scope!r})" if self.scope is not None else ")")

    #: what ``scope`` is, for messages ("cluster")
    scope_name: ClassVar[str] = "scope"

    def _backoff(self) -> float:
        """Exponential backoff with full jitter, never shorter than a second."""
        ceiling = min(_MAX_BACKOFF, self._interval() * 2 ** min(self._failures, 8))
        return max(1.0, random.uniform(0, ceiling))

    def _deliver(self, resource: str, observation: Observation, force: bool = False) -> None:
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
        for watch in self._watchers.get(resource, []):
            watch.put(observation)
        if observation.error is not None or observation.bug is not None:
            self._due.pop(resource, None)  # its watchers end; nothing to describe until another joins


class Watch:
    """One trigger's watch of ids on the shared poller (:meth:`SharedPoller.watch`, :meth:`SharedPoller.watch_many`).

    ``async with`` it joins the poller of its (event loop, connection, region, scope), creating it if
    needed, and leaves it on exit: the last watch to leave stops the poller. Every change of state of any
    of its ids arrives, in order, as an :class:`Observation` whose ``resource`` is the id: ``await``
    :meth:`next` (one reader). A waiting trigger's watch is a few objects (no queue, no generators), as
    thousands of them are what the garbage collector walks.
    """

    def __init__(
        self, poller_class: type[SharedPoller], hook: AwsServiceHook, scope: Hashable, poll_interval: float
    ) -> None:
        self.interval = max(float(poll_interval), 0.1)
        self.ids: set[str] = set()
        self._joining: tuple[type[SharedPoller], AwsServiceHook, Hashable] | None = (poller_class, hook, scope)
        self._inbox: collections.deque[Observation] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Watch:
        assert self._joining is not None, "a Watch is entered once"
        (poller_class, hook, scope), self._joining = self._joining, None
        pollers = poller_class._pollers.setdefault(asyncio.get_running_loop(), {})
        key = (hook._shared_client_key, scope)
        poller = pollers.get(key)
        if poller is None:
            poller = pollers[key] = poller_class(hook, scope)
        self.poller = poller
        for resource in self.ids:
            poller._join(resource, self)
        self._start_poller()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for resource in list(self.ids):
            self.remove(resource)
        poller = self.poller
        pollers = poller._pollers.get(asyncio.get_running_loop(), {})
        key = (poller.hook._shared_client_key, poller.scope)
        if not poller._watchers and pollers.get(key) is poller:
            del pollers[key]
            if poller._task is not None:
                poller._task.cancel()
                await asyncio.wait([poller._task])  # its client is closed before the last watcher leaves

    def add(self, resource: str) -> None:
        """Start watching ``resource``: its current state arrives soon."""
        if resource in self.ids:
            return
        self.ids.add(resource)
        if self._joining is None:  # entered: else joins on entering
            self.poller._join(resource, self)
            self._start_poller()

    def _start_poller(self) -> None:
        if self.ids and (self.poller._task is None or self.poller._task.done()):
            self.poller._task = asyncio.ensure_future(self.poller._run())

    def remove(self, resource: str) -> None:
        """Stop watching ``resource``."""
        if resource in self.ids:
            self.ids.discard(resource)
            self.poller._leave(resource, self)

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
