"""Start a per-model job from its trigger: wait for the one the task instance has, or submit it, once.

A task whose operator submits from the trigger (``submit_from_trigger``) spends its worker run on deferring
only; the trigger then finds the jobs named for the task instance (one listing), waits for this try's job
(a triggerer restart), re-attaches to an earlier try's (``reattach``) or submits one, and stops every other
live job of the task instance. A submission is sent once (botocore's retries off): after a lost answer the job
is looked for by its name before it is sent again, and once the job runs, one later look stops a second job
the listing showed late. A cancel during the submission waits for the call in flight, so that what it
started is known and stopped when the task no longer waits for it.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from airflow_ml_batch.jobs.batch import LOOKUP_SECONDS
from airflow_ml_batch.jobs.common import try_of
from airflow_ml_batch.jobs.errors import answer_lost, backoff, error_text, is_throttling, is_transient
from airflow_ml_batch.triggers.submission import (
    CAPACITY_TRIES,
    IN_FLIGHT_WAIT,
    DeadlineReached,
    NoCapacity,
    RejectedError,
    SubmitPacer,
    pacing_turn,
)

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.base import AwsServiceHook
    from airflow_ml_batch.triggers.base import JobSettings

Result = TypeVar("Result")

#: Seconds a call may keep failing (throttling aside, which only slows it) before the task fails with its error.
START_PATIENCE = 300.0


class AnswerLost(Exception):
    """A call that starts a job failed after it may have reached AWS: the job may exist."""


class StartsJob:
    """Re-attach or submit from the trigger (mixed into :class:`~airflow_ml_batch.triggers.base.WaitForJobTrigger`).

    ``start`` (serialized with the trigger) holds what the operator gave: ``request`` (the call's keywords, its
    name and task-instance tags included), ``try_number`` and ``reattach_tries`` (``[first, stop)`` of the
    earlier tries whose live job may be waited for; empty: stop them).
    """

    # what the trigger gives
    log: Any
    noun: ClassVar[str]
    settings: JobSettings
    job_id: str | None
    start: dict[str, Any] | None
    #: the account's published rate of the call that starts a job, per second
    start_rate: ClassVar[float]
    _event: Callable[..., Any]

    if TYPE_CHECKING:

        @property
        def hook(self) -> AwsServiceHook: ...

    # -- what each service defines ---------------------------------------------------------------------

    @abstractmethod
    async def named_jobs(self, client: Any) -> list[dict[str, Any]]:
        """Every job named for the task instance (of any try, live or ended), with its tags.

        :raises RejectedError: AWS refused the listing (a wrong queue, say)."""

    @abstractmethod
    async def send_start(self, client: Any) -> str:
        """Start the job (``start["request"]``); its id.

        :raises RejectedError: AWS refused the request.
        :raises NoCapacity: it started nothing for want of capacity (tried again, :meth:`place_again`)."""

    @abstractmethod
    def start_choice(self, jobs: list[dict[str, Any]], current: str | None) -> tuple[str | None, list[str]]:
        """The job to wait for among ``jobs`` (``None``: submit) and the live ones to stop (see
        :func:`~airflow_ml_batch.jobs.common.start_choice`)."""

    @abstractmethod
    def is_live(self, job: dict[str, Any]) -> bool:
        """Whether ``job`` (one of :meth:`named_jobs`) may still run."""

    @abstractmethod
    async def stop_other(self, client: Any, job_id: str, reason: str) -> None:
        """Stop ``job_id``, a job of the task instance that is not waited for."""

    #: a start sent again after a lost answer starts no second job (RunTask's ``clientToken``): it is sent again
    #: at once; otherwise the job is looked for by its name first
    resend_is_safe: ClassVar[bool] = False

    def place_again(self, placement: int) -> None:
        """Ready the request for its ``placement``-th try after one that found no capacity
        (:class:`~airflow_ml_batch.triggers.submission.NoCapacity`, which only a service that raises it needs)."""

    @property
    def capacity_tries(self) -> int:
        """Tries of a start that finds no capacity before the task fails (``start["capacity_tries"]``)."""
        return int((self.start or {}).get("capacity_tries") or CAPACITY_TRIES)

    # -- shared -----------------------------------------------------------------------------------------

    async def _start(self) -> Any:
        """Start the job and set ``job_id``; the event that ends the task if AWS refused it or the deadline came."""
        try:
            job_id = await self.start_job()
        except RejectedError as rejected:
            self.log.error("%s", rejected)
            return self._event("failed", str(rejected))
        if job_id is None:
            return self._event("timeout", f"{self.noun} not submitted: the task's execution_timeout was reached")
        self.job_id = job_id
        return None

    @property
    def try_number(self) -> int:
        return int((self.start or {})["try_number"])

    @property
    def reattach_tries(self) -> range:
        first, stop = (self.start or {}).get("reattach_tries") or (1, 1)
        return range(int(first), int(stop))

    async def start_job(self) -> str | None:
        """Wait for the job the task instance has, or submit it; ``None`` if the deadline came first.

        :raises RejectedError: AWS refused the listing or the submission (the message says why and what).
        """
        self._sending: asyncio.Future[Any] | None = None
        self._sweep: asyncio.Task[None] | None = None
        try:
            jobs = await self._call(self.list_operation, self.named_jobs)
            keep, others = self.start_choice(jobs, None)
            why = "a later try of the task submits its own" if keep is None else f"a second job beside {keep}"
            await self._stop_others(others, why)
            if keep is not None:
                self.log.info("Waiting for %s %s, which this task instance started before", self.noun, keep)
                return keep
            placement, losses, first_loss = 1, 0, 0.0
            while True:
                try:
                    job_id = await self._call(self.start_operation, self.send_start, send_once=True)
                except AnswerLost as lost:
                    losses, first_loss = losses + 1, first_loss or time.monotonic()
                    if time.monotonic() - first_loss > START_PATIENCE:  # what it may have started is stopped
                        await self._stop_own_jobs(f"{self.start_operation} kept failing")
                        raise RejectedError(
                            f"{self.start_operation} kept failing for {START_PATIENCE:.0f}s ({losses} tries): {lost}"
                        ) from lost
                    if self.resend_is_safe:
                        self.log.warning(
                            "%s: %s; sending it again (the same request starts no second job)",
                            self.start_operation,
                            lost,
                        )
                        await asyncio.sleep(backoff(losses))
                        continue
                    self.log.warning("Submitting: %s; looking for the job before sending it again", lost)
                    found = await self._look_for_own_job()
                    if found is None:
                        self.log.warning("No job found after %.0fs; submitting again", LOOKUP_SECONDS)
                        continue
                    job_id = found
                except NoCapacity as no_capacity:
                    if placement >= self.capacity_tries:
                        raise RejectedError(f"no capacity after {placement} tries: {no_capacity}") from no_capacity
                    self.log.warning("%s: %s; trying again", self.start_operation, no_capacity)
                    await asyncio.sleep(backoff(placement, first=1.0, longest=60.0))
                    placement += 1
                    self.place_again(placement)
                    continue
                break
        except DeadlineReached:
            if self._sending is not None:  # a submission went out: what it may have started is stopped
                await self._stop_own_jobs("the task's execution_timeout was reached")
            return None
        request = (self.start or {})["request"]
        self.log.info("Submitted %s %s (%s)", self.noun, job_id, request.get("jobName") or request.get("startedBy"))
        self._sweep = asyncio.ensure_future(self._stop_late_duplicates(job_id))
        return job_id

    #: the call that starts a job, which names its pacer
    start_operation: ClassVar[str]
    #: the call that lists the task instance's jobs (:meth:`named_jobs`), which names its pacer
    list_operation: ClassVar[str]

    async def _call(
        self,
        operation: str,
        work: Callable[[Any], Awaitable[Result]],
        send_once: bool = False,
        until_deadline: bool = True,
    ) -> Result:
        """``work(client)``, paced per ``operation`` for the whole process, again after throttling (until the
        deadline) and transient errors (for :data:`START_PATIENCE`). The call runs in a task of its own, which a
        cancel of the trigger does not interrupt (a submission's answer is then still known: :meth:`settle_start`).

        :raises AnswerLost: ``send_once`` and the call failed after it may have reached AWS.
        :raises RejectedError: AWS refused the call, or it kept failing for :data:`START_PATIENCE`.
        :raises DeadlineReached: the task's deadline came first (``until_deadline``; else it does not count).
        """
        pacer = SubmitPacer.of((self.hook.client_key, operation), self.start_rate)
        failures, failing_since = 0, time.monotonic()
        while True:
            await pacer.wait(pacing_turn(self))
            if until_deadline and self.settings.deadline is not None and time.time() >= self.settings.deadline:
                raise DeadlineReached
            call = asyncio.ensure_future(self._with_client(work, send_once))
            if send_once:
                self._sending = call
            try:
                return await asyncio.shield(call)
            except RejectedError:
                raise
            except Exception as error:
                if not is_transient(error):
                    raise
                if send_once and answer_lost(error):
                    raise AnswerLost(error_text(error)) from error
                failures += 1
                if is_throttling(error):
                    pacer.throttled()
                elif time.monotonic() - failing_since > START_PATIENCE:
                    raise RejectedError(
                        f"{operation} kept failing for {START_PATIENCE:.0f}s ({failures} tries): {error_text(error)}"
                    ) from error
                self.log.warning("%s: %s; trying again", operation, error_text(error))
                await asyncio.sleep(backoff(failures))

    async def _with_client(self, work: Callable[[Any], Awaitable[Result]], send_once: bool) -> Result:
        async with self.hook.async_client(send_once=send_once) as client:
            return await work(client)

    async def _own_jobs(self, until_deadline: bool = True) -> list[dict[str, Any]]:
        """This try's jobs, live or ended, as listed now."""
        jobs = await self._call(self.list_operation, self.named_jobs, until_deadline=until_deadline)
        return [job for job in jobs if try_of(job) == self.try_number]

    async def _stop_own_jobs(self, reason: str) -> None:
        """Stop this try's live jobs as listed now (a submission went out when the deadline came)."""
        try:
            live = [str(job["jobId"]) for job in await self._own_jobs(until_deadline=False) if self.is_live(job)]
            await self._stop_others(live, reason, until_deadline=False)
        except Exception as error:
            self.log.error("Could not stop the job a submission may have started: %s", error_text(error))

    async def _look_for_own_job(self) -> str | None:
        """This try's job after a lost answer, for up to :data:`LOOKUP_SECONDS` (the listing lags)."""
        deadline, pause = time.monotonic() + LOOKUP_SECONDS, 1.0
        while True:
            own = await self._own_jobs()
            if own:
                job_id = str(own[0]["jobId"])
                self.log.info("%s %s was submitted (its answer was lost)", self.noun, job_id)
                return job_id
            if time.monotonic() + pause > deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 8.0)

    async def _stop_others(self, job_ids: list[str], why: str, until_deadline: bool = True) -> None:
        for job_id in job_ids:
            self.log.info("Stopping %s %s of this task instance: %s", self.noun, job_id, why)

            async def stop(client: Any, job_id: str = job_id) -> None:
                await self.stop_other(client, job_id, why)

            await self._call("stop", stop, until_deadline=until_deadline)

    async def _stop_late_duplicates(self, job_id: str) -> None:
        """Look once more, :data:`LOOKUP_SECONDS` twice over after the submission: the listing at the start may
        not have shown a job that an earlier trigger of this try had just submitted; stop it if so."""
        await asyncio.sleep(2 * LOOKUP_SECONDS)
        try:
            jobs = await self._call(self.list_operation, self.named_jobs)
            _, others = self.start_choice(jobs, job_id)
            await self._stop_others(others, f"a second job beside {job_id}")
        except Exception as error:  # the wait goes on; the next try stops what is left
            self.log.warning("Could not look for a second job of this task instance: %s", error_text(error))

    def end_start(self) -> None:
        """The trigger ends: no later look."""
        sweep = getattr(self, "_sweep", None)
        if sweep is not None:
            sweep.cancel()

    async def settle_start(self) -> str | None:
        """After a cancel during the start: the job the submission in flight started, once its answer is in (or
        this try's job, looked for when the answer was lost); ``None`` if it started none.

        Cancelled before sending anything (waiting for its turn or listing, after a triggerer restart), it
        lists the task instance's jobs once: the one it would have waited for, if any.
        """
        sending = getattr(self, "_sending", None)
        if sending is None:
            try:
                jobs = await self._call(self.list_operation, self.named_jobs, until_deadline=False)
            except Exception as listing_error:
                self.log.error("Could not list the task instance's jobs to stop them: %s", error_text(listing_error))
                return None
            return self.start_choice(jobs, None)[0]
        done, _ = await asyncio.wait({sending}, timeout=IN_FLIGHT_WAIT)
        if done and not sending.cancelled():
            error = sending.exception()
            if error is None:
                return str(sending.result())
            if not answer_lost(error):  # refused, or never sent: nothing started
                return None
        try:
            return await self._look_for_own_job()
        except Exception as error:
            self.log.error("Could not look for the job a cancelled submission may have started: %s", error)
            return None
