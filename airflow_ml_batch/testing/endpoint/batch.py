"""AWS Batch (REST-JSON): SubmitJob, DescribeJobs, ListJobs, TerminateJob.

A job is a ``JobDetail`` dict a test scripts (:meth:`Batch.add_job`, :meth:`Batch.set_job`), or one a
:class:`~.core.Runner` runs: its state, timestamps, exit code and attempt then come from the run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .core import ACCOUNT, REGION, AwsError, Call, Faults, Run, Runner, ms

QUEUE = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/models"
DEFINITION = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/forecast:1"
STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
#: Where each state before RUNNING begins, as a fraction of the time to the job's start.
PHASES = (("SUBMITTED", 0.0), ("RUNNABLE", 0.2), ("STARTING", 0.6))
LOG_GROUP = "/aws/batch/job"


def _name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _named(name: str, patterns: set[str]) -> bool:
    """ListJobs' JOB_NAME filter: case-insensitive, and a value ending in ``*`` matches names it begins."""
    name = name.lower()
    return any(name.startswith(p[:-1].lower()) if p.endswith("*") else name == p.lower() for p in patterns)


def definition_arn(definition: str) -> str:
    """A job definition's ARN with its revision, from the name, ``name:revision`` or ARN SubmitJob was given
    (a name alone: revision 1)."""
    if definition.startswith("arn:"):
        return definition
    name, _, revision = definition.partition(":")
    return f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/{name}:{revision or 1}"


class Batch:
    """The Batch service's state: jobs, their runs, and who described or terminated them.

    ``faults``: the endpoint's fault switches (``list_lag_seconds``).
    """

    def __init__(self, lock: threading.RLock, runner: Runner | None = None, faults: Faults | None = None) -> None:
        self.lock = lock
        #: how SubmitJob's jobs run; ``None``: they keep the status a test gives them
        self.runner = runner
        self.faults = faults or Faults()
        self.jobs: dict[str, dict[str, Any]] = {}
        #: when each job was created (epoch seconds): ListJobs lists it ``list_lag_seconds`` later
        self.created: dict[str, float] = {}
        self.runs: dict[str, Run] = {}
        #: job ids DescribeJobs does not return (eventual consistency, or a job that is gone)
        self.hidden: set[str] = set()
        #: the status SubmitJob gives new jobs without a runner
        self.submitted_status = "RUNNABLE"
        #: called with each SubmitJob request: the new job's fields (``status``, ``container``, ...), or
        #: ``{"reject": message}`` to answer with a ClientException
        self.on_submit: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.submits: dict[str, int] = {}  # SubmitJob calls answered, per job name
        self.terminated: list[str] = []  # job ids, in the order TerminateJob reached them
        self.terminated_by: dict[str, str] = {}  # job id -> caller ("worker" without a caller prefix)
        self.describers: dict[str, dict[str, list[float]]] = {}  # job id -> caller -> [first, last] describe

    # -- scripting -----------------------------------------------------------------------------------------

    def add_job(self, status: str = "RUNNABLE", **fields: Any) -> str:
        """Create a job as if SubmitJob had (``fields`` are ``JobDetail`` fields); returns its id."""
        job_id = str(fields.pop("jobId", uuid.uuid4()))
        with self.lock:
            self.created[job_id] = time.time()
            self.jobs[job_id] = {
                "jobId": job_id,
                "jobName": fields.pop("jobName", "job"),
                "jobArn": f"arn:aws:batch:{REGION}:{ACCOUNT}:job/{job_id}",
                "jobQueue": fields.pop("jobQueue", QUEUE),
                "jobDefinition": fields.pop("jobDefinition", DEFINITION),
                "status": status,
                "createdAt": ms(time.time()),
                "tags": fields.pop("tags", {}),
                "attempts": [],
                "container": {},
                **fields,
            }
        return job_id

    def add_array_job(self, size: int, status: str = "PENDING", child_status: str = "RUNNABLE", **fields: Any) -> str:
        """Create an array parent and its ``size`` children (``<parent>:<index>``); returns the parent's id.

        DescribeJobs counts the children's states into the parent's ``arrayProperties.statusSummary``.
        """
        parent = self.add_job(status, arrayProperties={"size": size}, **fields)
        for index in range(size):
            self.add_job(
                child_status,
                jobId=f"{parent}:{index}",
                jobName=self.jobs[parent]["jobName"],
                arrayProperties={"index": index},
            )
        return parent

    def set_job(self, job_id: str, **fields: Any) -> None:
        """Change a job's fields (``status=...``, ``container=...``)."""
        with self.lock:
            self.jobs[job_id].update(fields)

    def run_job(
        self,
        name: str,
        queue: str = QUEUE,
        definition: str = DEFINITION,
        tags: dict[str, str] | None = None,
        request: dict[str, Any] | None = None,
    ) -> str:
        """Create a job the runner runs, as SubmitJob does (``request``: the rest of its request); returns its id."""
        if self.runner is None:
            raise RuntimeError("the endpoint has no runner")
        tags = dict(tags or {})
        request = {**(request or {}), "jobName": name, "jobQueue": queue, "jobDefinition": definition, "tags": tags}
        run = self.runner.start("job", name, request)
        fields = {key: request[key] for key in ("parameters", "retryStrategy") if request.get(key)}
        arn = definition_arn(definition)
        job_id = self.add_job("SUBMITTED", jobName=name, jobQueue=queue, jobDefinition=arn, tags=tags, **fields)
        with self.lock:
            self.runs[job_id] = run
            self.jobs[job_id]["createdAt"] = ms(run.created)
        return job_id

    def status(self, job_id: str, now: float) -> str:
        run = self.runs.get(job_id)
        if run is None:
            return str(self.jobs[job_id]["status"])
        if now >= run.ends:
            return "SUCCEEDED" if run.exit_code() == 0 else "FAILED"
        if now >= run.started:
            return "RUNNING"
        if run.started == float("inf"):  # waiting for capacity
            return "RUNNABLE"
        elapsed = (now - run.created) / (run.started - run.created)
        return next(name for name, start in reversed(PHASES) if elapsed >= start)

    def summary(self, job_id: str, now: float) -> dict[str, Any]:
        """The fields ListJobs returns (``JobSummary``)."""
        job = self.jobs[job_id]
        keys = ("jobArn", "jobId", "jobName", "createdAt", "status", "statusReason", "jobDefinition", "arrayProperties")
        summary = {key: job[key] for key in keys if key in job}
        run = self.runs.get(job_id)
        if run is not None:
            summary["status"] = status = self.status(job_id, now)
            if now >= run.started:
                summary["startedAt"] = ms(run.started)
            if status in ("SUCCEEDED", "FAILED"):
                summary["stoppedAt"] = ms(run.ends)
                summary["statusReason"] = run.reason
        return summary

    def detail(self, job_id: str, now: float) -> dict[str, Any]:
        """The fields DescribeJobs returns (``JobDetail``)."""
        run = self.runs.get(job_id)
        if run is None:
            return self._with_status_summary(self.jobs[job_id])
        detail = self.jobs[job_id] | self.summary(job_id, now)
        detail["container"] = dict(run.container)
        detail["attempts"] = list(run.earlier_attempts)
        if now < run.started:
            return detail
        stream = f"forecast/default/{job_id.replace('-', '')}"
        detail["container"]["logStreamName"] = stream
        if "stoppedAt" in detail:
            exit_code = run.exit_code()
            detail["container"]["exitCode"] = exit_code
            detail["attempts"] += [
                {
                    "container": {"exitCode": exit_code, "logStreamName": stream, "reason": run.reason},
                    "startedAt": detail["startedAt"],
                    "stoppedAt": detail["stoppedAt"],
                    "statusReason": run.reason,
                }
            ]
        return detail

    def _with_status_summary(self, job: dict[str, Any]) -> dict[str, Any]:
        size = job.get("arrayProperties", {}).get("size")
        if size is None:
            return job
        summary = dict.fromkeys(STATUSES, 0)
        for index in range(size):
            child = self.jobs.get(f"{job['jobId']}:{index}")
            if child is not None:
                summary[child["status"]] += 1
        return {**job, "arrayProperties": {**job["arrayProperties"], "statusSummary": summary}}

    def log_stream(self, stream: str) -> Run | None:
        """The run whose container logs to ``stream``, if any."""
        job_id = stream.rpartition("/")[2]
        for candidate in (job_id, str(uuid.UUID(job_id)) if len(job_id) == 32 else ""):
            if candidate in self.runs:
                return self.runs[candidate]
        return None

    # -- the API ---------------------------------------------------------------------------------------------

    def operations(self) -> dict[str, Callable[[Call], dict[str, Any]]]:
        return {
            "SubmitJob": self.submit_job,
            "DescribeJobs": self.describe_jobs,
            "ListJobs": self.list_jobs,
            "TerminateJob": self.terminate_job,
        }

    def submit_job(self, call: Call) -> dict[str, Any]:
        body = call.body
        if self.runner is not None:
            job_id = self.run_job(
                body["jobName"],
                body.get("jobQueue", QUEUE),
                body.get("jobDefinition", DEFINITION),
                body.get("tags"),
                request=body,
            )
        else:
            fields = {"status": self.submitted_status, **(self.on_submit(body) if self.on_submit else {})}
            if "reject" in fields:
                raise AwsError(400, "ClientException", fields["reject"])
            job_id = self.add_job(
                jobName=body["jobName"], jobQueue=body["jobQueue"], tags=body.get("tags", {}), **fields
            )
        self.submits[body["jobName"]] = self.submits.get(body["jobName"], 0) + 1
        return {"jobArn": self.jobs[job_id]["jobArn"], "jobName": body["jobName"], "jobId": job_id}

    def describe_jobs(self, call: Call) -> dict[str, Any]:
        ids = call.body.get("jobs") or []
        if len(ids) > 100:
            raise AwsError(400, "ClientException", "jobs: Member must have length less than or equal to 100")
        now = time.time()
        found = [i for i in ids if i in self.jobs and i not in self.hidden]
        for job_id in found:
            span = self.describers.setdefault(job_id, {}).setdefault(call.caller, [now, now])
            span[1] = now
        return {"jobs": [self.detail(i, now) for i in found]}

    def list_jobs(self, call: Call) -> dict[str, Any]:
        body, now = call.body, time.time()
        # As in AWS: with a JOB_NAME filter, jobs of every status are listed; without jobStatus, RUNNING ones.
        names = {v for f in body.get("filters") or [] if f.get("name") == "JOB_NAME" for v in f.get("values", [])}
        wanted = body.get("jobStatus", "RUNNING")
        queue = body.get("jobQueue")
        parent = body.get("arrayJobId")
        lag = self.faults.list_lag_seconds  # ListJobs is eventually consistent
        listed_before = now - lag if lag else float("inf")
        matching = [
            self.summary(job_id, now)
            for job_id, job in self.jobs.items()
            if self.created.get(job_id, 0.0) <= listed_before
            and (_named(job["jobName"], names) if names else self.status(job_id, now) == wanted)
            and (queue is None or _name(queue) == _name(job["jobQueue"]))
            and (parent is None or job_id.startswith(f"{parent}:"))
        ]
        start = int(body.get("nextToken") or 0)
        end = start + int(body.get("maxResults") or 100)
        page: dict[str, Any] = {"jobSummaryList": matching[start:end]}
        if end < len(matching):
            page["nextToken"] = str(end)
        return page

    def terminate_job(self, call: Call) -> dict[str, Any]:
        job_id = call.body.get("jobId", "")
        if job_id not in self.jobs:
            raise AwsError(400, "ClientException", f"Job {job_id} not found")
        self.terminated.append(job_id)
        self.terminated_by[job_id] = call.caller or "worker"
        reason = call.body.get("reason", "Terminated")
        run = self.runs.get(job_id)
        if run is not None:
            run.stop(time.time(), reason)
        elif self.jobs[job_id]["status"] not in ("SUCCEEDED", "FAILED"):
            self.jobs[job_id].update(status="FAILED", statusReason=reason)
        return {}
