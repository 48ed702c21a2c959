"""AWS Batch: the hook, and the pure functions that build requests and read jobs (no I/O in them)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from airflow_ml_batch.hooks.base import AwsServiceHook, with_log_tail

if TYPE_CHECKING:
    from mypy_boto3_batch import BatchClient

#: Job states in which the job may still run; SUCCEEDED and FAILED are final.
ACTIVE_STATES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"})
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED"})
#: The log group Batch writes to unless the job definition's logConfiguration names another.
DEFAULT_LOG_GROUP = "/aws/batch/job"

_INVALID_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


def job_name_for(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """A valid, deterministic Batch job name for a task instance (at most 128 of ``[A-Za-z0-9_-]``).

    The same task instance always gets the same name, so a retry can find the job of an earlier try;
    a short hash of the whole key keeps names of different runs and map indexes apart after truncation.
    """
    key = f"{dag_id}\n{task_id}\n{run_id}\n{map_index}"
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:10]
    readable = _INVALID_NAME_CHARACTERS.sub("-", f"{dag_id}-{task_id}").strip("-_") or "job"
    suffix = f"-{map_index}-{digest}" if map_index >= 0 else f"-{digest}"
    return readable[: 128 - len(suffix)] + suffix


def valid_job_name(name: str) -> bool:
    """Whether AWS Batch accepts ``name`` as a job name."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", name))


def submit_job_request(
    *,
    job_name: str,
    job_queue: str,
    job_definition: str,
    parameters: dict[str, str] | None = None,
    container_overrides: dict[str, Any] | None = None,
    command: list[str] | None = None,
    environment: dict[str, str] | None = None,
    vcpus: float | None = None,
    memory: int | None = None,
    gpus: int | None = None,
    retry_strategy: dict[str, Any] | None = None,
    timeout: int | None = None,
    array_size: int | None = None,
    depends_on: list[dict[str, Any]] | None = None,
    share_identifier: str | None = None,
    scheduling_priority: int | None = None,
    tags: dict[str, str] | None = None,
    submit_job_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SubmitJob's kwargs: the shorthands folded into ``containerOverrides``, tags propagated to tasks.

    ``command``, ``environment`` (a mapping), ``vcpus``, ``memory`` (MiB) and ``gpus`` override the same
    entries of ``container_overrides``; ``timeout`` is in seconds; ``submit_job_kwargs`` passes anything
    else through to SubmitJob as is, and wins over everything.
    """
    overrides = dict(container_overrides or {})
    if command is not None:
        overrides["command"] = list(command)
    if environment:
        kept = [e for e in overrides.get("environment", []) if e["name"] not in environment]
        overrides["environment"] = kept + [{"name": k, "value": str(v)} for k, v in environment.items()]
    resources = {"VCPU": vcpus, "MEMORY": memory, "GPU": gpus}
    if any(value is not None for value in resources.values()):
        requested = {kind: _number(value) for kind, value in resources.items() if value is not None}
        kept = [r for r in overrides.get("resourceRequirements", []) if r["type"] not in requested]
        overrides["resourceRequirements"] = kept + [{"type": k, "value": v} for k, v in requested.items()]
    optional = {
        "parameters": parameters,
        "containerOverrides": overrides or None,
        "retryStrategy": retry_strategy,
        "timeout": {"attemptDurationSeconds": int(timeout)} if timeout else None,
        "arrayProperties": {"size": int(array_size)} if array_size else None,
        "dependsOn": depends_on,
        "shareIdentifier": share_identifier,
        "schedulingPriorityOverride": scheduling_priority,
    }
    return {
        "jobName": job_name,
        "jobQueue": job_queue,
        "jobDefinition": job_definition,
        **{key: value for key, value in optional.items() if value is not None},
        "tags": dict(tags or {}),
        "propagateTags": True,
        **(submit_job_kwargs or {}),
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _iso(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat()


def log_location(job: dict[str, Any]) -> tuple[str, str | None]:
    """``(log group, log stream)`` of a described job; the stream is ``None`` until the job starts."""
    container = job.get("container") or {}
    options = (container.get("logConfiguration") or {}).get("options") or {}
    stream = container.get("logStreamName") or next(
        (a["container"].get("logStreamName") for a in reversed(job.get("attempts") or []) if a.get("container")),
        None,
    )
    return options.get("awslogs-group", DEFAULT_LOG_GROUP), stream


def summarize_job(job: dict[str, Any]) -> dict[str, Any]:
    """The task's result: a JSON-serializable digest of one DescribeJobs entry."""
    container = job.get("container") or {}
    started, stopped = job.get("startedAt"), job.get("stoppedAt")
    log_group, log_stream = log_location(job)
    return {
        "job_id": job["jobId"],
        "job_name": job.get("jobName"),
        "job_queue": job.get("jobQueue"),
        "status": job.get("status"),
        "status_reason": job.get("statusReason"),
        "exit_code": container.get("exitCode"),
        "attempts": [
            {
                "started_at": _iso(attempt.get("startedAt")),
                "stopped_at": _iso(attempt.get("stoppedAt")),
                "exit_code": (attempt.get("container") or {}).get("exitCode"),
                "reason": (attempt.get("container") or {}).get("reason") or attempt.get("statusReason"),
            }
            for attempt in job.get("attempts") or []
        ],
        "started_at": _iso(started),
        "stopped_at": _iso(stopped),
        "duration_seconds": (stopped - started) / 1000 if started and stopped else None,
        "log_group": log_group,
        "log_stream": log_stream,
    }


def describe_failure(summary: dict[str, Any], log_tail: list[str] | None = None) -> str:
    """A failure message that says why: status reason, exit code, each attempt's reason, the log tail."""
    lines = [
        f"AWS Batch job {summary['job_name']} ({summary['job_id']}) {summary['status']}: "
        f"{summary.get('status_reason') or 'no reason given'}; exit code {summary.get('exit_code')}"
    ]
    for number, attempt in enumerate(summary.get("attempts") or [], start=1):
        lines.append(f"  attempt {number}: exit code {attempt['exit_code']}, {attempt['reason'] or 'no reason'}")
    return with_log_tail(lines, summary, log_tail)


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
