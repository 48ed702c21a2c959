"""What every trigger of this package shares: one poller per triggerer process, and the waiting task's life.

:class:`SharedPoller` turns thousands of waiting triggers into a few batched describe calls per round:
each trigger registers the id it waits for, one task per (event loop, connection, region, scope)
describes up to 100 ids per call at one shared, jittered pace, and wakes a trigger only when its
resource changes state. Errors (throttling, 5xx, timeouts, lost connections, expired credentials) slow
the poller down; they never fail a trigger.

:class:`WaitForJobTrigger` is the life of one deferred task on top of it: log each state change, stop at
the deadline, terminate the remote job when a user acts on the task (but never on a triggerer restart),
and end with one event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent
from asgiref.sync import sync_to_async
from botocore.exceptions import ClientError

from airflow_ml_batch import _compat
from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.hooks.logs import CloudWatchLogsHook
from airflow_ml_batch.links.logs import JobLogsLink

log = logging.getLogger(__name__)

#: Error codes that say "later", not "never": the poller backs off and tries again, however long it takes.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "ServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
#: How long the same non-transient error (access denied, say) may last before the waiting tasks fail.
PERSISTENT_ERROR_GRACE = 600.0
_MIN_CALL_GAP, _MAX_CALL_GAP = 0.02, 2.0
_MAX_BACKOFF = 300.0

#: The sentinel Airflow 3.3+ passes to ``Task.cancel()`` when a user acts on a deferred task.
_USER_ACTION = "__airflow_user_action__"
_UNKNOWN_STATE = "<unknown>"


def metrics_from_log(lines: list[str]) -> dict[str, Any] | None:
    """The ``metrics`` of the last log line that is a JSON object with a ``metrics`` mapping, if any."""
    for line in reversed(lines):
        text = line.strip()
        if not (text.startswith("{") and '"metrics"' in text):
            continue
        try:
            document = json.loads(text)
        except ValueError:
            continue
        metrics = document.get("metrics") if isinstance(document, dict) else None
        if isinstance(metrics, dict):
            return metrics
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` will likely pass by itself (throttling, 5xx, network, expired credentials)."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return (
            error.response.get("Error", {}).get("Code") in TRANSIENT_ERROR_CODES or status in (429,) or (status >= 500)
        )
    return True  # connection resets, timeouts, credential refresh errors: nothing the user can fix


@dataclass(frozen=True)
class Observation:
    """What a poll round saw of one watched resource: its description, or ``None`` when not returned."""

    description: dict[str, Any] | None
    error: str | None = None


class SharedPoller(ABC):
    """Describes every watched resource of one (connection, region, scope) in batches, at one pace.

    Subclasses set :attr:`batch_size` and implement :meth:`describe` and :meth:`state_of`.
    """

    batch_size: ClassVar[int] = 100
    _pollers: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, SharedPoller]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._pollers = weakref.WeakKeyDictionary()

    def __init__(self, hook: AwsServiceHook, scope: Hashable) -> None:
        self.hook = hook
        self.scope = scope
        self.calls = 0
        self.rounds = 0
        self._watchers: dict[str, list[tuple[asyncio.Queue[Observation], float]]] = {}
        self._last_state: dict[str, str | None] = {}
        self._call_gap = _MIN_CALL_GAP
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def active(cls) -> list[SharedPoller]:
        """The pollers running on the current event loop."""
        return list(cls._pollers.get(asyncio.get_running_loop(), {}).values())

    @classmethod
    def for_scope(cls, hook: AwsServiceHook, scope: Hashable) -> SharedPoller:
        """The poller of this event loop for ``hook``'s connection and region and ``scope``."""
        pollers = cls._pollers.setdefault(asyncio.get_running_loop(), {})
        return pollers.get((hook._shared_client_key, scope)) or cls(hook, scope)

    @classmethod
    @asynccontextmanager
    async def watch(
        cls, hook: AwsServiceHook, scope: Hashable, resource_id: str, poll_interval: float
    ) -> AsyncIterator[asyncio.Queue[Observation]]:
        """Receive an :class:`Observation` of ``resource_id`` each time its state changes."""
        pollers = cls._pollers.setdefault(asyncio.get_running_loop(), {})
        key = (hook._shared_client_key, scope)
        poller = pollers.get(key)
        if poller is None:
            poller = pollers[key] = cls(hook, scope)
        queue: asyncio.Queue[Observation] = asyncio.Queue()
        entry = (queue, max(float(poll_interval), 0.1))
        poller._watchers.setdefault(resource_id, []).append(entry)
        poller._last_state.pop(resource_id, None)  # the next round tells the new watcher the current state
        if poller._task is None or poller._task.done():
            poller._task = asyncio.ensure_future(poller._run())
        try:
            yield queue
        finally:
            watchers = poller._watchers.get(resource_id, [])
            if entry in watchers:
                watchers.remove(entry)
            if not watchers:
                poller._watchers.pop(resource_id, None)
                poller._last_state.pop(resource_id, None)
            if not poller._watchers and pollers.get(key) is poller:
                del pollers[key]
                if poller._task is not None:
                    poller._task.cancel()
                    await asyncio.wait([poller._task])  # its client is closed before the last watcher leaves

    @abstractmethod
    async def describe(self, client: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Describe ``ids`` (at most :attr:`batch_size`) in one call; return the found ones by id."""

    @staticmethod
    @abstractmethod
    def state_of(description: dict[str, Any]) -> str:
        """The part of a description whose change wakes the watcher (a status)."""

    def _interval(self) -> float:
        return min((interval for entries in self._watchers.values() for _, interval in entries), default=1.0)

    async def _run(self) -> None:
        while self._watchers:
            try:
                async with self.hook.async_client() as client:
                    while self._watchers:
                        await asyncio.sleep(self._interval() * random.uniform(0.9, 1.1))
                        await self._poll_round(client)
            except asyncio.CancelledError:
                raise
            except Exception:  # the client could not be created: wait, then try again
                log.warning("Could not create the %s client; retrying", self.hook.service, exc_info=True)
                await asyncio.sleep(self._backoff())

    async def _poll_round(self, client: Any) -> None:
        ids = list(self._watchers)
        self.rounds += 1
        for start in range(0, len(ids), self.batch_size):
            chunk = [resource for resource in ids[start : start + self.batch_size] if resource in self._watchers]
            found = await self._describe_until_answered(client, chunk)
            for resource in chunk:
                self._deliver(resource, Observation(found.get(resource)))
            if start + self.batch_size < len(ids):
                await asyncio.sleep(self._call_gap)

    async def _describe_until_answered(self, client: Any, chunk: list[str]) -> dict[str, dict[str, Any]]:
        first_error_at: float | None = None
        while chunk:
            try:
                self.calls += 1
                found = await self.describe(client, chunk)
            except Exception as error:
                first_error_at = first_error_at or time.monotonic()
                self._failures += 1
                self._call_gap = min(self._call_gap * 2, _MAX_CALL_GAP)
                transient = is_transient(error)
                log.warning(
                    "%s describe of %d ids failed (%s, attempt %d); backing off",
                    self.hook.service,
                    len(chunk),
                    error,
                    self._failures,
                )
                if not transient and time.monotonic() - first_error_at > PERSISTENT_ERROR_GRACE:
                    for resource in chunk:
                        self._deliver(resource, Observation(None, error=str(error)), force=True)
                    return {}
                await asyncio.sleep(self._backoff())
                chunk = [resource for resource in chunk if resource in self._watchers]
                continue
            self._failures = 0
            self._call_gap = max(self._call_gap * 0.8, _MIN_CALL_GAP)
            return found
        return {}

    def _backoff(self) -> float:
        """Exponential backoff with full jitter, never shorter than a second."""
        ceiling = min(_MAX_BACKOFF, self._interval() * 2 ** min(self._failures, 8))
        return max(1.0, random.uniform(0, ceiling))

    def _deliver(self, resource: str, observation: Observation, force: bool = False) -> None:
        state = None if observation.description is None else self.state_of(observation.description)
        if not force and resource in self._last_state and self._last_state[resource] == state:
            return
        self._last_state[resource] = state
        for queue, _ in self._watchers.get(resource, []):
            queue.put_nowait(observation)


class WaitForJobTrigger(BaseTrigger):
    """Wait for one remote job through a :class:`SharedPoller` and end the deferred task with one event.

    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: TLS verification of AWS calls: ``False``, or the path of a CA bundle.
    :param botocore_config: botocore client settings (a ``Config`` as a dict); triggers with equal
        connection, region, ``verify`` and ``botocore_config`` share one client and one poller.
    :param poll_interval: seconds between poll rounds (shared: the shortest of all waiting triggers).
    :param deadline: epoch seconds after which the job is stopped and the task fails; ``None``: no limit.
    :param end_from_trigger: end a successful task from the triggerer, with no worker run after the job.
    :param xcom_result: with ``end_from_trigger``, push the result as the task's ``return_value``.
    :param missing_grace: seconds a job may be absent from describe results before it counts as gone.
    :param log_link: ``region_name`` and ``aws_domain`` of the CloudWatch log link that
        ``end_from_trigger`` saves with the result (:class:`~airflow_ml_batch.links.logs.JobLogsLink`).
    :param log_tail_lines: CloudWatch log lines a failure message shows (one GetLogEvents call).
    :param collect_metrics: read the last ``log_tail_lines`` lines of a successful job's log (one call)
        and put the last ``{"metrics": {...}}`` JSON line the job printed into its result.
    """

    poller: ClassVar[type[SharedPoller]]
    hook_class: ClassVar[type[AwsServiceHook]]
    #: the job's name in messages ("AWS Batch job")
    noun: ClassVar[str]
    #: the id the poller watches, set by each service's trigger
    job_id: str

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        poll_interval: float = 30.0,
        deadline: float | None = None,
        end_from_trigger: bool = False,
        xcom_result: bool = True,
        missing_grace: float = 600.0,
        log_link: dict[str, Any] | None = None,
        log_tail_lines: int = 50,
        collect_metrics: bool = False,
    ) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.end_from_trigger = end_from_trigger
        self.xcom_result = xcom_result
        self.missing_grace = missing_grace
        self.log_link = log_link
        self.log_tail_lines = log_tail_lines
        self.collect_metrics = collect_metrics

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
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "end_from_trigger": self.end_from_trigger,
                "xcom_result": self.xcom_result,
                "missing_grace": self.missing_grace,
                "log_link": self.log_link,
                "log_tail_lines": self.log_tail_lines,
                "collect_metrics": self.collect_metrics,
            },
        )

    @property
    def hook(self) -> AwsServiceHook:
        return self.hook_class(**self._connection())

    def _connection(self) -> dict[str, Any]:
        """The arguments of this trigger's hooks: connection, region, TLS verification, client config."""
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "config": self.botocore_config,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async with self.poller.watch(self.hook, self.scope, self.job_id, self.poll_interval) as updates:
                event = await self._wait(updates)
        except asyncio.CancelledError as cancelled:
            if not (cancelled.args and cancelled.args[0] == _USER_ACTION) and await self._task_left_deferred():
                # Airflow < 3.3 (no on_kill), or Airflow's own deferral timeout: the task is no longer
                # waiting for this job, so nobody will. A triggerer restart leaves it DEFERRED.
                await self._stop_quietly("the task is no longer deferred (cleared, marked or timed out)")
            raise
        yield event

    async def on_kill(self) -> None:
        """Airflow 3.3+: a user cleared or marked the deferred task; terminate its job.

        Airflow 3.3 also calls it when a triggerer whose heartbeat lapsed drops a trigger that was handed
        to another triggerer (apache/airflow#73454). The task is still DEFERRED then, and the other
        triggerer watches its job: it is left running.
        """
        if await self._task_state() == "deferred":
            self.log.info(
                "%s %s: the task is still deferred (its trigger moved); job left running", self.noun, self.job_id
            )
            return
        await self._stop_quietly("the Airflow task was cleared or marked by a user")

    async def _wait(self, updates: asyncio.Queue[Observation]) -> TriggerEvent:
        last_state: str | None = None
        missing_since: float | None = None
        while True:
            wake_at = [t for t in (self.deadline, missing_since and missing_since + self.missing_grace) if t]
            timeout = max(0.0, min(wake_at) - time.time()) if wake_at else None
            try:
                observation = await asyncio.wait_for(updates.get(), timeout)
            except asyncio.TimeoutError:
                observation = None
            now = time.time()
            if self.deadline is not None and now >= self.deadline:
                await self._stop_quietly("the task's execution_timeout was reached")
                return self._event("timeout", f"{self.noun} {self.job_id} stopped: execution_timeout reached")
            if observation is None:
                if missing_since is not None and now >= missing_since + self.missing_grace:
                    return self._event(
                        "missing",
                        f"{self.noun} {self.job_id} was not found for {self.missing_grace:.0f}s "
                        f"(last state: {last_state or 'never seen'}); it no longer exists",
                    )
                continue
            if observation.error is not None:
                return self._event("error", f"Could not describe {self.noun} {self.job_id}: {observation.error}")
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
            if self.collect_metrics:
                result["metrics"] = metrics_from_log(await self._log_tail(result))
            if self.end_from_trigger:
                self.log.info("%s %s succeeded: the task ends here, on the triggerer", self.noun, self.job_id)
                return TaskSuccessEvent(xcoms=self._success_xcoms(result))
            return TriggerEvent({"status": "success", "job_id": self.job_id, "result": result})

    async def _log_tail(self, result: dict[str, Any]) -> list[str]:
        if not result.get("log_group") or not result.get("log_stream"):
            return []
        region = result.get("log_region") or self.region_name  # a log may live in another region than the job
        logs = CloudWatchLogsHook(**{**self._connection(), "region_name": region})
        return await logs.tail(result["log_group"], result["log_stream"], self.log_tail_lines)

    def _success_xcoms(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """What a task ended from the trigger pushes: its result and the log link a worker would save."""
        if not self.xcom_result:
            return None
        xcoms: dict[str, Any] = {"return_value": result}
        if self.log_link and result.get("log_stream"):
            link = JobLogsLink()
            xcoms[link.key] = {
                **self.log_link,
                "awslogs_region": result.get("log_region") or self.log_link["region_name"],
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

    async def _task_left_deferred(self) -> bool:
        """Whether this trigger's task instance is no longer DEFERRED; ``False`` when it cannot be told."""
        state = await self._task_state()
        return state is not None and state not in ("deferred", _UNKNOWN_STATE)

    async def _task_state(self) -> str | None:
        """The state of this trigger's task instance (``None``: none), or ``_UNKNOWN_STATE``."""
        task_instance = getattr(self, "task_instance", None)
        if task_instance is None:
            return _UNKNOWN_STATE
        try:
            return await sync_to_async(_compat.task_instance_state)(task_instance)
        except Exception:
            self.log.warning("Could not read the task's state", exc_info=True)
            return _UNKNOWN_STATE
