"""AWS Batch through an Airflow ``aws`` connection."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.jobs.batch import ACTIVE_STATES

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
