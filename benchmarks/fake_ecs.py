"""A scripted, Amazon ECS-shaped HTTP endpoint on 127.0.0.1 for benchmarks.

Serves the JSON 1.1 operations (``POST /`` with ``X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Op>``)
DescribeTasks, DescribeTaskDefinition, StopTask and RunTask with the response shapes of botocore's
``ecs`` 2014-11-13 model. Tasks move PROVISIONING -> PENDING -> RUNNING -> DEPROVISIONING -> STOPPED on
the wall clock; a fraction of them fails (essential container ``model`` exits with code 1, stop code
``EssentialContainerExited``). One token bucket throttles the whole ECS API: over it, requests get HTTP
400 ``ThrottlingException`` ("Rate exceeded"), as ECS answers them. CloudWatch Logs' GetLogEvents
(``X-Amz-Target: Logs_20140328.GetLogEvents``, not throttled) returns two lines for any stream.

Benchmark routes (not AWS): ``POST /bench/tasks`` with ``{"count": N}`` creates N tasks starting now
and returns their ARNs; ``GET /bench/tasks`` returns every task's planned stop and outcome;
``GET /bench/stats`` returns the request counters.

Run it as its own process (it prints its port, then serves until killed or ``--max-seconds``)::

    python benchmarks/fake_ecs.py --port 0 --rate 20 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from fake_batch import ACCOUNT, REGION, TokenBucket, _error, endpoint_parser, run_endpoint, serve_app

CLUSTER = "bench"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{CLUSTER}"
DEFINITION = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/forecast:1"
CONTAINER = "model"
LOG_GROUP = "/ecs/forecast"
EXITED = "Essential container in task exited"
TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."
LOGS_TARGET = "Logs_20140328.GetLogEvents"
JSON_11 = "application/x-amz-json-1.1"
#: Where each state before RUNNING begins, as a fraction of the time to the container's start.
PHASES = (("PROVISIONING", 0.0), ("PENDING", 0.4))
#: The container starts this far into the task's duration, and exits this far (then DEPROVISIONING).
STARTED, EXITS = 0.25, 0.9


@dataclass
class Task:
    """One task and its scripted timeline (epoch seconds; ``started`` is ``inf`` if it never started).

    ``ends`` is when the task is STOPPED; its container exits at ``exits`` (DEPROVISIONING in between).
    """

    task_id: str
    definition: str
    started_by: str
    created: float
    started: float
    exits: float
    ends: float
    fails: bool
    stop_code: str = "EssentialContainerExited"
    reason: str = EXITED

    @property
    def arn(self) -> str:
        return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{self.task_id}"

    def status(self, now: float) -> str:
        if now >= self.ends:
            return "STOPPED"
        if now >= self.exits:
            return "DEPROVISIONING"
        if now >= self.started:
            return "RUNNING"
        elapsed = (now - self.created) / (min(self.started, self.exits) - self.created)
        return next(name for name, start in reversed(PHASES) if elapsed >= start)

    def describe(self, now: float) -> dict[str, Any]:
        """The fields DescribeTasks returns (``Task``); timestamps are epoch seconds, as JSON 1.1 sends them."""
        status = self.status(now)
        container: dict[str, Any] = {
            "containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/{CLUSTER}/{self.task_id}/{CONTAINER}",
            "taskArn": self.arn,
            "name": CONTAINER,
            "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/forecast:latest",
            "lastStatus": "PENDING" if status in ("PROVISIONING", "PENDING") else "RUNNING",
            "cpu": "256",
            "memory": "512",
        }
        task: dict[str, Any] = {
            "taskArn": self.arn,
            "clusterArn": CLUSTER_ARN,
            "taskDefinitionArn": self.definition,
            "lastStatus": status,
            "desiredStatus": "STOPPED" if now >= self.exits else "RUNNING",
            "launchType": "FARGATE",
            "platformVersion": "1.4.0",
            "cpu": "256",
            "memory": "512",
            "group": "family:forecast",
            "startedBy": self.started_by,
            "createdAt": self.created,
            "version": 1 + sum(now >= t for t in (self.started, self.exits, self.ends)),
            "containers": [container],
            "overrides": {"containerOverrides": [{"name": CONTAINER}]},
            "attachments": [],
        }
        if now >= self.started:
            task["pullStartedAt"] = task["pullStoppedAt"] = self.started - 0.5
            task["startedAt"] = self.started
        if now >= self.exits:
            exit_code = 1 if self.fails else 0
            container |= {"lastStatus": "STOPPED", "exitCode": exit_code}
            if self.started == float("inf"):  # stopped before its container started: no exit code
                del container["exitCode"]
            task |= {
                "stopCode": self.stop_code,
                "stoppedReason": self.reason,
                "stoppingAt": self.exits,
                "executionStoppedAt": self.exits,
            }
        if now >= self.ends:
            task["stoppedAt"] = self.ends
        return task


def task_definition() -> dict[str, Any]:
    """The one task definition every task runs: an essential ``model`` container logging to CloudWatch."""
    return {
        "taskDefinitionArn": DEFINITION,
        "family": "forecast",
        "revision": 1,
        "status": "ACTIVE",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "compatibilities": ["EC2", "FARGATE"],
        "cpu": "256",
        "memory": "512",
        "containerDefinitions": [
            {
                "name": CONTAINER,
                "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/forecast:latest",
                "essential": True,
                "command": ["python", "-m", "forecast"],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"awslogs-group": LOG_GROUP, "awslogs-region": REGION, "awslogs-stream-prefix": "ecs"},
                },
            }
        ],
    }


class FakeEcs:
    """The endpoint's state: tasks, the API's token bucket and request counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.duration: float = args.duration
        self.spread: float = args.spread
        self.fail_fraction: float = args.fail_fraction
        self.random = random.Random(args.seed)
        self.bucket = TokenBucket(args.rate, args.burst or args.rate)
        self.tasks: dict[str, Task] = {}  # by ARN
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.describe_times: list[float] = []  # every DescribeTasks request, throttled or not
        self.described_ids = 0
        self.max_ids_per_call = 0

    def create(self, started_by: str, definition: str = DEFINITION) -> Task:
        now = time.time()
        duration = self.duration * self.random.uniform(1 - self.spread, 1 + self.spread)
        task = Task(
            task_id=f"{self.random.getrandbits(128):032x}",
            definition=definition,
            started_by=started_by,
            created=now,
            started=now + STARTED * duration,
            exits=now + EXITS * duration,
            ends=now + duration,
            fails=self.random.random() < self.fail_fraction,
        )
        self.tasks[task.arn] = task
        return task

    def _find(self, cluster: str | None, task: str) -> Task | None:
        if cluster not in (None, CLUSTER, CLUSTER_ARN):
            return None
        return self.tasks.get(task) or self.tasks.get(f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task}")

    # AWS operations: body in, (HTTP status, body) out.

    def describe_tasks(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ids = body.get("tasks") or []
        self.described_ids += len(ids)
        self.max_ids_per_call = max(self.max_ids_per_call, len(ids))
        if len(ids) > 100:
            return 400, _error("InvalidParameterException", "Tasks cannot be longer than 100")
        now = time.time()
        found = {i: self._find(body.get("cluster"), i) for i in ids}
        return 200, {
            "tasks": [task.describe(now) for task in found.values() if task is not None],
            "failures": [{"arn": i, "reason": "MISSING"} for i, task in found.items() if task is None],
        }

    def describe_task_definition(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("taskDefinition") not in (DEFINITION, "forecast", "forecast:1"):
            return 400, _error("ClientException", "Unable to describe task definition.")
        return 200, {"taskDefinition": task_definition(), "tags": []}

    def stop_task(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        task = self._find(body.get("cluster"), body.get("task", ""))
        if task is None:
            return 400, _error("InvalidParameterException", "The referenced task was not found.")
        now = time.time()
        if now < task.exits:
            task.exits, task.ends, task.fails = now, now + 2.0, True
            task.stop_code, task.reason = "UserInitiated", body.get("reason") or "Task stopped by user"
            if now < task.started:
                task.started = float("inf")
        return 200, {"task": task.describe(now)}

    def run_task(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        count = int(body.get("count") or 1)
        if not 1 <= count <= 10:
            return 400, _error("InvalidParameterException", "count must be between 1 and 10")
        tasks = [self.create(body.get("startedBy", ""), body.get("taskDefinition", DEFINITION)) for _ in range(count)]
        return 200, {"tasks": [task.describe(task.created) for task in tasks], "failures": []}

    def get_log_events(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        stamp = int(time.time() * 1000)
        lines = [f"model run for {body.get('logStreamName')}", "Traceback: ValueError: bad input"]
        events = [{"timestamp": stamp, "message": line, "ingestionTime": stamp} for line in lines]
        return 200, {"events": events, "nextForwardToken": "f/1", "nextBackwardToken": "b/1"}

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "throttled": dict(self.throttled),
            "describe_times": self.describe_times,
            "described_ids": self.described_ids,
            "max_ids_per_call": self.max_ids_per_call,
        }


def make_app(ecs: FakeEcs) -> web.Application:
    operations = {
        "DescribeTasks": ecs.describe_tasks,
        "DescribeTaskDefinition": ecs.describe_task_definition,
        "StopTask": ecs.stop_task,
        "RunTask": ecs.run_task,
    }

    def reply(status: int, body: dict[str, Any]) -> web.Response:
        headers = {"x-amzn-ErrorType": body["__type"]} if status >= 400 else None
        return web.json_response(body, status=status, headers=headers, content_type=JSON_11)

    async def aws(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if target == LOGS_TARGET:
            ecs.calls["GetLogEvents"] += 1
            return reply(*ecs.get_log_events(await request.json()))
        name = target.removeprefix(TARGET_PREFIX)
        if not target.startswith(TARGET_PREFIX) or name not in operations:
            return reply(400, _error("UnknownOperationException", f"not scripted: {target}"))
        if name == "DescribeTasks":
            ecs.describe_times.append(time.time())
        if not ecs.bucket.take():
            ecs.throttled[name] += 1
            return reply(400, _error("ThrottlingException", "Rate exceeded"))
        ecs.calls[name] += 1
        return reply(*operations[name](await request.json()))

    async def create_tasks(request: web.Request) -> web.Response:
        count = int((await request.json())["count"])
        return web.json_response({"taskArns": [ecs.create(f"bench-{i}").arn for i in range(count)]})

    async def list_all(request: web.Request) -> web.Response:
        return web.json_response({arn: {"ends": task.ends, "fails": task.fails} for arn, task in ecs.tasks.items()})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(ecs.stats())

    app = web.Application()
    app.router.add_post("/", aws)
    app.router.add_post("/bench/tasks", create_tasks)
    app.router.add_get("/bench/tasks", list_all)
    app.router.add_get("/bench/stats", stats)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return endpoint_parser(__doc__.splitlines()[0], "task", 20.0).parse_args(argv)


def running(*options: str) -> AbstractContextManager[str]:
    """This endpoint in a subprocess with command-line ``options``: a context manager yielding its URL."""
    return run_endpoint(__file__, *options)


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(serve_app(make_app(FakeEcs(args)), args))
