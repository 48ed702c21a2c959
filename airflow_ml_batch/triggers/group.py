"""Run a group of models from one trigger: submit their jobs within the account's rate, watch them, retry them.

:class:`RunGroupTrigger` is what ``BatchFleetOperator`` and ``EcsFleetOperator`` defer to. The worker only
builds the requests; the trigger submits every job (:mod:`airflow_ml_batch.triggers.submission`: at most
``max_running`` at once, paced per connection and region for every group of the triggerer), waits for them on
the shared poller, retries failed models (``model_retries``), and ends the task with one result per model.
Submission runs beside the wait: observations, progress lines and the deadline go on while models are
submitted.

A trigger may run more than once for one try (a triggerer restart) and a task may be retried: before
submitting anything, the trigger lists the jobs its task instance already has (their names or tags
carry the model, try and attempt: :mod:`airflow_ml_batch.jobs.groups`), waits for those of this try and of
tries since the last clear, and stops the others.

Exactly one job per model: a call that starts a job is sent once (botocore's retries off). After a lost
answer, Batch's job is looked for by its name before SubmitJob is sent again
(:data:`~airflow_ml_batch.jobs.batch.LOOKUP_SECONDS`), and a second job listed late is stopped; ECS's RunTask
is sent again with its ``clientToken``, which starts no second task. A cancelled trigger sends nothing more,
waits for the calls in flight and stops what they started if the task no longer waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Hashable
from dataclasses import fields
from functools import cached_property
from typing import Any, ClassVar

from airflow.triggers.base import TaskSuccessEvent, TriggerEvent

from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.jobs.batch import LOOKUP_SECONDS
from airflow_ml_batch.jobs.common import metrics_from_log
from airflow_ml_batch.jobs.errors import backoff, error_text, is_transient
from airflow_ml_batch.jobs.groups import FoundJob, GroupSettings, group_failure_message, plan_group, progress_line
from airflow_ml_batch.jobs.logs import copies_log, model_heading
from airflow_ml_batch.jobs.outcomes import outcome_table
from airflow_ml_batch.links.logs import job_log_url
from airflow_ml_batch.triggers.base import (
    JobSettings,
    StopsAbandonedJobs,
    WaitForJobTrigger,
    job_abandoned,
    take_turn,
)
from airflow_ml_batch.triggers.logs import copy_job_logs
from airflow_ml_batch.triggers.poller import SharedPoller, Watch, within
from airflow_ml_batch.triggers.submission import (
    CAPACITY_TRIES as CAPACITY_TRIES,
)
from airflow_ml_batch.triggers.submission import (
    IN_FLIGHT_WAIT as IN_FLIGHT_WAIT,
)
from airflow_ml_batch.triggers.submission import (
    DeadlineReached,
    RejectedError,
    SubmitPacer,
    SubmitsModels,
)
from airflow_ml_batch.triggers.submission import (
    NoCapacity as NoCapacity,
)
from airflow_ml_batch.triggers.submission import (
    TryAgain as TryAgain,
)

log = logging.getLogger(__name__)


class RunGroupTrigger(SubmitsModels, StopsAbandonedJobs):
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
    #: whether a call whose answer was lost may simply be sent again (ECS's ``clientToken``); else the job is
    #: looked for first (:meth:`~airflow_ml_batch.triggers.group.RunGroupTrigger.find_submitted`)
    resend_is_safe: ClassVar[bool] = False
    #: calls per second that start jobs, as AWS publishes the account's quota: ``submit_rate``'s default
    published_submit_rate: ClassVar[float]

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
        """Every job of this task instance that AWS knows (any try), from their names or tags.

        :raises ~airflow_ml_batch.triggers.submission.RejectedError: AWS refused the listing for a reason that
            will not pass (a job queue or cluster that does not exist); the message names the value.
        """

    @abstractmethod
    async def submit(self, client: Any, model: dict[str, Any], attempt: int, placement: int) -> str:
        """Start ``model``'s job (attempt ``attempt`` of this try, ``placement``: its capacity retries); its id.

        :raises ~airflow_ml_batch.triggers.submission.RejectedError: AWS refused it for a reason that will not
            pass.
        :raises ~airflow_ml_batch.triggers.submission.NoCapacity: nothing was started for want of capacity; it
            may be tried again.
        """

    async def find_submitted(self, client: Any, model: dict[str, Any], attempt: int) -> str | None:
        """The job of ``model``'s attempt ``attempt`` if AWS has one (a submission whose answer was lost)."""
        return None

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
    def submit_rate(self) -> float:
        """Calls per second that start (or stop) jobs: ``submit_rate``, or the service's published quota."""
        return self.group_settings.submit_rate or self.published_submit_rate

    @property
    def try_number(self) -> int:
        return int(self.group["try_number"])

    def _start_state(self) -> None:
        self._by_index = {int(model["index"]): model for model in self.models}
        self._jobs: dict[int, str] = {}  # model index -> the job waited for
        self._models_by_job: dict[str, int] = {}  # the reverse
        self._states: dict[int, str] = {}  # model index -> state of its job
        self._results: dict[int, dict[str, Any]] = {}
        self._attempts: dict[int, int] = {}  # model index -> the highest attempt of this try sent or seen
        self._listed = False  # the group's jobs were listed: ``_jobs`` holds every one this trigger waits for
        self._start_submission(list(self._by_index))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._start_state()
        poller: type[SharedPoller] = self.job_trigger.poller
        try:
            await take_turn(self.job_trigger.hook_class.service)  # a user may clear the task meanwhile
            async with poller.watch_many(self.hook, self.scope, self.settings.poll_interval) as watch:
                self._watch = watch
                event = await self._run_group(watch)
        except asyncio.CancelledError as cancelled:
            await self._cancelled(cancelled)
            raise
        yield event

    async def _run_group(self, watch: Watch) -> TriggerEvent:
        try:
            found = await self._with_retries("list the group's jobs", self.find_jobs, self.settings.deadline)
        except RejectedError as rejected:
            self.log.error("%s", rejected)
            return self._event("failed", str(rejected), result=[])
        except DeadlineReached:
            return await self._timed_out()
        self._listed = True
        reattachable = range(*self.group.get("reattachable", (1, 1)))
        plan = plan_group(found, len(self.models), self.try_number, reattachable, self.group.get("reattach", True))
        for job in plan.stop:
            self.log.info("Stopping job %s of model %s (try %s)", job.job_id, job.index, job.try_number)
        await self._stop_jobs([job.job_id for job in plan.stop], "rerun by a later try of the group")
        self._attempts = {index: plan.attempts.get(index, 0) for index in self._by_index}
        for index, job in plan.attach.items():
            self._wait_for(index, job.job_id)
            self._states[index] = "found"
            watch.add(job.job_id)
        if plan.attach:
            self.log.info("Waiting for %d jobs this task instance already has", len(plan.attach))
        self._pending = [index for index in self._by_index if index not in self._jobs]
        self._spawn(self._submit_pending())
        try:
            event = await self._wait_for_models(watch)
        except BaseException:  # cancelled (a restart, a user's action: they wait for the calls) or a bug
            self._stop_sending()
            raise
        await self._close()
        return event

    async def _wait_for_models(self, watch: Watch) -> TriggerEvent:
        missing_since: dict[str, float] = {}
        next_progress = time.monotonic() + self.group_settings.progress_interval
        deadline = self.settings.deadline
        while len(self._results) < len(self.models):
            if self._error is not None:
                raise self._error
            if self._refused_from_the_start():
                return await self._all_rejected()
            wake = [next_progress - time.monotonic()]
            if deadline is not None:
                wake.append(deadline - time.time())
            if missing_since:
                wake.append(min(missing_since.values()) + self.settings.missing_grace - time.time())
            if self._sweeps:
                wake.append(min(self._sweeps) - time.time())
            observation = await within(watch.next(), max(0.0, min(wake)))
            if deadline is not None and time.time() >= deadline:
                return await self._timed_out()
            if time.monotonic() >= next_progress:
                self.log.info("%s", self._progress())
                next_progress = time.monotonic() + self.group_settings.progress_interval
            if self._sweeps and time.time() >= min(self._sweeps):
                self._sweeps = [at for at in self._sweeps if at > time.time()]
                self._spawn(self._stop_second_jobs())
            await self._end_missing(missing_since, watch)
            if observation is None or observation.resource is None:
                continue
            if observation.warning is not None:  # the poller keeps failing: no news of any job
                self.log.warning("%s", observation.warning)
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
        return await self._finished()

    # -- submitting -------------------------------------------------------------------------------------

    def _index_of(self, job_id: str) -> int | None:
        return self._models_by_job.get(job_id)

    def _wait_for(self, index: int, job_id: str) -> None:
        self._jobs[index] = job_id
        self._models_by_job[job_id] = index

    async def _stop_second_jobs(self) -> None:
        """Stop the active jobs of this try that no model waits for: a job whose SubmitJob answer was lost and
        that the listing showed only after the model was submitted again."""
        try:
            found = await self._with_retries("list the group's jobs", self.find_jobs, time.time() + LOOKUP_SECONDS)
        except (DeadlineReached, RejectedError) as error:
            self.log.warning("Could not list the group's jobs to look for second jobs (%s)", error)
            return
        second = [
            job.job_id
            for job in found
            if job.active
            and job.try_number == self.try_number
            and job.index in self._jobs
            and job.index not in self._busy | self._looking
            and self._jobs[job.index] != job.job_id
        ]
        for job_id in second:
            self.log.warning("Stopping job %s: a second job of a model whose SubmitJob answer was lost", job_id)
        await self._stop_jobs(second, "a second job of the model (a SubmitJob answer was lost)")

    # -- watching ---------------------------------------------------------------------------------------

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

    async def _observed(self, index: int, job_id: str, description: dict[str, Any], watch: Watch) -> None:
        single = self.job_trigger_for(job_id)
        self._states[index] = single.poller.state_of(description)
        if not single.is_final(description):
            return
        result = await single.summarize(description)
        if single.succeeded(result):
            if self.settings.collect_metrics:
                result["metrics"] = metrics_from_log(await single.read_log_tail(result))
            await self._ended(index, watch, result, True, None)
            return
        message = single.failure_message(result)  # where the log is, no line of it (job_logs copies it)
        await self._ended(index, watch, result, False, message)

    async def _ended(
        self, index: int, watch: Watch, result: dict[str, Any], succeeded: bool, message: str | None
    ) -> None:
        model, job_id = self._by_index[index], self._jobs[index]
        watch.remove(job_id)
        retries = self.group_settings.model_retries
        if not succeeded and self._attempts.get(index, 0) <= retries and self.retriable(result):
            self.log.warning(
                "Model %s: job %s failed (try %d of %d); submitting it again:\n%s",
                model["label"],
                job_id,
                self._attempts.get(index, 0),
                retries + 1,
                message,
            )
            del self._models_by_job[job_id]
            del self._jobs[index]
            self._states.pop(index, None)
            self._pending.insert(0, index)
            self._submit_more.set()
            return
        if not succeeded:
            self.log.error("Model %s failed:\n%s", model["label"], message)
        self._results[index] = self._entry(model, result, succeeded, message)
        self._submit_more.set()  # room for another under max_running

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

    # -- ending -----------------------------------------------------------------------------------------

    def _ordered_results(self) -> list[dict[str, Any]]:
        return [self._results[int(m["index"])] for m in self.models if int(m["index"]) in self._results]

    async def _finished(self) -> TriggerEvent:
        results = self._ordered_results()
        self.log.info("%s", self._progress())
        message = group_failure_message(self.noun, results, self.group_settings.allowed_failures)
        if message is not None:
            return self._event("failed", message, result=results)
        failed = sum(1 for r in results if not r["succeeded"])
        summary = f"{len(results) - failed} of {len(results)} models succeeded"
        if self.settings.end_from_trigger:  # no worker run follows to write the table and copy the logs
            domain, region = (self.settings.log_link or {}).get("aws_domain"), self.settings.region_name
            table = outcome_table(results, lambda entry: job_log_url(entry, aws_domain=domain, region_name=region))
            self.log.info("%s: the task ends here, on the triggerer\n%s", summary, table)
            if copies_log(self.settings.job_logs, succeeded=True):
                await copy_job_logs(
                    self.log,
                    self._any_job.hook_arguments(),
                    results,
                    self.settings.job_log_lines,
                    log_link=self.settings.log_link,
                    heading=model_heading,
                    deadline=self.settings.deadline,
                )
            xcoms: dict[str, Any] = {"return_value": results}
            return TaskSuccessEvent(xcoms=xcoms if self.settings.xcom_result else None)
        return self._event("success", summary, result=results)

    async def _all_rejected(self) -> TriggerEvent:
        self.log.error("The first 5 submissions were rejected and none accepted: submitting no more")
        await self._close()
        reason = next((r["status_reason"] for r in reversed(self._ordered_results()) if r["status"] == "REJECTED"), "")
        return self._event("failed", f"AWS rejected the group's {self.noun}: {reason}", result=self._ordered_results())

    async def _timed_out(self) -> TriggerEvent:
        await self._close()
        running = self._running_jobs()
        not_stopped = await self._stop_jobs(running, "the task's execution_timeout was reached")
        message = (
            f"execution_timeout reached: stopped {len(running) - len(not_stopped)} running {self.noun}, "
            f"{len(self._pending)} models never submitted; {self._progress()}"
        )
        if not_stopped:
            message += f"; could not stop {len(not_stopped)}, which may still run: " + "; ".join(not_stopped)
        return self._event("timeout", message, result=self._ordered_results())

    def _progress(self) -> str:
        """Counts per state, and the models that failed for good so far."""
        failed = [str(entry["model"]) for _, entry in sorted(self._results.items()) if not entry["succeeded"]]
        return progress_line(self._states, len(self.models), failed)

    def _running_jobs(self) -> list[str]:
        return [job for index, job in getattr(self, "_jobs", {}).items() if index not in self._results]

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, **extra})

    async def _with_retries(self, what: str, call: Any, deadline: float | None = None) -> Any:
        """``call(client)``, again after transient errors (throttling, network), with backoff.

        :raises DeadlineReached: transient errors lasted until ``deadline`` (epoch seconds).
        """
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
                pause = backoff(failures)
                if deadline is not None and time.time() + pause >= deadline:
                    raise DeadlineReached(what) from error
                await asyncio.sleep(pause)

    async def _stop_jobs(self, job_ids: list[str], reason: str) -> list[str]:
        """Stop ``job_ids`` within the submit rate, each tried again after transient errors; the ones that could
        not be stopped, each with why."""
        if not job_ids:
            return []
        pacer = SubmitPacer.of((self.hook.client_key, "stop"), self.submit_rate)

        async def stop(job_id: str) -> str | None:
            await pacer.wait()
            return await self.job_trigger_for(job_id).stop_job(reason)

        errors = await asyncio.gather(*(stop(job_id) for job_id in job_ids))
        not_stopped = [
            f"{job_id} ({error})" for job_id, error in zip(job_ids, errors, strict=True) if error is not None
        ]
        if not_stopped:
            self.log.error(
                "Could not stop %d %s, which may still run: %s", len(not_stopped), self.noun, "; ".join(not_stopped)
            )
        return not_stopped

    async def _stop_if_abandoned(self, reason: str) -> None:
        """Stop every running job of the group, unless the task still waits for them (or its state is unknown).

        Nothing more is sent first, and the calls in flight are waited for: a job AWS accepted while the trigger
        was being cancelled is stopped too. Cancelled before its first listing (waiting for its turn after a
        triggerer restart, or listing), the trigger does not know the jobs an earlier trigger of this try
        started: it lists them, and stops them.
        """
        if not hasattr(self, "_jobs"):
            return
        await self._close()
        running = self._running_jobs()
        if self._listed and not running:
            return
        now = await self.job_trigger_for("").task_now()  # the task's state, whatever the job
        own_try = getattr(getattr(self, "task_instance", None), "try_number", None)
        if not job_abandoned(now.state, now.try_number, own_try):
            self.log.info("The task's state is %s: the group's %s left running", now.state, self.noun)
            return
        if not self._listed:
            running = await self._live_jobs_up_to_this_try()
        await self._stop_jobs(running, reason)

    async def _live_jobs_up_to_this_try(self) -> list[str]:
        """The live jobs of this task instance's tries up to this one, as listed now (none if it cannot list)."""
        try:
            found = await self._with_retries("list the group's jobs", self.find_jobs, time.time() + LOOKUP_SECONDS)
        except (DeadlineReached, RejectedError) as error:
            self.log.error("Could not list the group's %s to stop them, which may still run: %s", self.noun, error)
            return []
        return [job.job_id for job in found if job.active and job.try_number <= self.try_number]
