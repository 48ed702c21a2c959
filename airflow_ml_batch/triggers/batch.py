"""Wait for an AWS Batch job on the triggerer, through one shared DescribeJobs poller per process."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.jobs.batch import (
    FINAL_STATES,
    describe_failure,
    failed_child_ids,
    failed_children,
    found_job,
    job_is_live,
    job_state,
    start_choice,
    summarize_job,
)
from airflow_ml_batch.jobs.errors import error_message, error_text, is_transient
from airflow_ml_batch.jobs.groups import FoundJob, model_job_name
from airflow_ml_batch.links.batch import BatchJobLink
from airflow_ml_batch.triggers.base import SharedPoller, WaitForJobTrigger
from airflow_ml_batch.triggers.group import RunGroupTrigger
from airflow_ml_batch.triggers.start import StartsJob
from airflow_ml_batch.triggers.submission import RejectedError

#: SubmitJob calls per second per account and Region that AWS Batch publishes
SUBMIT_JOB_RATE = 50.0


class BatchJobPoller(SharedPoller):
    """Describes up to 100 Batch jobs per DescribeJobs call for every trigger of a (connection, region)."""

    batch_size = 100
    operation = "DescribeJobs"

    async def request(self, client: Any, ids: list[str]) -> Any:
        return await client.describe_jobs(jobs=ids)

    def found(self, answer: Any) -> dict[str, dict[str, Any]]:
        return {job["jobId"]: job for job in answer["jobs"]}

    @staticmethod
    def state_of(description: dict[str, Any]) -> str:
        """The status; for an array parent with its children's counts, so that progress wakes the watcher."""
        return job_state(description)


class BatchJobTrigger(StartsJob, WaitForJobTrigger):
    """Wait for an AWS Batch job to finish; stop it on the deadline or when a user acts on the task.

    Every instance in a triggerer process shares one :class:`BatchJobPoller` per (connection, region),
    so 5000 waiting jobs cost 50 DescribeJobs calls per ``poll_interval``; each job is described at
    its own trigger's ``poll_interval``. The event's payload is
    ``{"status": "success" | "failed" | "timeout" | "missing" | "error", "job_id", "message", "result"}``,
    or a ``TaskSuccessEvent`` with ``end_from_trigger``.

    Every kind of job reports its exit code and log (a multi-node job its main node's; see
    :func:`~airflow_ml_batch.jobs.batch.summarize_job`). An array parent's children counts per state are
    logged each time they change; once a parent has failed, one ListJobs and one DescribeJobs call name its
    failed children (the first :data:`~airflow_ml_batch.jobs.batch.FAILED_CHILDREN_SHOWN`) in the message.

    :param job_id: the Batch job to wait for; ``None`` with ``start``: the one the trigger submits.
    :param start: submit the job from here (``BatchJobOperator(submit_from_trigger=True)``): ``request`` (SubmitJob's
        keywords), ``try_number``, ``reattach_tries``, ``identity`` (the task-instance tags without the try) and
        ``job_id_xcom_key``; see :class:`~airflow_ml_batch.triggers.start.StartsJob`.
    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    :param poll_interval: seconds between two DescribeJobs of this job (each trigger at its own pace).
    :param deadline: epoch seconds after which the job is terminated and the task fails.
    :param end_from_trigger: end a successful task from the triggerer, with no worker run after the job.
    :param xcom_result: with ``end_from_trigger``, push the result as the task's ``return_value``.
    :param missing_grace: seconds a job may be absent from DescribeJobs before it counts as gone.

    Also takes ``log_link``, ``log_tail_lines``, ``collect_metrics``, ``job_logs`` and ``job_log_lines``: see
    :class:`~airflow_ml_batch.triggers.base.WaitForJobTrigger`.
    """

    poller = BatchJobPoller
    hook_class = BatchHook
    noun = "AWS Batch job"
    start_operation = "SubmitJob"
    list_operation = "ListJobs"
    start_rate = SUBMIT_JOB_RATE

    def __init__(self, job_id: str | None = None, start: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if job_id is None and start is None:
            raise ValueError("BatchJobTrigger needs a job_id, or a start to submit the job from")
        self.job_id = job_id
        self.start = start

    def service_kwargs(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "start": self.start}

    async def named_jobs(self, client: Any) -> list[dict[str, Any]]:
        """One ListJobs on the job's name in its queue, one DescribeJobs of those carrying the task-instance tags."""
        start = self.start or {}
        queue, name = start["request"]["jobQueue"], start["request"]["jobName"]
        try:
            listed = await client.list_jobs(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [name]}])
            ids = [s["jobId"] for s in listed["jobSummaryList"] if s.get("jobName") == name][:100]
            jobs = (await client.describe_jobs(jobs=ids))["jobs"] if ids else []
        except ClientError as error:
            if is_transient(error):
                raise
            message = f"AWS Batch could not list the jobs of job_queue={queue!r}: {error_text(error)}"
            raise RejectedError(message) from error
        identity = (start.get("identity") or {}).items()
        return [job for job in jobs if identity <= (job.get("tags") or {}).items()]

    async def send_start(self, client: Any) -> str:
        request = (self.start or {})["request"]
        try:
            return str((await client.submit_job(**request))["jobId"])
        except ClientError as error:
            if is_transient(error):
                raise
            where = f"job_queue={request.get('jobQueue')!r}, job_definition={request.get('jobDefinition')!r}"
            message = f"AWS Batch rejected job {request['jobName']!r} ({where}): {error_message(error)}"
            raise RejectedError(message) from error

    def start_choice(self, jobs: list[dict[str, Any]], current: str | None) -> tuple[str | None, list[str]]:
        return start_choice(jobs, self.try_number, self.reattach_tries, current)

    def is_live(self, job: dict[str, Any]) -> bool:
        return job_is_live(job)

    async def stop_other(self, client: Any, job_id: str, reason: str) -> None:
        await client.terminate_job(jobId=job_id, reason=f"Airflow: {reason}"[:1024])

    def job_link(self) -> tuple[Any, dict[str, Any]] | None:
        return (BatchJobLink(), {"job_id": self.job_id}) if self.start else None

    def is_final(self, description: dict[str, Any]) -> bool:
        return description["status"] in FINAL_STATES

    async def summarize(self, description: dict[str, Any]) -> dict[str, Any]:
        result = summarize_job(description)
        if result["array_size"] is not None and description["status"] == "FAILED":
            result.update(await self._failed_children(description))
        return result

    async def _failed_children(self, parent: dict[str, Any]) -> dict[str, Any]:
        """A failed array's failed children: one ListJobs page (up to 1000), then DescribeJobs of the first few."""
        try:
            async with self.hook.async_client() as client:
                listed = (await client.list_jobs(arrayJobId=self.job_id, jobStatus="FAILED"))["jobSummaryList"]
                ids = failed_child_ids(listed)
                children = (await client.describe_jobs(jobs=ids))["jobs"] if ids else []
        except Exception as error:
            self.log.warning("Could not list the failed children of array job %s", self.job_id, exc_info=True)
            return {"failed_children": None, "failed_children_count": None, "failed_children_error": str(error)}
        return failed_children(parent, children, len(listed))

    def succeeded(self, result: dict[str, Any]) -> bool:
        return bool(result["status"] == "SUCCEEDED")

    def failure_message(self, result: dict[str, Any]) -> str:
        return describe_failure(result)

    async def stop(self, client: Any, reason: str) -> None:
        await client.terminate_job(jobId=self.job_id, reason=f"Airflow: {reason}"[:1024])

    async def describe(self, client: Any) -> dict[str, Any] | None:
        jobs = (await client.describe_jobs(jobs=[self.job_id]))["jobs"]
        return jobs[0] if jobs else None


class BatchFleetTrigger(RunGroupTrigger):
    """Submit and wait for the AWS Batch jobs of a group of models (``BatchFleetOperator``).

    Each model's job is named ``<prefix><index>-<model>-t<try>-a<attempt>``
    (:func:`~airflow_ml_batch.jobs.groups.model_job_name`); one ListJobs on that prefix per job queue finds
    every job the task instance already has. Jobs are described by the shared :class:`BatchJobPoller` and
    summarized as :class:`BatchJobTrigger` does. See :class:`~airflow_ml_batch.triggers.group.RunGroupTrigger`
    for the parameters.
    """

    job_trigger = BatchJobTrigger
    noun = "AWS Batch jobs"
    published_submit_rate = SUBMIT_JOB_RATE

    async def find_jobs(self, client: Any) -> list[FoundJob]:
        prefix = self.group["prefix"]
        found = []
        for queue in sorted({model["request"]["jobQueue"] for model in self.models}):
            paginator = client.get_paginator("list_jobs")
            pages = paginator.paginate(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [f"{prefix}*"]}])
            try:
                async for page in pages:
                    found += [job for s in page["jobSummaryList"] if (job := found_job(prefix, s)) is not None]
            except ClientError as error:
                if is_transient(error):
                    raise
                message = f"AWS Batch could not list the jobs of job_queue={queue!r}: {error_text(error)}"
                raise RejectedError(message) from error
        return found

    def job_name(self, model: dict[str, Any], attempt: int) -> str:
        """The name of ``model``'s job of attempt ``attempt`` in this try."""
        return model_job_name(self.group["prefix"], int(model["index"]), model["label"], self.try_number, attempt)

    async def submit(self, client: Any, model: dict[str, Any], attempt: int, placement: int = 1) -> str:
        request = dict(model["request"])
        name = self.job_name(model, attempt)
        tags = {**request.get("tags", {}), "airflow:try_number": str(self.try_number), "airflow:attempt": str(attempt)}
        try:
            response = await client.submit_job(**{**request, "jobName": name, "tags": tags})
        except ClientError as error:
            if is_transient(error):
                raise
            message = error_message(error)
            where = f"job_queue={request.get('jobQueue')!r}, job_definition={request.get('jobDefinition')!r}"
            raise RejectedError(f"AWS Batch rejected job {name!r} ({where}): {message}") from error
        return str(response["jobId"])

    async def find_submitted(self, client: Any, model: dict[str, Any], attempt: int) -> str | None:
        """One ListJobs on the attempt's job name (unique to the group, model, try and attempt)."""
        name = self.job_name(model, attempt)
        answer = await client.list_jobs(
            jobQueue=model["request"]["jobQueue"], filters=[{"name": "JOB_NAME", "values": [name]}]
        )
        named = [s for s in answer["jobSummaryList"] if s.get("jobName") == name]
        newest = max(named, key=lambda summary: summary.get("createdAt", 0), default=None)
        return None if newest is None else str(newest["jobId"])
