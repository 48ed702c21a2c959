"""A small scripted AWS Batch + ECS + CloudWatch Logs endpoint, for exact state sequences and injected errors.

moto answers with real shapes but finishes Batch jobs at once; this endpoint keeps a job in the state a
test sets, hides it from DescribeJobs, or answers the next calls with throttling or 5xx errors, and
counts every call by operation. It speaks the wire protocols botocore and aiobotocore use (REST-JSON
for Batch, JSON 1.1 for ECS and Logs), on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeAws:
    """State and script of the endpoint; :attr:`url` is its address once started."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.task_definitions: dict[str, dict[str, Any]] = {}
        #: what RunTask answers instead of starting a task, in order (e.g. a capacity failure)
        self.run_task_failures: list[dict[str, str]] = []
        #: fields RunTask gives new tasks (e.g. a finished state)
        self.new_task_fields: dict[str, Any] = {}
        self.hidden: set[str] = set()
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: (operation, region the request was signed for) of every call
        self.regions: list[tuple[str, str]] = []
        #: the status SubmitJob gives new jobs
        self.submitted_status = "RUNNABLE"
        #: called with each SubmitJob request: the new job's fields (``status``, ``container``, ...), or
        #: ``{"reject": message}`` to answer with a ClientException
        self.on_submit: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.failures: dict[str, list[tuple[int, str]]] = {}
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAws:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- scripting ---------------------------------------------------------------------------------------

    def add_job(self, status: str = "RUNNABLE", **fields: Any) -> str:
        """Create a job as if SubmitJob had; returns its id."""
        job_id = fields.pop("jobId", str(uuid.uuid4()))
        now = int(time.time() * 1000)
        with self.lock:
            self.jobs[job_id] = {
                "jobId": job_id,
                "jobName": fields.pop("jobName", "job"),
                "jobArn": f"arn:aws:batch:eu-west-1:123456789012:job/{job_id}",
                "jobQueue": fields.pop("jobQueue", "arn:aws:batch:eu-west-1:123456789012:job-queue/models"),
                "jobDefinition": "arn:aws:batch:eu-west-1:123456789012:job-definition/forecast:1",
                "status": status,
                "createdAt": now,
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
        with self.lock:
            self.jobs[job_id].update(fields)

    def fail_next(
        self, operation: str, times: int = 1, status: int = 429, code: str = "TooManyRequestsException"
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` (e.g. ``DescribeJobs``) with an error."""
        with self.lock:
            self.failures.setdefault(operation, []).extend([(status, code)] * times)

    # -- the API -----------------------------------------------------------------------------------------

    def answer(self, operation: str, body: dict[str, Any], region: str = "") -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls[operation] += 1
            self.requests.append((operation, body))
            self.regions.append((operation, region))
            pending = self.failures.get(operation)
            if pending:
                status, code = pending.pop(0)
                return status, {"__type": code, "message": f"{code} (injected)"}
            return getattr(self, f"_{operation}")(body)

    def _SubmitJob(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        job_id = str(uuid.uuid4())
        fields = {"status": self.submitted_status, **(self.on_submit(body) if self.on_submit else {})}
        if "reject" in fields:
            return 400, {"__type": "ClientException", "message": fields["reject"]}
        self.lock.release()
        try:
            self.add_job(
                jobId=job_id,
                jobName=body["jobName"],
                jobQueue=body["jobQueue"],
                tags=body.get("tags", {}),
                **fields,
            )
        finally:
            self.lock.acquire()
        return 200, {"jobId": job_id, "jobName": body["jobName"], "jobArn": self.jobs[job_id]["jobArn"]}

    def _DescribeJobs(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        found = [self.jobs[i] for i in body["jobs"] if i in self.jobs and i not in self.hidden]
        return 200, {"jobs": [self._with_status_summary(job) for job in found]}

    def _with_status_summary(self, job: dict[str, Any]) -> dict[str, Any]:
        size = job.get("arrayProperties", {}).get("size")
        if size is None:
            return job
        children = [self.jobs.get(f"{job['jobId']}:{index}") for index in range(size)]
        summary = dict.fromkeys(("STARTING", "FAILED", "RUNNING", "SUCCEEDED", "RUNNABLE", "SUBMITTED", "PENDING"), 0)
        for child in children:
            if child is not None:
                summary[child["status"]] += 1
        return {**job, "arrayProperties": {**job["arrayProperties"], "statusSummary": summary}}

    def _ListJobs(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        names = {v for f in body.get("filters", []) if f["name"] == "JOB_NAME" for v in f["values"]}
        found = [j for j in self.jobs.values() if not names or j["jobName"] in names]
        if "arrayJobId" in body:
            found = [j for j in found if j["jobId"].startswith(f"{body['arrayJobId']}:")]
        if "jobStatus" in body and not names:  # Batch ignores jobStatus when filters are given
            found = [j for j in found if j["status"] == body["jobStatus"]]
        keys = ("jobId", "jobName", "status", "createdAt", "statusReason", "arrayProperties")
        return 200, {"jobSummaryList": [{k: j[k] for k in keys if k in j} for j in found]}

    def _TerminateJob(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        job = self.jobs.get(body["jobId"])
        if job is None:
            return 400, {"__type": "ClientException", "message": f"Job {body['jobId']} not found"}
        if job["status"] not in ("SUCCEEDED", "FAILED"):
            job.update(status="FAILED", statusReason=body["reason"])
        return 200, {}

    def add_task(self, last_status: str = "RUNNING", **fields: Any) -> str:
        """Create an ECS task as if RunTask had; returns its ARN."""
        last_status = fields.pop("lastStatus", last_status)
        task_id = uuid.uuid4().hex
        arn = f"arn:aws:ecs:eu-west-1:123456789012:task/models/{task_id}"
        self.tasks[arn] = {
            "taskArn": arn,
            "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/models",
            "taskDefinitionArn": fields.pop(
                "taskDefinitionArn", "arn:aws:ecs:eu-west-1:123456789012:task-definition/forecast:1"
            ),
            "lastStatus": last_status,
            "desiredStatus": "RUNNING",
            "launchType": "FARGATE",
            "containers": [{"name": "model", "lastStatus": last_status}],
            "tags": [],
            "createdAt": time.time(),
            **fields,
        }
        return arn

    def set_task(self, arn: str, **fields: Any) -> None:
        with self.lock:
            self.tasks[arn].update(fields)

    def _RunTask(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.run_task_failures:
            return 200, {"tasks": [], "failures": [self.run_task_failures.pop(0)]}
        for task in self.tasks.values():  # the same clientToken: the same task, as ECS does
            if task.get("clientToken") == body.get("clientToken"):
                return 200, {"tasks": [task], "failures": []}
        self.lock.release()
        try:
            arn = self.add_task(
                "PROVISIONING",
                startedBy=body.get("startedBy"),
                clientToken=body.get("clientToken"),
                tags=body.get("tags", []),
                taskDefinitionArn=f"arn:aws:ecs:eu-west-1:123456789012:task-definition/{body['taskDefinition']}",
                **self.new_task_fields,
            )
        finally:
            self.lock.acquire()
        return 200, {"tasks": [self.tasks[arn]], "failures": []}

    def _DescribeTasks(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        found = [self.tasks[a] for a in body["tasks"] if a in self.tasks and a not in self.hidden]
        missing = [{"arn": a, "reason": "MISSING"} for a in body["tasks"] if a not in self.tasks or a in self.hidden]
        return 200, {"tasks": found, "failures": missing}

    def _ListTasks(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arns = [
            a
            for a, t in self.tasks.items()
            if t.get("startedBy") == body.get("startedBy")
            and t["desiredStatus"] == body.get("desiredStatus", "RUNNING")
        ]
        return 200, {"taskArns": arns}

    def _StopTask(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        task = self.tasks[body["task"]]
        task.update(
            desiredStatus="STOPPED", lastStatus="STOPPED", stopCode="UserInitiated", stoppedReason=body.get("reason")
        )
        return 200, {"task": task}

    def _DescribeTaskDefinition(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body["taskDefinition"].rsplit("/", 1)[-1].split(":")[0]
        definition = self.task_definitions.get(name)
        if definition is None:
            return 400, {"__type": "ClientException", "message": "Unable to describe task definition."}
        return 200, {"taskDefinition": definition}

    def _GetLogEvents(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        lines = self.logs.get((body["logGroupName"], body["logStreamName"]))
        if lines is None:
            return 400, {"__type": "ResourceNotFoundException", "message": "The specified log stream does not exist."}
        tail = lines[-body.get("limit", 10000) :]
        return 200, {"events": [{"timestamp": 0, "message": line, "ingestionTime": 0} for line in tail]}


_BATCH_PATHS = {
    "/v1/submitjob": "SubmitJob",
    "/v1/describejobs": "DescribeJobs",
    "/v1/listjobs": "ListJobs",
    "/v1/terminatejob": "TerminateJob",
}


_SIGNING_REGION = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/")


def _handler(fake: FakeAws) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            target = self.headers.get("X-Amz-Target", "")
            operation = target.rpartition(".")[2] if target else _BATCH_PATHS.get(self.path, "Unknown")
            signed = _SIGNING_REGION.search(self.headers.get("Authorization", ""))
            status, answer = fake.answer(operation, body, signed.group(1) if signed else "")
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1" if target else "application/json")
            if status >= 400:
                self.send_header("x-amzn-ErrorType", answer["__type"])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
