"""Run a group of models from one trigger: submit their jobs within the account's rate, watch them, retry them.

:class:`RunGroupTrigger` is what ``BatchFleetOperator`` and ``EcsFleetOperator`` defer to. The worker only
builds the requests; the trigger submits every job (at most ``max_running`` at once, paced by a
:class:`SubmitPacer` per connection and region shared by every group of the triggerer), waits for them on
the shared poller, retries failed models (``model_retries``), and ends the task with one result per model.

A trigger may run more than once for one try (a triggerer restart) and a task may be retried: before
submitting anything, the trigger lists the jobs its task instance already has (their names or tags
carry the model, try and attempt: :mod:`airflow_ml_batch.jobs.groups`), waits for those of this try and of
tries since the last clear, and stops the others.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from abc import abstractmethod
from collections.abc import AsyncIterator, Hashable
from dataclasses import fields
from functools import cached_property
from typing import Any, ClassVar

from airflow.triggers.base import TaskSuccessEvent, TriggerEvent

from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.jobs.common import metrics_from_log
from airflow_ml_batch.jobs.errors import error_text, is_transient
from airflow_ml_batch.jobs.groups import FoundJob, GroupSettings, group_failure_message, plan_group, progress_line
from airflow_ml_batch.triggers.base import (
    JobSettings,
    SharedPoller,
    StopsAbandonedJobs,
    WaitForJobTrigger,
    Watch,
    job_abandoned,
    take_turn,
    within,
)

#: the longest pause before a submission or listing is tried again (throttling also halves the pace)
_MAX_BACKOFF = 20.0


class SubmitPacer:
    """At most ``rate`` calls per second for every group of one event loop on one connection and region.

    Throttling halves the rate for a while (it comes back by 10 % per second without throttling), so
    groups submitting together stay under the account's limit even when another client spends some of it.
    """

    _pacers: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, SubmitPacer]]]
    _pacers = weakref.WeakKeyDictionary()

    def __init__(self, rate: float) -> None:
        self.rate = self.ceiling = max(float(rate), 0.1)
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, key: Hashable, rate: float) -> SubmitPacer:
        """The pacer of this event loop for ``key`` (connection, region, operation)."""
        pacers = cls._pacers.setdefault(asyncio.get_running_loop(), {})
        pacer = pacers.get(key)
        if pacer is None:
            pacer = pacers[key] = cls(rate)
        return pacer

    async def wait(self) -> None:
        """Wait for this caller's turn."""
        async with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now)
            pause = self._next - now
            self._next += 1.0 / self.rate
            self.rate = min(self.ceiling, self.rate * (1 + 0.1 / self.rate))  # back to full pace over seconds
        if pause > 0:
            await asyncio.sleep(pause)

    def throttled(self) -> None:
        """AWS said "too many": go at half the pace."""
        self.rate = max(0.5, self.rate / 2)


class RunGroupTrigger(StopsAbandonedJobs):
    """Submit, watch and retry the jobs of a group of models; end with one result per model.

    :param models: per model, ``index``, ``label`` and the ``request`` starting its job (without the
        name, try and attempt the trigger adds).
    :param group: ``prefix`` (of Batch job names; ECS ``startedBy``), ``try_number`` (of the task),
        ``reattachable`` (``[first, stop)`` of the earlier tries whose jobs may be waited for) and
        ``reattach``.
    :param job: the settings of the single-job trigger (connection, ``poll_interval``, ``deadline``,
        ``end_from_trigger``, ``xcom_result``, ``missing_grace``, ``log_tail_lines``, ``collect_metrics``,
        and the service's own), used to watch, summarize and stop each job.

    Also takes the keywords of :class:`~airflow_ml_batch.jobs.groups.GroupSettings` (kept in ``group_settings``).
    """

    job_trigger: ClassVar[type[WaitForJobTrigger]]
    #: the jobs' name in messages ("AWS Batch jobs")
    noun: ClassVar[str]

    def __init__(
        self, *, models: list[dict[str, Any]], group: dict[str, Any], job: dict[str, Any], **group_settings: Any
    ) -> None:
        super().__init__()
        self.models = models
        self.group = group
        self.job = job
        self.group_settings = GroupSettings(**group_settings)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "models": self.models,
                "group": self.group,
                "job": self.job,
                **{f.name: getattr(self.group_settings, f.name) for f in fields(GroupSettings)},
            },
        )

    # -- what each service defines ---------------------------------------------------------------------

    @abstractmethod
    async def find_jobs(self, client: Any) -> list[FoundJob]:
        """Every job of this task instance that AWS knows (any try), from their names or tags."""

    @abstractmethod
    async def submit(self, client: Any, model: dict[str, Any], attempt: int) -> str:
        """Start ``model``'s job (attempt ``attempt`` of this try); return its id.

        :raises RejectedError: AWS refused it for a reason that will not pass.
        """

    def retriable(self, result: dict[str, Any]) -> bool:
        """Whether a failed job's model may get another job (``model_retries`` permitting)."""
        return True

    # -- shared -----------------------------------------------------------------------------------------

    def job_trigger_for(self, job_id: str) -> WaitForJobTrigger:
        """The single-job trigger of ``job_id``: it summarizes, explains and stops that job."""
        trigger = self.job_trigger(**{**self.job, self.job_id_argument: job_id})
        trigger.task_instance = getattr(self, "task_instance", None)
        return trigger

    #: the single-job trigger's argument naming the job
    job_id_argument: ClassVar[str] = "job_id"

    @cached_property
    def _any_job(self) -> WaitForJobTrigger:
        """A single-job trigger with no job: the group's settings, hook and scope."""
        return self.job_trigger_for("")

    @property
    def settings(self) -> JobSettings:
        """The settings every job of the group is watched with (``job``, read once)."""
        return self._any_job.settings

    @cached_property
    def hook(self) -> AwsServiceHook:
        """One hook for the trigger's life: each submission and listing reuses it (no connection read each)."""
        return self._any_job.hook

    @property
    def scope(self) -> Hashable:
        return self._any_job.scope

    @property
    def try_number(self) -> int:
        return int(self.group["try_number"])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await take_turn(self.job_trigger.hook_class.service)
        self._jobs: dict[int, str] = {}  # model index -> the job waited for
        self._models_by_job: dict[str, int] = {}  # the reverse
        self._states: dict[int, str] = {}  # model index -> state of its job
        self._results: dict[int, dict[str, Any]] = {}
        self._attempts: dict[int, int] = {}
        self._pending: list[int] = []
        poller: type[SharedPoller] = self.job_trigger.poller
        try:
            async with poller.watch_many(self.hook, self.scope, self.settings.poll_interval) as watch:
                event = await self._run_group(watch)
        except asyncio.CancelledError as cancelled:
            await self._cancelled(cancelled)
            raise
        yield event

    async def _run_group(self, watch: Watch) -> TriggerEvent:
        by_index = {int(model["index"]): model for model in self.models}
        found = await self._with_retries("list the group's jobs", self.find_jobs)
        reattachable = range(*self.group.get("reattachable", (1, 1)))
        plan = plan_group(found, len(self.models), self.try_number, reattachable, self.group.get("reattach", True))
        for job in plan.stop:
            self.log.info("Stopping job %s of model %s (try %s)", job.job_id, job.index, job.try_number)
            await self._stop_job(job.job_id, "rerun by a later try of the group")
        self._attempts = {index: plan.attempts.get(index, 0) for index in by_index}
        for index, job in plan.attach.items():
            self._wait_for(index, job.job_id)
            self._states[index] = "found"
            watch.add(job.job_id)
        if plan.attach:
            self.log.info("Waiting for %d jobs this task instance already has", len(plan.attach))
        self._pending = [index for index in by_index if index not in self._jobs]
        missing_since: dict[str, float] = {}
        next_progress = time.monotonic() + self.group_settings.progress_interval
        deadline = self.settings.deadline
        while len(self._results) < len(self.models):
            all_rejected = await self._submit_pending(by_index, watch)
            if all_rejected is not None:
                return all_rejected
            wake = [next_progress - time.monotonic()]
            if deadline is not None:
                wake.append(deadline - time.time())
            if missing_since:
                wake.append(min(missing_since.values()) + self.settings.missing_grace - time.time())
            observation = await within(watch.next(), max(0.0, min(wake)))
            if deadline is not None and time.time() >= deadline:
                return await self._timed_out()
            if time.monotonic() >= next_progress:
                self.log.info("%s", progress_line(self._states, len(self.models)))
                next_progress = time.monotonic() + self.group_settings.progress_interval
            await self._end_missing(missing_since, watch)
            if observation is None or observation.resource is None:
                continue
            model = self._index_of(observation.resource)
            if model is None:
                continue
            if (error := observation.given_up()) is not None:
                return self._event("error", f"Could not describe the group's {self.noun}: {error}")
            if observation.description is None:
                missing_since.setdefault(observation.resource, time.time())
                continue
            missing_since.pop(observation.resource, None)
            await self._observed(model, observation.resource, observation.description, watch)
        return self._finished()

    async def _submit_pending(self, by_index: dict[int, dict[str, Any]], watch: Watch) -> TriggerEvent | None:
        """Submit waiting models while ``max_running`` allows; an event if the first five were all rejected."""
        while self._pending and self._room():
            index = self._pending.pop(0)
            rejection = await self._submit(by_index[index], watch)
            if rejection is None:
                self._rejected_in_a_row = 0
                continue
            self._rejected_in_a_row = getattr(self, "_rejected_in_a_row", 0) + 1
            if self._rejected_in_a_row >= 5 and not self._jobs:
                return self._all_rejected(rejection)
        return None

    async def _end_missing(self, missing_since: dict[str, float], watch: Watch) -> None:
        """Fail the models whose job AWS has not returned for ``missing_grace`` seconds (they may retry)."""
        for job_id, since in list(missing_since.items()):
            if time.time() < since + self.settings.missing_grace:
                continue
            del missing_since[job_id]
            gone = self._index_of(job_id)
            if gone is not None:
                message = f"job {job_id} was not found for {self.settings.missing_grace:.0f}s; it no longer exists"
                await self._ended(gone, watch, {"job_id": job_id, "status": "MISSING"}, False, message)

    def _room(self) -> bool:
        running = sum(1 for index in self._jobs if index not in self._results)
        cap = self.group_settings.max_running
        return cap is None or running < cap

    def _index_of(self, job_id: str) -> int | None:
        return self._models_by_job.get(job_id)

    def _wait_for(self, index: int, job_id: str) -> None:
        self._jobs[index] = job_id
        self._models_by_job[job_id] = index

    async def _submit(self, model: dict[str, Any], watch: Watch) -> str | None:
        """Submit ``model``'s next attempt; throttling and network errors only slow it down. The AWS message
        of a rejection, which fails the model."""
        index = int(model["index"])
        attempt = self._attempts.get(index, 0) + 1
        pacer = SubmitPacer.of((self.hook._shared_client_key, type(self).__name__), self.group_settings.submit_rate)
        failures = 0
        while True:
            await pacer.wait()
            try:
                async with self.hook.async_client() as client:
                    job_id = await self.submit(client, model, attempt)
                break
            except RejectedError as rejected:
                self._attempts[index] = attempt
                result = {"job_id": None, "status": "REJECTED", "status_reason": str(rejected)}
                message = f"{self.noun[:-1]} of model {model['label']} was rejected: {rejected}"
                self.log.error("%s", message)
                self._results[index] = self._entry(model, result, False, message)
                self._states[index] = "REJECTED"
                return str(rejected)
            except Exception as error:
                if not (isinstance(error, TryAgain) or is_transient(error)):
                    raise
                if not isinstance(error, TryAgain):
                    pacer.throttled()
                failures += 1
                self.log.warning("Submitting model %s: %s; trying again", model["label"], error_text(error))
                await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.5 * 2**failures)))
        self._attempts[index] = attempt
        self._wait_for(index, job_id)
        self._states[index] = "SUBMITTED"
        self._results.pop(index, None)
        watch.add(job_id)
        return None

    async def _observed(self, index: int, job_id: str, description: dict[str, Any], watch: Watch) -> None:
        single = self.job_trigger_for(job_id)
        self._states[index] = single.poller.state_of(description)
        if not single.is_final(description):
            return
        result = await single.summarize(description)
        if single.succeeded(result):
            if self.settings.collect_metrics:
                result["metrics"] = metrics_from_log(await single._log_tail(result))
            await self._ended(index, watch, result, True, None)
            return
        message = single.failure_message(result, await single._log_tail(result))
        await self._ended(index, watch, result, False, message)

    async def _ended(
        self, index: int, watch: Watch, result: dict[str, Any], succeeded: bool, message: str | None
    ) -> None:
        model = next(m for m in self.models if int(m["index"]) == index)
        watch.remove(self._jobs[index])
        retries = self.group_settings.model_retries
        if not succeeded and self._attempts.get(index, 0) <= retries and self.retriable(result):
            self.log.warning(
                "Model %s: job %s failed (try %d of %d); submitting it again:\n%s",
                model["label"],
                result.get("job_id"),
                self._attempts.get(index, 0),
                retries + 1,
                message,
            )
            del self._models_by_job[self._jobs.pop(index)]
            self._states.pop(index, None)
            self._pending.insert(0, index)
            return
        if not succeeded:
            self.log.error("Model %s failed:\n%s", model["label"], message)
        self._results[index] = self._entry(model, result, succeeded, message)

    def _entry(
        self, model: dict[str, Any], result: dict[str, Any], succeeded: bool, message: str | None
    ) -> dict[str, Any]:
        return {
            "model": model["label"],
            "index": int(model["index"]),
            **result,
            "succeeded": succeeded,
            "tries": max(1, self._attempts.get(int(model["index"]), 1)),
            "message": message,
        }

    def _ordered_results(self) -> list[dict[str, Any]]:
        return [self._results[int(m["index"])] for m in self.models if int(m["index"]) in self._results]

    def _finished(self) -> TriggerEvent:
        results = self._ordered_results()
        self.log.info("%s", progress_line(self._states, len(self.models)))
        message = group_failure_message(self.noun, results, self.group_settings.allowed_failures)
        if message is not None:
            return self._event("failed", message, result=results)
        failed = sum(1 for r in results if not r["succeeded"])
        summary = f"{len(results) - failed} of {len(results)} models succeeded"
        if self.settings.end_from_trigger:
            self.log.info("%s: the task ends here, on the triggerer", summary)
            xcoms: dict[str, Any] = {"return_value": results}
            return TaskSuccessEvent(xcoms=xcoms if self.settings.xcom_result else None)
        return self._event("success", summary, result=results)

    def _all_rejected(self, reason: str) -> TriggerEvent:
        self.log.error("The first 5 submissions were rejected and none accepted: submitting no more")
        return self._event("failed", f"AWS rejected the group's {self.noun}: {reason}", result=self._ordered_results())

    async def _timed_out(self) -> TriggerEvent:
        running = [job for index, job in self._jobs.items() if index not in self._results]
        for job_id in running:
            await self._stop_job(job_id, "the task's execution_timeout was reached")
        message = (
            f"execution_timeout reached: stopped {len(running)} running {self.noun}, "
            f"{len(self._pending)} models never submitted; {progress_line(self._states, len(self.models))}"
        )
        return self._event("timeout", message, result=self._ordered_results())

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, **extra})

    async def _with_retries(self, what: str, call: Any) -> Any:
        """``call(client)``, again after transient errors (throttling, network), with backoff."""
        failures = 0
        while True:
            try:
                async with self.hook.async_client() as client:
                    return await call(client)
            except Exception as error:
                if not is_transient(error):
                    raise
                failures += 1
                self.log.warning("Could not %s (%s); trying again", what, error_text(error))
                await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.5 * 2**failures)))

    async def _stop_job(self, job_id: str, reason: str) -> None:
        await self.job_trigger_for(job_id)._stop_quietly(reason)

    async def _stop_if_abandoned(self, reason: str) -> None:
        """Stop every running job of the group, unless the task still waits for them (or its state is unknown)."""
        jobs = getattr(self, "_jobs", {})
        results = getattr(self, "_results", {})
        running = [job for index, job in jobs.items() if index not in results]
        if not running:
            return
        now = await self.job_trigger_for(running[0])._task_now()
        own_try = getattr(getattr(self, "task_instance", None), "try_number", None)
        if not job_abandoned(now.state, now.try_number, own_try):
            self.log.info("The task's state is %s: %d jobs left running", now.state, len(running))
            return
        await asyncio.gather(*(self._stop_job(job_id, reason) for job_id in running))


class RejectedError(Exception):
    """AWS refused to start a model's job, for a reason that will not pass (the message says which)."""


class TryAgain(Exception):
    """A submission that failed for now (no capacity): tried again after a pause, not counted as an attempt."""
