"""What every trigger of this package shares: one poller per triggerer process, and the waiting task's life.

:class:`SharedPoller` turns thousands of waiting triggers into a few batched describe calls: each trigger
registers the id it waits for with its own ``poll_interval``; one task per (event loop, connection,
region, scope) describes the ids that are due, up to 100 per call, and wakes a trigger only when its
resource changes state. Transient errors (throttling, 5xx, network, expired credentials) slow the
poller down and never fail a trigger; any other error that lasts :data:`PERSISTENT_ERROR_GRACE`
fails every trigger of the poller at once, with the AWS message.

:class:`WaitForJobTrigger` is the life of one deferred task on top of it: log each state change, stop at
the deadline, terminate the remote job when a user clears or marks the task (but never on a triggerer
restart, nor when the task's state cannot be read), and end with one event.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import logging
import random
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_ml_batch import _compat
from airflow_ml_batch.hooks.base import _LOADER, AwsServiceHook, _warm_loader
from airflow_ml_batch.hooks.logs import CloudWatchLogsHook
from airflow_ml_batch.jobs.common import metrics_from_log as metrics_from_log
from airflow_ml_batch.jobs.errors import TRANSIENT_ERROR_CODES as TRANSIENT_ERROR_CODES
from airflow_ml_batch.jobs.errors import error_text as error_text
from airflow_ml_batch.jobs.errors import is_transient as is_transient
from airflow_ml_batch.links.logs import JobLogsLink

# metrics_from_log, is_transient, error_text and TRANSIENT_ERROR_CODES live in airflow_ml_batch.jobs now; the
# ``as`` imports keep them importable from here, where they were before.

log = logging.getLogger(__name__)

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

#: The sentinel Airflow 3.3+ passes to ``Task.cancel()`` when a user acts on a deferred task.
_USER_ACTION = "__airflow_user_action__"
_UNKNOWN_STATE = "<unknown>"
#: Task-state reads of cancelled triggers run in these threads: thousands at once finish within the
#: triggerer's ``on_kill_timeout`` instead of queueing on one thread.
_STATE_READS = 32
#: Seconds a task-state read waits for the reads of other triggers of the same task, to share one call.
_READ_GATHER = 0.05
_state_readers: ThreadPoolExecutor | None = None
T = TypeVar("T")


#: Triggers that start their wait in one event-loop iteration: thousands starting together take turns.
STARTS_PER_ITERATION = 100
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, collections.deque[asyncio.Future[None]]]
_turns = weakref.WeakKeyDictionary()
_frozen = False


async def take_turn(service: str | None = None) -> None:
    """Wait until this trigger may start: :data:`STARTS_PER_ITERATION` per loop iteration, first come first.

    Before the first turn of the process, botocore's data for ``service`` (the trigger's client) is loaded
    in a thread, then every object alive (modules, Airflow's own, that data) is moved out of the garbage
    collector's reach (``gc.freeze()``): a full collection while thousands of triggers start would
    otherwise walk them all, stalling the event loop for tens of milliseconds each time. Triggers
    arriving meanwhile wait for it.
    """
    loop = asyncio.get_running_loop()
    queue = _turns.get(loop)
    if queue is None:
        queue = _turns[loop] = collections.deque()
    turn: asyncio.Future[None] = loop.create_future()
    queue.append(turn)
    if len(queue) == 1:
        try:
            if not _frozen:
                await _load_then_freeze(service)
        finally:
            loop.call_soon(_give_turns, queue)
    await turn


async def _load_then_freeze(service: str | None) -> None:
    """Load what a client of ``service`` keeps for the life of the process, then ``gc.freeze()``, once."""
    global _frozen
    if service is not None:
        try:
            await asyncio.to_thread(_warm_loader, _LOADER, service)
        except Exception:  # the client's creation tells what is wrong
            log.debug("Could not load botocore's data for %s", service, exc_info=True)
    if not _frozen:
        _frozen = True
        gc.freeze()


def _give_turns(queue: collections.deque[asyncio.Future[None]]) -> None:
    given = 0
    while queue and given < STARTS_PER_ITERATION:
        turn = queue.popleft()
        if not turn.done():
            turn.set_result(None)
            given += 1
    if queue:
        asyncio.get_running_loop().call_soon(_give_turns, queue)


@functools.cache
def class_logger(cls: type[BaseTrigger]) -> Any:
    """The logger ``LoggingMixin`` names for ``cls``'s instances (``logging`` on Airflow 2, structlog on 3)."""
    names = SimpleNamespace(
        _log=None, _log_config_logger_name=cls._log_config_logger_name, _logger_name=cls._logger_name
    )
    return cls._get_log(names, cls)


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


@dataclass(frozen=True, kw_only=True)
class JobSettings:
    """The settings of a single-job trigger, declared once: its keywords, its attributes and what it serializes.

    A group's trigger gives the same settings to each of its jobs.
    """

    #: Airflow ``aws`` connection
    aws_conn_id: str | None = "aws_default"
    #: AWS region; defaults to the connection's
    region_name: str | None = None
    #: TLS verification of AWS calls: ``False``, or the path of a CA bundle
    verify: bool | str | None = None
    #: botocore client settings (a ``Config`` as a dict); triggers with equal connection, region, ``verify``
    #: and ``botocore_config`` share one client and one poller
    botocore_config: dict[str, Any] | None = None
    #: seconds between two describes of this job (each trigger at its own pace)
    poll_interval: float = 30.0
    #: epoch seconds after which the job is stopped and the task fails; ``None``: no limit
    deadline: float | None = None
    #: end a successful task from the triggerer, with no worker run after the job
    end_from_trigger: bool = False
    #: with ``end_from_trigger``, push the result as the task's ``return_value``
    xcom_result: bool = True
    #: seconds a job may be absent from describe results before it counts as gone
    missing_grace: float = 600.0
    #: ``region_name`` and ``aws_domain`` of the CloudWatch log link that ``end_from_trigger`` saves with
    #: the result (:class:`~airflow_ml_batch.links.logs.JobLogsLink`)
    log_link: dict[str, Any] | None = None
    #: CloudWatch log lines a failure message shows (one GetLogEvents call)
    log_tail_lines: int = 50
    #: read the last ``log_tail_lines`` lines of a successful job's log (one call) and put the last
    #: ``{"metrics": {...}}`` JSON line the job printed into its result
    collect_metrics: bool = False


class StopsAbandonedJobs(BaseTrigger):
    """A trigger that stops its jobs when it is cancelled and the task no longer waits for them.

    A triggerer restart or a trigger handed to another triggerer leaves the task DEFERRED: its jobs run on.
    """

    @abstractmethod
    async def _stop_if_abandoned(self, reason: str) -> None:
        """Stop the jobs unless the task still waits for them (or its state cannot be read)."""

    async def _cancelled(self, cancelled: asyncio.CancelledError) -> None:
        """The wait was cancelled: unless by a user's action (Airflow < 3.3, which has no ``on_kill``, or
        Airflow's own deferral timeout), stop the jobs if the task no longer waits for them."""
        if not (cancelled.args and cancelled.args[0] == _USER_ACTION):
            await _unless_cancelled_again(
                self._stop_if_abandoned("the task is no longer deferred (cleared, marked or timed out)")
            )

    async def on_kill(self) -> None:
        """Airflow 3.3+: a user cleared or marked the deferred task; stop its jobs.

        Airflow 3.3 also calls it when a triggerer whose heartbeat lapsed drops a trigger that was handed
        to another triggerer (apache/airflow#73454). The task is still DEFERRED then, and the other
        triggerer watches its jobs: they are left running, as they are when the task's state cannot be read.

        The triggerer cancels the trigger's task again at each of its loops until the trigger ends, and that
        cancels ``on_kill`` too (Airflow 3.3.2 swallows it, silently): the read and the stop run in a
        task of their own, which finishes whatever happens to this coroutine.
        """
        await _unless_cancelled_again(self._stop_if_abandoned("the Airflow task was cleared or marked by a user"))


class WaitForJobTrigger(StopsAbandonedJobs):
    """Wait for one remote job through a :class:`SharedPoller` and end the deferred task with one event.

    Takes the keywords of :class:`JobSettings` (kept in ``settings``), and each service's own.
    """

    poller: ClassVar[type[SharedPoller]]
    hook_class: ClassVar[type[AwsServiceHook]]
    #: the job's name in messages ("AWS Batch job")
    noun: ClassVar[str]
    #: the id the poller watches, set by each service's trigger
    job_id: str

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = JobSettings(**settings)

    @property
    def log(self) -> Any:
        """The logger of this trigger's class: the one Airflow's ``LoggingMixin`` would give each trigger.

        One per class rather than one per trigger (Airflow 3 builds a logger of about 20 objects for each
        instance), so thousands of waiting triggers add nothing for the garbage collector to walk.
        """
        return class_logger(type(self))

    # -- what each service defines ---------------------------------------------------------------------

    @property
    def scope(self) -> Hashable:
        """What else, besides connection and region, a describe call is bound to (an ECS cluster)."""
        return None

    @abstractmethod
    def service_kwargs(self) -> dict[str, Any]:
        """The service-specific ``serialize()`` kwargs."""

    @abstractmethod
    def is_final(self, description: dict[str, Any]) -> bool:
        """Whether the job has finished (it can no longer run)."""

    @abstractmethod
    async def summarize(self, description: dict[str, Any]) -> dict[str, Any]:
        """The task's JSON-serializable result, for a finished job."""

    @abstractmethod
    def succeeded(self, result: dict[str, Any]) -> bool:
        """Whether the finished job (its :meth:`summarize` result) succeeded."""

    @abstractmethod
    def failure_message(self, result: dict[str, Any], log_tail: list[str]) -> str:
        """Why the finished job (its :meth:`summarize` result) failed, ending with ``log_tail``."""

    @abstractmethod
    async def stop(self, client: Any, reason: str) -> None:
        """Stop the remote job (terminate, StopTask)."""

    # -- shared -----------------------------------------------------------------------------------------

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self.service_kwargs(),
                **{f.name: getattr(self.settings, f.name) for f in fields(JobSettings)},
            },
        )

    @property
    def hook(self) -> AwsServiceHook:
        return self.hook_class(**self._connection())

    def _connection(self) -> dict[str, Any]:
        """The arguments of this trigger's hooks: connection, region, TLS verification, client config."""
        return {
            "aws_conn_id": self.settings.aws_conn_id,
            "region_name": self.settings.region_name,
            "verify": self.settings.verify,
            "config": self.settings.botocore_config,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await take_turn(self.hook_class.service)
        try:
            async with self.poller.watch(self.hook, self.scope, self.job_id, self.settings.poll_interval) as watch:
                event = await self._wait(watch)
        except asyncio.CancelledError as cancelled:
            await self._cancelled(cancelled)
            raise
        yield event

    async def _stop_if_abandoned(self, reason: str) -> None:
        now = await self._task_now()
        own_try = getattr(getattr(self, "task_instance", None), "try_number", None)
        if not job_abandoned(now.state, now.try_number, own_try):
            why = "cannot be read" if now.state == _UNKNOWN_STATE else f"is {now.state}"
            self.log.info("%s %s: the task's state %s; job left running", self.noun, self.job_id, why)
            return
        if now.try_number is not None and own_try is not None and now.try_number != own_try:
            reason = f"{reason}; the task is on try {now.try_number}, this job is of try {own_try}"
        await self._stop_quietly(reason)

    async def _wait(self, watch: Watch) -> TriggerEvent:
        last_state: str | None = None
        missing_since: float | None = None
        while True:
            grace_ends = missing_since and missing_since + self.settings.missing_grace
            wake_at = min((t for t in (self.settings.deadline, grace_ends) if t), default=None)
            timeout = None if wake_at is None else max(0.0, wake_at - time.time())
            observation = None  # the last description is not kept alive while waiting (thousands of them)
            observation = await within(watch.next(), timeout)
            now = time.time()
            if self.settings.deadline is not None and now >= self.settings.deadline:
                await self._stop_quietly("the task's execution_timeout was reached")
                return self._event("timeout", f"{self.noun} {self.job_id} stopped: execution_timeout reached")
            if observation is None:
                if missing_since is not None and now >= missing_since + self.settings.missing_grace:
                    return self._event(
                        "missing",
                        f"{self.noun} {self.job_id} was not found for {self.settings.missing_grace:.0f}s "
                        f"(last state: {last_state or 'never seen'}); it no longer exists",
                    )
                continue
            if (error := observation.given_up()) is not None:
                return self._event("error", f"Could not describe {self.noun} {self.job_id}: {error}")
            if observation.description is None:
                missing_since = missing_since or now
                self.log.info("%s %s is not (or no longer) returned by AWS; waiting", self.noun, self.job_id)
                continue
            missing_since = None
            state = self.poller.state_of(observation.description)
            if state != last_state:
                self.log.info("%s %s: %s -> %s", self.noun, self.job_id, last_state or "deferred", state)
                last_state = state
            if not self.is_final(observation.description):
                continue
            result = await self.summarize(observation.description)
            if not self.succeeded(result):
                message = self.failure_message(result, await self._log_tail(result))
                return self._event("failed", message, result=result)
            if self.settings.collect_metrics:
                result["metrics"] = metrics_from_log(await self._log_tail(result))
            if self.settings.end_from_trigger:
                self.log.info("%s %s succeeded: the task ends here, on the triggerer", self.noun, self.job_id)
                return TaskSuccessEvent(xcoms=self._success_xcoms(result))
            return TriggerEvent({"status": "success", "job_id": self.job_id, "result": result})

    async def _log_tail(self, result: dict[str, Any]) -> list[str]:
        if not result.get("log_group") or not result.get("log_stream"):
            return []
        region = result.get("log_region") or self.settings.region_name  # a log may live in another region than the job
        logs = CloudWatchLogsHook(**{**self._connection(), "region_name": region})
        return await logs.tail(result["log_group"], result["log_stream"], self.settings.log_tail_lines)

    def _success_xcoms(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """What a task ended from the trigger pushes: its result and the log link a worker would save."""
        if not self.settings.xcom_result:
            return None
        xcoms: dict[str, Any] = {"return_value": result}
        if self.settings.log_link and result.get("log_stream"):
            link = JobLogsLink()
            xcoms[link.key] = {
                **self.settings.log_link,
                "awslogs_region": result.get("log_region") or self.settings.log_link["region_name"],
                "awslogs_group": result["log_group"],
                "awslogs_stream_name": result["log_stream"],
            }
            # Airflow 3 renders each link once, when the deferring run ends, and keeps the URL under the
            # link's own key; no worker run follows here to render it again.
            rendered_key = getattr(link, "xcom_key", None)
            if rendered_key:
                xcoms[rendered_key] = link.format_link(**xcoms[link.key])
        return xcoms

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "message": message, **extra})

    async def _stop_quietly(self, reason: str) -> None:
        try:
            async with self.hook.async_client() as client:
                await self.stop(client, reason)
            self.log.info("Stopped %s %s: %s", self.noun, self.job_id, reason)
        except Exception:
            self.log.exception("Could not stop %s %s", self.noun, self.job_id)

    async def _task_now(self) -> _compat.TaskInstanceNow:
        """The state (and, where Airflow tells, try number) of this trigger's task instance now.

        ``_UNKNOWN_STATE`` when it cannot be read. The reads of triggers cancelled together are batched:
        one Airflow call per (DAG, run, task) at a time (:class:`_TaskStateReads`).
        """
        task_instance = getattr(self, "task_instance", None)
        if task_instance is None:
            return _compat.TaskInstanceNow(_UNKNOWN_STATE)
        try:
            return await _TaskStateReads.of_loop().read(task_instance)
        except Exception:
            self.log.warning("Could not read the task's state", exc_info=True)
            return _compat.TaskInstanceNow(_UNKNOWN_STATE)

    async def _task_state(self) -> str | None:
        """The state of this trigger's task instance (``None``: cleared), or ``_UNKNOWN_STATE``."""
        return (await self._task_now()).state


#: What cancelled triggers still do (read the task's state, stop the job): kept alive until done.
_finishing: set[asyncio.Future[None]] = set()


async def _unless_cancelled_again(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` in a task of its own, which runs to its end even if the awaiting coroutine is cancelled.

    A cancelled trigger's clean-up (read the task's state, terminate the job) is itself cancelled when
    the triggerer cancels the trigger again before it ends, which Airflow's triggerer does at each of its
    loops; the job would then be left running.
    """
    task = asyncio.ensure_future(work)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            log.info("Cancelled again while stopping its job; the stop goes on")
        raise


class _TaskStateReads:
    """The task-state reads of one event loop's cancelled triggers, batched per (DAG, run, task).

    A read waits :data:`_READ_GATHER` for others of the same task, then one call reads them all; reads
    asked for meanwhile go into the next call. Calls run in a pool of :data:`_STATE_READS` threads
    (not the one thread ``sync_to_async`` uses by default), through ``sync_to_async`` so that Airflow 3's
    triggerer can answer from its event loop. Clearing 5000 deferred tasks of one mapped task costs a
    few reads, not 5000, and finishes well within the triggerer's ``on_kill_timeout``.
    """

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TaskStateReads]]
    _of_loop = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.calls = 0
        self._waiting: dict[tuple[str, str, str], dict[int, list[asyncio.Future[_compat.TaskInstanceNow]]]] = {}
        self._draining: set[tuple[str, str, str]] = set()
        self._drains: set[asyncio.Future[None]] = set()

    @classmethod
    def of_loop(cls) -> _TaskStateReads:
        loop = asyncio.get_running_loop()
        reads = cls._of_loop.get(loop)
        if reads is None:
            reads = cls._of_loop[loop] = cls()
        return reads

    async def read(self, task_instance: Any) -> _compat.TaskInstanceNow:
        key = (str(task_instance.dag_id), str(task_instance.run_id), str(task_instance.task_id))
        map_index = -1 if task_instance.map_index is None else int(task_instance.map_index)
        answer: asyncio.Future[_compat.TaskInstanceNow] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, {}).setdefault(map_index, []).append(answer)
        if key not in self._draining:
            self._draining.add(key)
            drain = asyncio.ensure_future(self._drain(key))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await answer

    async def _drain(self, key: tuple[str, str, str]) -> None:
        global _state_readers
        if _state_readers is None:
            _state_readers = ThreadPoolExecutor(_STATE_READS, thread_name_prefix="task-state")
        read = sync_to_async(_compat.task_instances_now, thread_sensitive=False, executor=_state_readers)
        try:
            await asyncio.sleep(_READ_GATHER)
            while waiting := self._waiting.pop(key, None):
                found: dict[int, _compat.TaskInstanceNow] = {}
                try:
                    self.calls += 1
                    found = await read(*key, list(waiting))
                    dag_id, run_id, task_id = key
                    otherwise: BaseException = LookupError(f"no task instance {task_id} in run {run_id} of {dag_id}")
                except Exception as error:
                    otherwise = error
                self._answer(waiting, found, otherwise)
        finally:
            self._draining.discard(key)

    @staticmethod
    def _answer(
        waiting: dict[int, list[asyncio.Future[_compat.TaskInstanceNow]]],
        found: dict[int, _compat.TaskInstanceNow],
        otherwise: BaseException,
    ) -> None:
        for map_index, futures in waiting.items():
            for future in futures:
                if future.done():  # its trigger gave up waiting (on_kill_timeout)
                    continue
                if map_index in found:
                    future.set_result(found[map_index])
                else:
                    future.set_exception(otherwise)


def job_abandoned(state: str | None, try_number: int | None = None, own_try: int | None = None) -> bool:
    """Whether nobody will wait for a cancelled trigger's job, from its task's state (and try) now.

    ``try_number`` is the task instance's try now and ``own_try`` the one of the trigger's own task
    instance (the try that started the job), when known. A task on another try than the job's: the try
    that started the job is over, whatever the state says (the next try may have deferred already). Else
    ``deferred``: the trigger moved or the triggerer restarts, the job is waited for. Unknown: left
    running, as a doubt never terminates a job. Anything else (no state: cleared; the next try on its
    way; a success or failure a user marked; a timeout): the try that started the job is over, and the
    next one never re-attaches to a job of a cleared try.
    """
    if state == _UNKNOWN_STATE:
        return False
    if try_number is not None and own_try is not None and try_number != own_try:
        return True
    return state != "deferred"
