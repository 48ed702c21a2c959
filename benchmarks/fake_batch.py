"""A scripted, AWS Batch-shaped HTTP endpoint on 127.0.0.1 for benchmarks.

Serves the REST-JSON operations DescribeJobs, SubmitJob, TerminateJob and ListJobs with the real
response shapes. Jobs move SUBMITTED -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED/FAILED on the
wall clock; a fraction of them fails with exit code 1. One token bucket throttles the whole API: over
it, requests get HTTP 429 ``TooManyRequestsException``, as AWS answers them. CloudWatch Logs'
GetLogEvents (a separate service, not throttled here) returns two lines for any stream, for clients
that read a failed job's log tail through the same ``endpoint_url``.

STS AssumeRole (query protocol, ``POST /`` with ``Action=AssumeRole``) hands out credentials that expire
after ``credential_ttl`` seconds; once that fault is on, Batch and Logs calls signed with an unknown or
expired key are answered 403 ``ExpiredTokenException``. Paths may carry a caller prefix
(``/<caller>/v1/describejobs``): an ``endpoint_url`` ending in ``/<caller>`` tells which process asked.

Benchmark routes (not AWS): ``POST /bench/jobs`` with ``{"count": N}`` creates N jobs starting now and
returns their ids; ``GET /bench/jobs`` returns every job's name, timeline and final status;
``GET /bench/stats`` returns the request counters; ``POST /bench/faults`` switches faults on
(:meth:`Faults.update`).

Run it as its own process (it prints its port, then serves until killed or ``--max-seconds``)::

    python benchmarks/fake_batch.py --port 0 --rate 50 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

REGION = "eu-west-1"
ACCOUNT = "123456789012"
QUEUE = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/models"
DEFINITION = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/forecast:1"
EXITED = "Essential container in task exited"
EXPIRED_TOKEN = "The security token included in the request is expired"
#: Where each state before RUNNING begins, as a fraction of the time to the job's start.
PHASES = (("SUBMITTED", 0.0), ("RUNNABLE", 0.2), ("STARTING", 0.6))
#: The job starts RUNNING this far into its duration.
STARTED = 0.25


@dataclass
class Job:
    """One job and its scripted timeline (epoch seconds; ``started`` is ``inf`` if it never started)."""

    job_id: str
    name: str
    queue: str
    definition: str
    created: float
    started: float
    ends: float
    fails: bool
    reason: str = EXITED
    tags: dict[str, str] = field(default_factory=dict)

    def status(self, now: float) -> str:
        if now >= self.ends:
            return "FAILED" if self.fails else "SUCCEEDED"
        if now >= self.started:
            return "RUNNING"
        elapsed = (now - self.created) / (self.started - self.created)
        return next(name for name, start in reversed(PHASES) if elapsed >= start)

    def summary(self, now: float) -> dict[str, Any]:
        """The fields ListJobs returns (``JobSummary``)."""
        status = self.status(now)
        summary: dict[str, Any] = {
            "jobArn": f"arn:aws:batch:{REGION}:{ACCOUNT}:job/{self.job_id}",
            "jobId": self.job_id,
            "jobName": self.name,
            "createdAt": _ms(self.created),
            "status": status,
            "jobDefinition": self.definition,
        }
        if now >= self.started:
            summary["startedAt"] = _ms(self.started)
        if status in ("SUCCEEDED", "FAILED"):
            summary["stoppedAt"] = _ms(self.ends)
            summary["statusReason"] = self.reason
        return summary

    def detail(self, now: float) -> dict[str, Any]:
        """The fields DescribeJobs returns (``JobDetail``)."""
        detail = self.summary(now) | {"jobQueue": self.queue, "attempts": [], "container": {}, "tags": self.tags}
        if now < self.started:
            return detail
        stream = f"forecast/default/{self.job_id.replace('-', '')}"
        detail["container"] = {"logStreamName": stream}
        if "stoppedAt" in detail:
            exit_code = 1 if self.fails else 0
            detail["container"]["exitCode"] = exit_code
            detail["attempts"] = [
                {
                    "container": {"exitCode": exit_code, "logStreamName": stream, "reason": self.reason},
                    "startedAt": detail["startedAt"],
                    "stoppedAt": detail["stoppedAt"],
                    "statusReason": self.reason,
                }
            ]
        return detail


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass
class TokenBucket:
    """``rate`` requests per second, bursts of up to ``capacity``."""

    rate: float
    capacity: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Faults:
    """Fault switches, set through ``POST /bench/faults``; times are epoch seconds."""

    throttle_until: float = 0.0  # every Batch call is answered 429 until then
    unreachable_until: float = 0.0  # every AWS request has its connection reset until then
    hold_map_indexes: set[str] = field(default_factory=set)  # SubmitJob of these tasks answers late
    hold_seconds: float = 0.0
    credential_ttl: float = 0.0  # > 0: AssumeRole credentials expire after this long, and are checked

    def update(self, body: dict[str, Any]) -> None:
        """``throttle_seconds``, ``unreachable_seconds`` (from now), ``hold_submit`` (``{"map_indexes",
        "seconds"}``), ``credential_ttl``."""
        now = time.time()
        if "throttle_seconds" in body:
            self.throttle_until = now + float(body["throttle_seconds"])
        if "unreachable_seconds" in body:
            self.unreachable_until = now + float(body["unreachable_seconds"])
        if "hold_submit" in body:
            self.hold_map_indexes = {str(i) for i in body["hold_submit"]["map_indexes"]}
            self.hold_seconds = float(body["hold_submit"]["seconds"])
        if "credential_ttl" in body:
            self.credential_ttl = float(body["credential_ttl"])


class FakeBatch:
    """The endpoint's state: jobs, the API's token bucket and request counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.duration: float = args.duration
        self.spread: float = args.spread
        self.fail_fraction: float = args.fail_fraction
        self.random = random.Random(args.seed)
        self.bucket = TokenBucket(args.rate, args.burst or args.rate)
        self.jobs: dict[str, Job] = {}
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.describe_times: list[float] = []  # every DescribeJobs request, throttled or not
        self.described_ids = 0
        self.max_ids_per_call = 0
        self.faults = Faults()
        self.submits: Counter[str] = Counter()  # SubmitJob calls answered, per job name
        self.terminated: list[str] = []  # job ids, in the order TerminateJob reached them
        self.terminated_by: dict[str, str] = {}  # job id -> who terminated it (a caller prefix, or "worker")
        self.held: list[dict[str, Any]] = []  # SubmitJob calls held back: job name and id, client port
        self.credentials: dict[str, float] = {}  # access key -> expiry, of AssumeRole credentials
        self.rejected_credentials = 0
        self.describers: dict[str, dict[str, list[float]]] = {}  # job id -> caller -> [first, last] describe

    def create(
        self, name: str, queue: str = QUEUE, definition: str = DEFINITION, tags: dict[str, str] | None = None
    ) -> Job:
        now = time.time()
        duration = self.duration * self.random.uniform(1 - self.spread, 1 + self.spread)
        job = Job(
            job_id=str(uuid.UUID(int=self.random.getrandbits(128), version=4)),
            name=name,
            queue=queue,
            definition=definition,
            created=now,
            started=now + STARTED * duration,
            ends=now + duration,
            fails=self.random.random() < self.fail_fraction,
            tags=dict(tags or {}),
        )
        self.jobs[job.job_id] = job
        return job

    # AWS operations: body in, (HTTP status, body) out.

    def describe_jobs(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ids = body.get("jobs") or []
        self.described_ids += len(ids)
        self.max_ids_per_call = max(self.max_ids_per_call, len(ids))
        if len(ids) > 100:
            return 400, _error("ClientException", "jobs: Member must have length less than or equal to 100")
        now = time.time()
        return 200, {"jobs": [self.jobs[i].detail(now) for i in ids if i in self.jobs]}

    def submit_job(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        job = self.create(
            body["jobName"], body.get("jobQueue", QUEUE), body.get("jobDefinition", DEFINITION), body.get("tags")
        )
        self.submits[job.name] += 1
        return 200, {"jobArn": job.summary(job.created)["jobArn"], "jobName": job.name, "jobId": job.job_id}

    def terminate_job(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        job = self.jobs.get(body.get("jobId", ""))
        if job is None:
            return 400, _error("ClientException", f"Job {body.get('jobId')} not found")
        self.terminated.append(job.job_id)
        now = time.time()
        if job.status(now) not in ("SUCCEEDED", "FAILED"):
            job.ends, job.fails, job.reason = now, True, body.get("reason", "Terminated")
            if now < job.started:
                job.started = float("inf")
        return 200, {}

    def list_jobs(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        now = time.time()
        wanted = body.get("jobStatus", "RUNNING")
        queue = body.get("jobQueue")
        # As in AWS: with a JOB_NAME filter, jobs of every status are listed.
        names = {v for f in body.get("filters") or [] if f.get("name") == "JOB_NAME" for v in f.get("values", [])}
        matching = [
            job.summary(now)
            for job in self.jobs.values()
            if (job.name in names if names else job.status(now) == wanted)
            and queue in (None, job.queue, job.queue.rsplit("/", 1)[-1])
        ]
        start = int(body.get("nextToken") or 0)
        end = start + int(body.get("maxResults") or 100)
        page: dict[str, Any] = {"jobSummaryList": matching[start:end]}
        if end < len(matching):
            page["nextToken"] = str(end)
        return 200, page

    def get_log_events(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        stamp = _ms(time.time())
        lines = [f"model run for {body.get('logStreamName')}", "Traceback: ValueError: bad input"]
        events = [{"timestamp": stamp, "message": line, "ingestionTime": stamp} for line in lines]
        return 200, {"events": events, "nextForwardToken": "f/1", "nextBackwardToken": "b/1"}

    def assume_role(self) -> str:
        """STS AssumeRole's XML answer: fresh keys that expire after ``credential_ttl`` (default 1 h)."""
        self.calls["AssumeRole"] += 1
        key = "ASIA" + secrets.token_hex(8).upper()
        expires = time.time() + (self.faults.credential_ttl or 3600)
        self.credentials[key] = expires
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secrets.token_hex(20)}"
            f"</SecretAccessKey><SessionToken>{secrets.token_hex(32)}</SessionToken><Expiration>{stamp}"
            "</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROA:bench</AssumedRoleId>"
            f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/bench/bench</Arn></AssumedRoleUser></AssumeRoleResult>"
            "<ResponseMetadata><RequestId>bench</RequestId></ResponseMetadata></AssumeRoleResponse>"
        )

    def credentials_valid(self, authorization: str) -> bool:
        """With ``credential_ttl`` on: whether the request is signed with an AssumeRole key that has not expired."""
        if not self.faults.credential_ttl:
            return True
        key = authorization.partition("Credential=")[2].partition("/")[0]
        if self.credentials.get(key, 0.0) > time.time():
            return True
        self.rejected_credentials += 1
        return False

    def record_describers(self, caller: str, ids: list[str]) -> None:
        now = time.time()
        for job_id in ids:
            span = self.describers.setdefault(job_id, {}).setdefault(caller, [now, now])
            span[1] = now

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "throttled": dict(self.throttled),
            "describe_times": self.describe_times,
            "described_ids": self.described_ids,
            "max_ids_per_call": self.max_ids_per_call,
            "submits": dict(self.submits),
            "terminated": self.terminated,
            "terminated_by": self.terminated_by,
            "held": self.held,
            "rejected_credentials": self.rejected_credentials,
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"__type": code, "message": message}


def _error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response(_error(code, message), status=status, headers={"x-amzn-ErrorType": code})


def make_app(batch: FakeBatch) -> web.Application:
    operations = {
        "describejobs": ("DescribeJobs", batch.describe_jobs),
        "submitjob": ("SubmitJob", batch.submit_job),
        "terminatejob": ("TerminateJob", batch.terminate_job),
        "listjobs": ("ListJobs", batch.list_jobs),
    }

    async def aws(request: web.Request) -> web.Response:
        name, operation = operations[request.match_info["operation"]]
        if name == "DescribeJobs":
            batch.describe_times.append(time.time())
        if not batch.credentials_valid(request.headers.get("Authorization", "")):
            return _error_response(
                403, "ExpiredTokenException", "The security token included in the request is expired"
            )
        if time.time() < batch.faults.throttle_until or not batch.bucket.take():
            batch.throttled[name] += 1
            return _error_response(429, "TooManyRequestsException", "Too Many Requests")
        batch.calls[name] += 1
        payload = await request.json()
        status, body = operation(payload)
        if name == "TerminateJob" and status == 200:
            batch.terminated_by[payload["jobId"]] = request.match_info.get("caller") or "worker"
        if name == "DescribeJobs" and status == 200:
            batch.record_describers(request.match_info.get("caller") or "", [job["jobId"] for job in body["jobs"]])
        held = (
            name == "SubmitJob"
            and (payload.get("tags") or {}).get("airflow:map_index") in batch.faults.hold_map_indexes
        )
        if held and status == 200:  # the job exists; the answer comes late (the client may be gone by then)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            batch.held.append({"job_name": body["jobName"], "job_id": body["jobId"], "port": peer and peer[1]})
            await asyncio.sleep(batch.faults.hold_seconds)
        headers = {"x-amzn-ErrorType": body["__type"]} if status >= 400 else None
        return web.json_response(body, status=status, headers=headers)

    async def root(request: web.Request) -> web.Response:
        """CloudWatch Logs (JSON, by ``X-Amz-Target``) and STS (query protocol, by ``Action``)."""
        if request.content_type == "application/x-www-form-urlencoded":
            action = parse_qs(await request.text()).get("Action", [""])[0]
            if action != "AssumeRole":
                return web.Response(status=400, text=f"not scripted: {action}")
            return web.Response(text=batch.assume_role(), content_type="text/xml")
        if request.headers.get("X-Amz-Target") != "Logs_20140328.GetLogEvents":
            return web.json_response(_error("UnknownOperationException", "not scripted"), status=400)
        if not batch.credentials_valid(request.headers.get("Authorization", "")):
            return _error_response(
                400, "ExpiredTokenException", "The security token included in the request is expired"
            )
        batch.calls["GetLogEvents"] += 1
        status, body = batch.get_log_events(await request.json())
        return web.json_response(body, status=status, content_type="application/x-amz-json-1.1")

    async def create_jobs(request: web.Request) -> web.Response:
        count = int((await request.json())["count"])
        return web.json_response({"jobIds": [batch.create(f"bench-{i}").job_id for i in range(count)]})

    async def list_all(request: web.Request) -> web.Response:
        return web.json_response(
            {
                i: {
                    "name": job.name,
                    "created": job.created,
                    "started": job.started,
                    "ends": job.ends,
                    "fails": job.fails,
                }
                for i, job in batch.jobs.items()
            }
        )

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(batch.stats())

    async def describers(request: web.Request) -> web.Response:
        return web.json_response(batch.describers)

    async def faults(request: web.Request) -> web.Response:
        batch.faults.update(await request.json())
        return web.json_response({"ok": True})

    @web.middleware
    async def unreachable(request: web.Request, handler: Any) -> web.StreamResponse:
        """While the endpoint is "unreachable", AWS requests get their connection reset, unanswered."""
        if time.time() < batch.faults.unreachable_until and not request.path.startswith("/bench/"):
            batch.calls["connection reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without writing to the dead transport
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[unreachable])
    route = f"/v1/{{operation:{'|'.join(operations)}}}"
    app.router.add_post(route, aws)
    app.router.add_post(f"/{{caller:[a-z0-9-]+}}{route}", aws)
    app.router.add_post("/", root)
    app.router.add_post("/{caller:[a-z0-9-]+}/", root)
    app.router.add_post("/bench/jobs", create_jobs)
    app.router.add_get("/bench/jobs", list_all)
    app.router.add_get("/bench/stats", stats)
    app.router.add_get("/bench/describers", describers)
    app.router.add_post("/bench/faults", faults)
    return app


def endpoint_parser(description: str, noun: str, rate: float) -> argparse.ArgumentParser:
    """The command line of a fake endpoint (this one and ``fake_ecs.py``): port, durations, failures, rate."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--duration", type=float, default=20.0, help=f"mean {noun} duration, seconds")
    parser.add_argument("--spread", type=float, default=0.25, help="durations vary by +- this fraction")
    parser.add_argument("--fail-fraction", type=float, default=0.05, help=f"fraction of {noun}s that fail")
    parser.add_argument("--rate", type=float, default=rate, help="API requests per second before throttling")
    parser.add_argument("--burst", type=float, default=0.0, help="token bucket size (default: --rate)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=7200.0, help="exit after this long")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return endpoint_parser(__doc__.splitlines()[0], "job", 50.0).parse_args(argv)


async def serve_app(app: web.Application, args: argparse.Namespace) -> None:
    """Serve ``app`` on 127.0.0.1:``args.port``, print the port, stop after ``args.max_seconds``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    try:
        await asyncio.sleep(args.max_seconds)
    finally:
        await runner.cleanup()


@contextmanager
def run_endpoint(script: str, *options: str) -> Iterator[str]:
    """Run a fake endpoint ``script`` in a subprocess with command-line ``options``; yield its URL, then stop it."""
    command = [sys.executable, str(Path(script).resolve()), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        if not port:
            raise RuntimeError(f"{Path(script).name} exited with {process.wait(10)} before listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def running(*options: str) -> AbstractContextManager[str]:
    """This endpoint in a subprocess with command-line ``options``: a context manager yielding its URL."""
    return run_endpoint(__file__, *options)


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(serve_app(make_app(FakeBatch(args)), args))
