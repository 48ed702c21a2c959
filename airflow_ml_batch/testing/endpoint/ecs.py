"""Amazon ECS (JSON 1.1): RunTask, DescribeTasks, ListTasks, StopTask, DescribeTaskDefinition.

A task is a ``Task`` dict a test scripts (:meth:`Ecs.add_task`, :meth:`Ecs.set_task`), or one a
:class:`~.core.Runner` runs: PROVISIONING -> PENDING -> RUNNING -> DEPROVISIONING -> STOPPED, its
essential container ``model`` exiting with the run's exit code.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import ACCOUNT, REGION, AwsError, Call, Faults, Run, Runner

CLUSTER = "models"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{CLUSTER}"
DEFINITION = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/forecast:1"
CONTAINER = "model"
LOG_GROUP = "/ecs/forecast"
#: Where each state before RUNNING begins, as a fraction of the time to the container's start.
PHASES = (("PROVISIONING", 0.0), ("PENDING", 0.4))
#: How long ECS remembers a RunTask ``clientToken``: a day, or an hour after its last task stopped if sooner.
TOKEN_TTL = 24 * 3600.0
TOKEN_TTL_AFTER_STOP = 3600.0


def task_definition() -> dict[str, Any]:
    """The task definition runner-driven tasks run: an essential ``model`` container logging to CloudWatch."""
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


def _cluster_name(cluster: str | None) -> str:
    """The cluster a request names (its short name or ARN; none: ``default``)."""
    return (cluster or "default").rsplit("/", 1)[-1]


@dataclass
class TokenUse:
    """The first RunTask with a ``clientToken``: its request (the token aside) and outcome."""

    request: dict[str, Any]
    task_arns: list[str]
    failures: list[dict[str, Any]]
    used: float  # epoch seconds


class Ecs:
    """The ECS service's state: tasks, their runs, task definitions and scripted RunTask failures.

    ``faults``: the endpoint's fault switches (``list_lag_seconds``).
    """

    def __init__(self, lock: threading.RLock, runner: Runner | None = None, faults: Faults | None = None) -> None:
        self.lock = lock
        #: how RunTask's tasks run; ``None``: they keep the state a test gives them
        self.runner = runner
        self.faults = faults or Faults()
        self.tasks: dict[str, dict[str, Any]] = {}  # by ARN
        #: when each task was created (epoch seconds): ListTasks lists it ``list_lag_seconds`` later
        self.created: dict[str, float] = {}
        #: RunTask ``clientToken`` uses, by ``(cluster name, token)``
        self.client_tokens: dict[tuple[str, str], TokenUse] = {}
        self.runs: dict[str, Run] = {}
        self.hidden: set[str] = set()
        #: by family; a runner serves :func:`task_definition` as ``forecast``
        self.task_definitions: dict[str, dict[str, Any]] = {"forecast": task_definition()} if runner else {}
        #: what RunTask answers instead of starting a task, in order (e.g. a capacity failure)
        self.run_task_failures: list[dict[str, str]] = []
        #: fields RunTask gives new tasks without a runner (e.g. a finished state)
        self.new_task_fields: dict[str, Any] = {}

    # -- scripting -----------------------------------------------------------------------------------------

    def add_task(self, last_status: str = "RUNNING", **fields: Any) -> str:
        """Create a task as if RunTask had (``fields`` are ``Task`` fields); returns its ARN."""
        last_status = fields.pop("lastStatus", last_status)
        task_id = fields.pop("taskId", uuid.uuid4().hex)
        arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task_id}"
        with self.lock:
            self.created[arn] = time.time()
            self.tasks[arn] = {
                "taskArn": arn,
                "clusterArn": CLUSTER_ARN,
                "taskDefinitionArn": fields.pop("taskDefinitionArn", DEFINITION),
                "lastStatus": last_status,
                "desiredStatus": "RUNNING",
                "launchType": "FARGATE",
                "containers": [{"name": CONTAINER, "lastStatus": last_status}],
                "tags": [],
                "createdAt": time.time(),
                **fields,
            }
        return arn

    def set_task(self, arn: str, **fields: Any) -> None:
        """Change a task's fields (``lastStatus=...``, ``containers=...``)."""
        with self.lock:
            self.tasks[arn].update(fields)

    def run_task(self, started_by: str = "", definition: str = DEFINITION) -> str:
        """Create a task the runner runs, as RunTask does; returns its ARN."""
        if self.runner is None:
            raise RuntimeError("the endpoint has no runner")
        run = self.runner.start("task", started_by, {"startedBy": started_by, "taskDefinition": definition})
        arn = self.add_task("PROVISIONING", startedBy=started_by, taskDefinitionArn=definition, createdAt=run.created)
        with self.lock:
            self.runs[arn] = run
        return arn

    def status(self, arn: str, now: float) -> str:
        run = self.runs.get(arn)
        if run is None:
            return str(self.tasks[arn]["lastStatus"])
        if now >= run.ends:
            return "STOPPED"
        if now >= run.exits:
            return "DEPROVISIONING"
        if now >= run.started:
            return "RUNNING"
        elapsed = (now - run.created) / (min(run.started, run.exits) - run.created)
        return next(name for name, start in reversed(PHASES) if elapsed >= start)

    def describe(self, arn: str, now: float) -> dict[str, Any]:
        """The fields DescribeTasks returns (``Task``); timestamps are epoch seconds, as JSON 1.1 sends them."""
        run = self.runs.get(arn)
        if run is None:
            return self.tasks[arn]
        status, task_id = self.status(arn, now), arn.rpartition("/")[2]
        container: dict[str, Any] = {
            "containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/{CLUSTER}/{task_id}/{CONTAINER}",
            "taskArn": arn,
            "name": CONTAINER,
            "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/forecast:latest",
            "lastStatus": "PENDING" if status in ("PROVISIONING", "PENDING") else "RUNNING",
            "cpu": "256",
            "memory": "512",
        }
        task = self.tasks[arn] | {
            "lastStatus": status,
            "desiredStatus": "STOPPED" if now >= run.exits else "RUNNING",
            "platformVersion": "1.4.0",
            "cpu": "256",
            "memory": "512",
            "group": "family:forecast",
            "version": 1 + sum(now >= t for t in (run.started, run.exits, run.ends)),
            "containers": [container],
            "overrides": {"containerOverrides": [{"name": CONTAINER}]},
            "attachments": [],
        }
        if now >= run.started:
            task["pullStartedAt"] = task["pullStoppedAt"] = run.started - 0.5
            task["startedAt"] = run.started
        if now >= run.exits:
            container["lastStatus"] = "STOPPED"
            exit_code = run.exit_code()
            if exit_code is not None:  # stopped before its container started: no exit code
                container["exitCode"] = exit_code
            task |= {
                "stopCode": run.stop_code,
                "stoppedReason": run.reason,
                "stoppingAt": run.exits,
                "executionStoppedAt": run.exits,
            }
        if now >= run.ends:
            task["stoppedAt"] = run.ends
        return task

    def log_stream(self, stream: str) -> Run | None:
        """The run whose container logs to ``stream`` (``ecs/model/<task id>``), if any."""
        task_id = stream.rpartition("/")[2]
        return self.runs.get(f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task_id}")

    def _find(self, cluster: str | None, task: str) -> str | None:
        """A task by ARN, or by id in the one cluster."""
        if task in self.tasks:
            return task
        arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task}"
        return arn if cluster in (None, CLUSTER, CLUSTER_ARN) and arn in self.tasks else None

    # -- the API ---------------------------------------------------------------------------------------------

    def operations(self) -> dict[str, Callable[[Call], dict[str, Any]]]:
        return {
            "RunTask": self.run_task_call,
            "DescribeTasks": self.describe_tasks,
            "ListTasks": self.list_tasks,
            "StopTask": self.stop_task,
            "DescribeTaskDefinition": self.describe_task_definition,
        }

    def run_task_call(self, call: Call) -> dict[str, Any]:
        """RunTask, idempotent per ``clientToken`` and cluster as ECS documents it
        (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/ECS_Idempotency.html, "Idempotency for
        RunTask" and "RunTask retry rules and responses"): the token again with the same parameters answers
        the first call's outcome again, its tasks (as they are now) and its ``failures`` (a capacity failure
        is not tried again: a new placement attempt needs a new token); with other parameters it is a
        ``ConflictException`` whose ``resourceIds`` are the token's tasks. A token is remembered for 24
        hours, or until an hour after its last task stopped if that is sooner."""
        body, now = call.body, time.time()
        count = int(body.get("count") or 1)
        if not 1 <= count <= 10:
            raise AwsError(400, "InvalidParameterException", "count must be between 1 and 10")
        token = body.get("clientToken")
        key = (_cluster_name(body.get("cluster")), str(token))
        request = {name: value for name, value in body.items() if name != "clientToken"}
        earlier = self.client_tokens.get(key) if token else None
        if earlier is not None and now < self._token_expires(earlier):
            if earlier.request != request:
                raise AwsError(
                    400,
                    "ConflictException",
                    "The clientToken is already in use with a different RunTask request.",
                    {"resourceIds": earlier.task_arns},
                )
            tasks = [self.describe(arn, now) for arn in earlier.task_arns]
            # "Tasks that have been stopped for under an hour only include the task ARN, last status, and desired
            # status" (older ones have let the token expire).
            tasks = [
                {key: task[key] for key in ("taskArn", "lastStatus", "desiredStatus")}
                if task["lastStatus"] == "STOPPED"
                else task
                for task in tasks
            ]
            return {"tasks": tasks, "failures": earlier.failures}
        answer = self._start_tasks(body, count)
        if token:
            arns = [task["taskArn"] for task in answer["tasks"]]
            self.client_tokens[key] = TokenUse(request, arns, answer["failures"], now)
        return answer

    def _start_tasks(self, body: dict[str, Any], count: int) -> dict[str, Any]:
        """Start ``count`` tasks for a RunTask request, or answer its next scripted failure."""
        if self.run_task_failures:
            return {"tasks": [], "failures": [self.run_task_failures.pop(0)]}
        if self.runner is not None:
            definition = body.get("taskDefinition", DEFINITION)
            arns = [self.run_task(body.get("startedBy", ""), definition) for _ in range(count)]
            for arn in arns:
                self.tasks[arn].update(tags=body.get("tags", []))
            return {"tasks": [self.describe(arn, self.runs[arn].created) for arn in arns], "failures": []}
        arn = self.add_task(
            "PROVISIONING",
            startedBy=body.get("startedBy"),
            tags=body.get("tags", []),
            taskDefinitionArn=f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{body['taskDefinition']}",
            **self.new_task_fields,
        )
        return {"tasks": [self.tasks[arn]], "failures": []}

    def _token_expires(self, use: TokenUse) -> float:
        """When ECS forgets a token: a day after its use, or an hour after its last task stopped if sooner."""
        stopped = [self.runs[arn].ends if arn in self.runs else float("inf") for arn in use.task_arns]
        return min(use.used + TOKEN_TTL, max(stopped, default=float("inf")) + TOKEN_TTL_AFTER_STOP)

    def describe_tasks(self, call: Call) -> dict[str, Any]:
        ids = call.body.get("tasks") or []
        if not ids:  # as ECS (and moto) answer
            raise AwsError(400, "InvalidParameterException", "Tasks cannot be empty.")
        if len(ids) > 100:
            raise AwsError(400, "InvalidParameterException", "Tasks cannot be longer than 100")
        now = time.time()
        found = {i: self._find(call.body.get("cluster"), i) for i in ids}
        return {
            "tasks": [self.describe(arn, now) for arn in found.values() if arn is not None and arn not in self.hidden],
            "failures": [
                {"arn": i, "reason": "MISSING"} for i, arn in found.items() if arn is None or arn in self.hidden
            ],
        }

    def list_tasks(self, call: Call) -> dict[str, Any]:
        body, now = call.body, time.time()
        desired = body.get("desiredStatus", "RUNNING")
        lag = self.faults.list_lag_seconds  # ListTasks is eventually consistent
        listed_before = now - lag if lag else float("inf")
        arns = [
            arn
            for arn, task in self.tasks.items()
            if self.created.get(arn, 0.0) <= listed_before
            and task.get("startedBy") == body.get("startedBy")
            and self.describe(arn, now)["desiredStatus"] == desired
        ]
        return {"taskArns": arns}

    def stop_task(self, call: Call) -> dict[str, Any]:
        arn = self._find(call.body.get("cluster"), call.body.get("task", ""))
        if arn is None:
            raise AwsError(400, "InvalidParameterException", "The referenced task was not found.")
        reason = call.body.get("reason") or "Task stopped by user"
        run = self.runs.get(arn)
        if run is not None:
            run.stop(time.time(), reason)
        else:
            self.tasks[arn].update(
                desiredStatus="STOPPED", lastStatus="STOPPED", stopCode="UserInitiated", stoppedReason=reason
            )
        return {"task": self.describe(arn, time.time())}

    def describe_task_definition(self, call: Call) -> dict[str, Any]:
        name = call.body.get("taskDefinition", "").rsplit("/", 1)[-1].split(":")[0]
        definition = self.task_definitions.get(name)
        if definition is None:
            raise AwsError(400, "ClientException", "Unable to describe task definition.")
        return {"taskDefinition": definition, "tags": []}
