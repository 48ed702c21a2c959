"""The life of one waiting task on the triggerer, and what every trigger of this package shares.

:class:`WaitForJobTrigger` waits for one job through the shared poller (:mod:`airflow_ml_batch.triggers.poller`):
log each state change, stop at the deadline, terminate the remote job when a user clears or marks the task
(but never on a triggerer restart, nor when the task's state cannot be read), and end with one event.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import logging
import time
import weakref
from abc import abstractmethod
from collections.abc import AsyncIterator, Coroutine, Hashable
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_ml_batch import _compat
from airflow_ml_batch.hooks.base import AwsServiceHook, load_service_data
from airflow_ml_batch.jobs.common import UNKNOWN_STATE, job_abandoned
from airflow_ml_batch.jobs.common import metrics_from_log as metrics_from_log
from airflow_ml_batch.jobs.errors import TRANSIENT_ERROR_CODES as TRANSIENT_ERROR_CODES
from airflow_ml_batch.jobs.errors import backoff
from airflow_ml_batch.jobs.errors import error_text as error_text
from airflow_ml_batch.jobs.errors import is_transient as is_transient
from airflow_ml_batch.jobs.logs import copies_log
from airflow_ml_batch.links.logs import JobLogsLink
from airflow_ml_batch.triggers.logs import copy_job_logs, log_tail
from airflow_ml_batch.triggers.poller import Observation as Observation
from airflow_ml_batch.triggers.poller import SharedPoller, Watch, within
from airflow_ml_batch.triggers.poller import due_ids as due_ids
from airflow_ml_batch.triggers.task_state import task_now

# metrics_from_log, is_transient, error_text and TRANSIENT_ERROR_CODES live in airflow_ml_batch.jobs now; the
# ``as`` imports keep them importable from here, where they were before.

log = logging.getLogger(__name__)

#: Calls a stop (TerminateJob, StopTask) gets before it counts as failed (each after botocore's own retries).
STOP_ATTEMPTS = 5
#: The sentinel Airflow 3.3+ passes to ``Task.cancel()`` when a user acts on a deferred task.
_USER_ACTION = "__airflow_user_action__"


#: Triggers that start their wait in one event-loop iteration: thousands starting together take turns.
STARTS_PER_ITERATION = 100
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, collections.deque[asyncio.Future[None]]]
_turns = weakref.WeakKeyDictionary()
_prepared = False


def freeze_gc_enabled() -> bool:
    """Whether ``[ml_batch] freeze_gc`` (``AIRFLOW__ML_BATCH__FREEZE_GC``) asks for ``gc.freeze()`` (default no)."""
    from airflow.configuration import conf

    return conf.getboolean("ml_batch", "freeze_gc", fallback=False)


async def take_turn(service: str | None = None) -> None:
    """Wait until this trigger may start: :data:`STARTS_PER_ITERATION` per loop iteration, first come first.

    Before the first turn of the process, botocore's data for ``service`` (the trigger's client) is loaded
    in a thread; triggers arriving meanwhile wait for it. With ``[ml_batch] freeze_gc = True`` every object
    alive then (modules, Airflow's own, that data) is also moved out of the garbage collector's reach
    (``gc.freeze()``, once): a full collection while thousands of triggers start would otherwise walk them
    all, stalling the event loop each time. It is a decision for the whole triggerer process, other
    providers' triggers included (their objects alive then are never collected as cycles), so it is
    off unless asked for: for a triggerer that serves large fleets (docs/mwaa.md).
    """
    loop = asyncio.get_running_loop()
    queue = _turns.get(loop)
    if queue is None:
        queue = _turns[loop] = collections.deque()
    turn: asyncio.Future[None] = loop.create_future()
    queue.append(turn)
    if len(queue) == 1:
        try:
            if not _prepared:
                await _prepare_process(service)
        finally:
            loop.call_soon(_give_turns, queue)
    await turn


async def _prepare_process(service: str | None) -> None:
    """Load what a client of ``service`` keeps for the life of the process, then ``gc.freeze()`` if asked, once."""
    global _prepared
    if service is not None:
        try:
            await asyncio.to_thread(load_service_data, service)
        except Exception:  # the client's creation tells what is wrong
            log.debug("Could not load botocore's data for %s", service, exc_info=True)
    if not _prepared:
        _prepared = True
        if freeze_gc_enabled():
            gc.freeze()
            log.info(
                "gc.freeze(): %d objects out of the garbage collector's reach ([ml_batch] freeze_gc)",
                gc.get_freeze_count(),
            )


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
    #: with ``collect_metrics``, the last lines of a successful job's log read (one GetLogEvents call)
    log_tail_lines: int = 50
    #: read the last ``log_tail_lines`` lines of a successful job's log (one call) and put the last
    #: ``{"metrics": {...}}`` JSON line the job printed into its result
    collect_metrics: bool = False
    #: when the job's CloudWatch log is copied into the task log (``never``, ``on_failure``, ``always``); the
    #: trigger copies it only for a success it ends itself (``end_from_trigger``): a worker copies the others
    job_logs: str = "on_failure"
    #: the most lines copied per log stream (the last ones)
    job_log_lines: int = 200


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
    """Wait for one remote job through the shared poller and end the deferred task with one event.

    Takes the keywords of :class:`JobSettings` (kept in ``settings``), and each service's own.
    """

    poller: ClassVar[type[SharedPoller]]
    hook_class: ClassVar[type[AwsServiceHook]]
    #: the job's name in messages ("AWS Batch job")
    noun: ClassVar[str]
    #: the id the poller watches, set by each service's trigger (``None`` until a trigger that submits has)
    job_id: str | None

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
    def failure_message(self, result: dict[str, Any]) -> str:
        """Why the finished job (its :meth:`summarize` result) failed, and where its log is (no log line)."""

    @abstractmethod
    async def stop(self, client: Any, reason: str) -> None:
        """Stop the remote job (terminate, StopTask)."""

    @abstractmethod
    async def describe(self, client: Any) -> dict[str, Any] | None:
        """The remote job's description now, in one call (``None``: AWS does not know it)."""

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
        return self.hook_class(**self.hook_arguments())

    def hook_arguments(self) -> dict[str, Any]:
        """The arguments of this trigger's hooks: connection, region, TLS verification, client config."""
        return {
            "aws_conn_id": self.settings.aws_conn_id,
            "region_name": self.settings.region_name,
            "verify": self.settings.verify,
            "config": self.settings.botocore_config,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            await take_turn(self.hook_class.service)  # a user may clear the task while it waits for its turn
            event = await self._start() if self.job_id is None else None
            if event is None:
                job_id = str(self.job_id)
                async with self.poller.watch(self.hook, self.scope, job_id, self.settings.poll_interval) as watch:
                    event = await self._wait(watch)
        except asyncio.CancelledError as cancelled:
            await self._cancelled(cancelled)
            raise
        finally:
            self.end_start()
        yield event

    # -- a trigger that submits its job (triggers.start.StartsJob) overrides these -----------------------

    async def _start(self) -> TriggerEvent | None:
        """Start the job and set ``job_id``; the event that ends the task if none was started."""
        raise TypeError(f"{type(self).__name__} was given no job to wait for")

    async def settle_start(self) -> str | None:
        """After a cancel during the start (``_start``): the job it started, once known (``None``: none)."""
        return None

    def end_start(self) -> None:
        """The trigger ends: what the start (``_start``) left running beside the wait stops."""

    async def _stop_if_abandoned(self, reason: str) -> None:
        now = await self.task_now()
        own_try = getattr(getattr(self, "task_instance", None), "try_number", None)
        if not job_abandoned(now.state, now.try_number, own_try):
            why = "cannot be read" if now.state == UNKNOWN_STATE else f"is {now.state}"
            self.log.info("%s %s: the task's state %s; job left running", self.noun, self.job_id, why)
            return
        if self.job_id is None and (started := await self.settle_start()) is None:
            return
        self.job_id = self.job_id or started
        if await self.has_ended():  # a task that another triggerer ended as its job ended: nothing to stop
            self.log.info("%s %s has ended already: nothing to stop", self.noun, self.job_id)
            return
        if now.try_number is not None and own_try is not None and now.try_number != own_try:
            reason = f"{reason}; the task is on try {now.try_number}, this job is of try {own_try}"
        await self._stop_quietly(reason)

    async def has_ended(self) -> bool:
        """Whether AWS says the job has finished (one describe call); ``False`` when that cannot be read."""
        try:
            async with self.hook.async_client() as client:
                description = await self.describe(client)
        except Exception as error:
            self.log.warning(
                "Could not describe %s %s before stopping it: %s", self.noun, self.job_id, error_text(error)
            )
            return False
        return description is not None and self.is_final(description)

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
            if observation.warning is not None:  # the poller keeps failing: no news of the job
                self.log.warning("%s %s: %s", self.noun, self.job_id, observation.warning)
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
            if not self.succeeded(result):  # the worker the event resumes copies the log (job_logs)
                return self._event("failed", self.failure_message(result), result=result)
            if self.settings.collect_metrics:
                result["metrics"] = metrics_from_log(await self.read_log_tail(result))
            if self.settings.end_from_trigger:
                if copies_log(self.settings.job_logs, succeeded=True):
                    await self.copy_logs([result])
                self.log.info("%s %s succeeded: the task ends here, on the triggerer", self.noun, self.job_id)
                return TaskSuccessEvent(xcoms=self._success_xcoms(result, await self.link_location()))
            return TriggerEvent({"status": "success", "job_id": self.job_id, "result": result})

    async def read_log_tail(self, result: dict[str, Any]) -> list[str]:
        """The last ``log_tail_lines`` messages of the job's log, for ``collect_metrics`` (paced, see
        :mod:`airflow_ml_batch.triggers.logs`); ``[]`` if it has none or it cannot be read."""
        return await log_tail(self.hook_arguments(), result, self.settings.log_tail_lines)

    async def copy_logs(self, results: list[dict[str, Any]]) -> None:
        """Copy the jobs' logs into this trigger's log (the task's), paced; never raises nor waits past the
        deadline (:func:`airflow_ml_batch.triggers.logs.copy_job_logs`)."""
        await copy_job_logs(
            self.log,
            self.hook_arguments(),
            results,
            self.settings.job_log_lines,
            log_link=await self.link_location(),
            heading=lambda result: f"{self.noun} {self.job_id}",
            deadline=self.settings.deadline,
        )

    async def link_location(self) -> dict[str, Any] | None:
        """``region_name`` and ``aws_domain`` of the console links: the operator's ``log_link``, else the shared
        client's (a trigger that submits its job is given none: the worker run looked up no connection)."""
        if self.settings.log_link:
            return self.settings.log_link
        try:
            async with self.hook.async_client() as client:
                region, partition = client.meta.region_name, client.meta.partition
        except Exception:  # no link is no reason to fail the task
            self.log.debug("No console link: the client could not be created", exc_info=True)
            return None
        return {"region_name": region, "aws_domain": JobLogsLink.get_aws_domain(partition)}

    def job_link(self) -> tuple[Any, dict[str, Any]] | None:
        """A trigger that submits its job: the job's console link class and its data (but region and domain)."""
        return None

    def _success_xcoms(self, result: dict[str, Any], location: dict[str, Any] | None) -> dict[str, Any] | None:
        """What a task ended from the trigger pushes: its result and the links a worker would save (and, for a
        job this trigger submitted, its id under the operator's key and its console link)."""
        if not self.settings.xcom_result:
            return None
        xcoms: dict[str, Any] = {"return_value": result}
        links: list[tuple[Any, dict[str, Any]]] = []
        if location and result.get("log_stream"):
            links.append(
                (
                    JobLogsLink(),
                    {
                        "awslogs_region": result.get("log_region") or location["region_name"],
                        "awslogs_group": result["log_group"],
                        "awslogs_stream_name": result["log_stream"],
                    },
                )
            )
        start = getattr(self, "start", None)
        if start and start.get("job_id_xcom_key"):
            xcoms[start["job_id_xcom_key"]] = self.job_id
        if location and (job_link := self.job_link()) is not None:
            links.append(job_link)
        for link, data in links:
            # Airflow 3 shows the URL a worker run rendered, kept under the link's own key; no worker run follows
            # here to render it, so the trigger does. Airflow 2's webserver renders it from the link's data.
            if _compat.AIRFLOW_V_3_0_PLUS:
                xcoms[link.xcom_key] = link.format_link(**(location or {}), **data)
            else:
                xcoms[link.key] = {**(location or {}), **data}
        return xcoms

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "message": message, **extra})

    async def _stop_quietly(self, reason: str) -> None:
        """Stop the job (:meth:`stop_job`); say so in the task log, and say loudly when it could not be stopped."""
        error = await self.stop_job(reason)
        if error is None:
            self.log.info("Stopped %s %s: %s", self.noun, self.job_id, reason)
        else:
            self.log.error("Could not stop %s %s, which may still run: %s", self.noun, self.job_id, error)

    async def stop_job(self, reason: str) -> str | None:
        """Stop the job, again after transient errors (:data:`STOP_ATTEMPTS` in all); why it could not, if so."""
        for attempt in range(1, STOP_ATTEMPTS + 1):
            try:
                async with self.hook.async_client() as client:
                    await self.stop(client, reason)
                return None
            except Exception as error:
                if not is_transient(error) or attempt == STOP_ATTEMPTS:
                    return f"{error_text(error)} (after {attempt} attempts)"
                await asyncio.sleep(backoff(attempt, first=1.0))
        raise AssertionError("unreachable")

    async def task_now(self) -> _compat.TaskInstanceNow:
        """The state (and, where Airflow tells, try number) of this trigger's task instance now, or
        :data:`~airflow_ml_batch.jobs.common.UNKNOWN_STATE` (:func:`~airflow_ml_batch.triggers.task_state.task_now`)."""
        return await task_now(getattr(self, "task_instance", None), self.log)


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
