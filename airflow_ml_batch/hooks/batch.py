"""AWS Batch through an Airflow ``aws`` connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.jobs.batch import ACTIVE_STATES, LOOKUP_SECONDS, submitted_job
from airflow_ml_batch.jobs.errors import answer_lost, backoff, error_text, is_transient

log = logging.getLogger(__name__)

#: Seconds SubmitJob is tried again after throttling or a lost answer before the error is raised.
SUBMIT_SECONDS = 600.0

if TYPE_CHECKING:
    from mypy_boto3_batch import BatchClient


class BatchHook(AwsServiceHook):
    """AWS Batch through an Airflow ``aws`` connection: ``hook.conn`` (sync) and ``hook.async_client()``.

    Takes the arguments of :class:`~airflow_ml_batch.hooks.base.AwsServiceHook`.
    """

    service = "batch"
    hook_name = "AWS Batch (airflow-ml-batch)"

    @property
    def conn(self) -> BatchClient:
        """The cached sync boto3 Batch client."""
        return cast("BatchClient", super().conn)

    def describe_jobs(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        """DescribeJobs for any number of ids, 100 per call (the API's limit); unknown ids are left out."""
        ids = list(dict.fromkeys(job_ids))
        return [
            dict(job)
            for start in range(0, len(ids), 100)
            for job in self.conn.describe_jobs(jobs=ids[start : start + 100])["jobs"]
        ]

    def submit_job(
        self,
        request: Mapping[str, Any],
        *,
        lookup_seconds: float = LOOKUP_SECONDS,
        give_up_after: float = SUBMIT_SECONDS,
    ) -> str:
        """SubmitJob, starting one job whatever AWS or the network do; the job's id.

        SubmitJob has no idempotency token, so each call is sent once (botocore's retries off). Throttling and
        connections never made are tried again with backoff; after a lost answer (a 5xx, a read timeout, a
        dropped connection) the job is looked for by its name and tags (:meth:`find_submitted_job`) for up to
        ``lookup_seconds`` before the request is sent again.

        :raises botocore.exceptions.ClientError: AWS refused the request, or transient errors lasted
            ``give_up_after`` seconds.
        """
        started, failures = time.monotonic(), 0
        while True:
            try:
                return str(self.send_once_conn.submit_job(**request)["jobId"])
            except Exception as error:
                if not is_transient(error) or time.monotonic() - started > give_up_after:
                    raise
                failures += 1
                if answer_lost(error):
                    log.warning("SubmitJob of %s: %s; looking for the job", request["jobName"], error_text(error))
                    job_id = self.find_submitted_job(request, within=lookup_seconds)
                    if job_id is not None:
                        log.info("Job %s (%s) was submitted: its answer was lost", job_id, request["jobName"])
                        return job_id
                    log.warning("No job %s after %.0fs: submitting it again", request["jobName"], lookup_seconds)
                else:
                    log.warning("SubmitJob of %s: %s; trying again", request["jobName"], error_text(error))
                time.sleep(backoff(failures, longest=30.0))

    def find_submitted_job(self, request: Mapping[str, Any], *, within: float = LOOKUP_SECONDS) -> str | None:
        """The id of a job ``request`` started (same queue, name and tags), looked for for up to ``within`` seconds.

        ListJobs may not list a job created a moment ago: the listing is read again with backoff until the job
        shows or ``within`` has passed. ``None``: no such job.
        """
        deadline, pause = time.monotonic() + within, 1.0
        while True:
            try:
                summaries = self.send_once_conn.list_jobs(
                    jobQueue=request["jobQueue"], filters=[{"name": "JOB_NAME", "values": [request["jobName"]]}]
                )["jobSummaryList"]
                described = self.describe_jobs(s["jobId"] for s in summaries) if summaries else []
                job = submitted_job(described, request)
                if job is not None:
                    return str(job["jobId"])
            except Exception as error:
                if not is_transient(error):
                    raise
                log.warning("Looking for job %s: %s", request["jobName"], error_text(error))
            if time.monotonic() + pause > deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 8.0)

    def find_active_jobs(self, job_queue: str, job_name: str, tags: dict[str, str]) -> list[dict[str, Any]]:
        """Jobs named ``job_name`` in ``job_queue`` that still run and carry every tag in ``tags``.

        Newest first. Used to re-attach a retry to the job of an earlier try instead of submitting again.
        """
        summaries = self.conn.list_jobs(jobQueue=job_queue, filters=[{"name": "JOB_NAME", "values": [job_name]}])[
            "jobSummaryList"
        ]
        candidates = [s["jobId"] for s in summaries if s.get("status") in ACTIVE_STATES]
        if not candidates:
            return []
        jobs = self.conn.describe_jobs(jobs=candidates[:100])["jobs"]
        return sorted(
            (
                dict(job)
                for job in jobs
                if job.get("status") in ACTIVE_STATES and tags.items() <= (job.get("tags") or {}).items()
            ),
            key=lambda job: job.get("createdAt", 0),
            reverse=True,
        )
