"""Amazon ECS tasks: the RunTask request, names and tokens, and what a stopped task says (no I/O)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from airflow_ml_batch.jobs.common import start_choice as common_start_choice
from airflow_ml_batch.jobs.common import task_instance_digest, with_log_location
from airflow_ml_batch.jobs.fields import RequestField, direct_request, passed_through
from airflow_ml_batch.jobs.groups import FoundJob

#: RunTask ``failures`` reasons that mean "no capacity right now" (the ECS API reference's failure reasons:
#: ``RESOURCE:CPU``, ``RESOURCE:MEMORY``, ...; ``AGENT``; Fargate's "Capacity is unavailable at this time"):
#: tried again, with a new ``clientToken``, a bounded number of times. Any other failure is a configuration
#: to fix.
CAPACITY_FAILURES = ("RESOURCE:", "AGENT", "Capacity is unavailable")


#: RunTask keys that identify a task, which ``run_task_kwargs`` may not set, and what to use instead.
IDENTITY_KEYS = {
    "startedBy": "it names the task instance: a retry and a cleared task's stop find the task by it",
    "clientToken": "it keeps a RunTask sent again after a lost answer from starting a second task",
    "tags": "use tags (merged with the tags naming the task instance)",
    "count": "one ECS task per Airflow task (a second would run unwatched); map the operator instead",
}


def failures_text(failures: list[dict[str, Any]]) -> str:
    """RunTask's ``failures`` as users read them: ``"<arn> <reason> <detail>; ..."``."""
    return "; ".join(f"{f.get('arn', '')} {f.get('reason', '')} {f.get('detail', '')}".strip() for f in failures)


def no_capacity(failures: list[dict[str, Any]]) -> bool:
    """Whether RunTask's ``failures`` all say "no capacity right now" (:data:`CAPACITY_FAILURES`)."""
    reasons = [str(f.get("reason", "")) for f in failures]
    return bool(reasons) and all(any(marker in reason for marker in CAPACITY_FAILURES) for reason in reasons)


def started_by_for(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """A deterministic ``startedBy`` naming a task instance (ECS allows 128 of ``[A-Za-z0-9_-]``).

    ``airflow-`` and a hash of the task-instance key: a retry lists the tasks an earlier try started.
    """
    return "airflow-" + task_instance_digest(dag_id, task_id, run_id, map_index, algorithm="sha256", length=40)


def client_token_for(*key: object, placement: int = 1) -> str:
    """RunTask's idempotency token for one start of a task (``key``: what names it, e.g. ``startedBy`` and try).

    RunTask sent again with the same token starts no second task, so a call whose answer was lost is simply
    sent again. ECS answers a repeated token with the first call's outcome, so after a capacity failure, which
    started nothing, the next ``placement`` gets a token of its own.
    """
    text = "\n".join(str(part) for part in key) + (f"\nplacement {placement}" if placement > 1 else "")
    return hashlib.sha256(text.encode()).hexdigest()[:64]


def run_task_request(
    fields: Mapping[str, RequestField],
    values: Mapping[str, Any],
    *,
    started_by: str,
    client_token: str,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """RunTask's kwargs from an operator's request ``values`` (by parameter name, see ``fields``).

    Keyed fields go in as they are. ``command``, ``environment`` (a mapping), ``cpu`` and ``memory``
    override the container ``container_name`` (required with them); ``cpu``/``memory`` also size the
    task, as Fargate needs. A ``capacity_provider_strategy`` replaces ``launch_type``;
    ``propagate_tags=None`` omits ``propagateTags``. ``run_task_kwargs`` wins over everything but what
    identifies the task (:data:`IDENTITY_KEYS`).

    :raises ValueError: ``run_task_kwargs`` sets one of :data:`IDENTITY_KEYS`.
    """
    overrides = {**(values.get("overrides") or {})}
    command, environment = values.get("command"), values.get("environment")
    sizes = {key: values.get(key) for key in ("cpu", "memory")}
    if command is not None or environment or any(size is not None for size in sizes.values()):
        container_name = values.get("container_name")
        if not container_name:
            raise ValueError("container_name is required with command, environment, cpu or memory")
        containers = [dict(c) for c in overrides.get("containerOverrides", [])]
        container = next((c for c in containers if c.get("name") == container_name), None)
        if container is None:
            container = {"name": container_name}
            containers.append(container)
        if command is not None:
            container["command"] = list(command)
        if environment:
            kept = [e for e in container.get("environment", []) if e["name"] not in environment]
            container["environment"] = kept + [{"name": k, "value": str(v)} for k, v in environment.items()]
        for key, size in sizes.items():
            if size is not None:
                container[key] = int(size)
                overrides[key] = str(int(size))
        overrides["containerOverrides"] = containers
    if values.get("ephemeral_storage_gib") is not None:
        overrides["ephemeralStorage"] = {"sizeInGiB": int(values["ephemeral_storage_gib"])}
    folded = {
        "overrides": overrides or None,
        "launchType": None if values.get("capacity_provider_strategy") else values.get("launch_type"),
    }
    return {
        "count": 1,
        "startedBy": started_by,
        "clientToken": client_token,
        **direct_request(fields, values),
        **{key: value for key, value in folded.items() if value is not None},
        "enableExecuteCommand": bool(values.get("enable_execute_command")),
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
        **passed_through("run_task_kwargs", values.get("run_task_kwargs"), IDENTITY_KEYS),
    }


def task_id_of(task_arn: str) -> str:
    """The id at the end of a task ARN (``arn:aws:ecs:...:task/cluster/ID`` or ``.../task/ID``)."""
    return task_arn.rsplit("/", 1)[-1]


def essential_containers(task_definition: dict[str, Any]) -> set[str]:
    """The names of a task definition's essential containers (``essential`` defaults to true)."""
    return {c["name"] for c in task_definition.get("containerDefinitions", []) if c.get("essential", True)}


def log_location(
    task: dict[str, Any], task_definition: dict[str, Any] | None, container_name: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """``(log group, log stream, log region)`` of the container whose log tells what the task did.

    That is ``container_name`` when given, else the first essential container logging to CloudWatch
    (``awslogs``); ``None`` for what is not known. The region is the container's ``awslogs-region``.
    """
    containers = (task_definition or {}).get("containerDefinitions", [])
    if container_name:
        candidates = [c for c in containers if c.get("name") == container_name]
    else:
        candidates = [c for c in containers if c.get("essential", True)]
    for container in candidates:
        config = container.get("logConfiguration") or {}
        options = config.get("options") or {}
        if config.get("logDriver") == "awslogs" and options.get("awslogs-group"):
            prefix = options.get("awslogs-stream-prefix")
            stream = f"{prefix}/{container['name']}/{task_id_of(task['taskArn'])}" if prefix else None
            return options["awslogs-group"], stream, options.get("awslogs-region")
    return None, None, None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _seconds(started: Any, stopped: Any) -> float | None:
    if isinstance(started, datetime) and isinstance(stopped, datetime):
        return (stopped - started).total_seconds()
    if isinstance(started, (int, float)) and isinstance(stopped, (int, float)):
        return float(stopped - started)
    return None


#: Stop codes that name who stopped the task: it is ``stopped`` whatever its containers' exit codes
#: (stopping sends SIGTERM, then SIGKILL: 143 or 137), with this text in the failure message.
STOPPED_BY = {
    "UserInitiated": "was stopped by a user (StopTask)",
    "ServiceSchedulerInitiated": "was stopped by the ECS service scheduler",
    "InfrastructureHealth": "was stopped by ECS (unhealthy infrastructure); a retry can run it again",
}


def classify_stopped_task(task: dict[str, Any], essential: set[str] | None, fail_on_sidecars: bool = False) -> str:
    """Why a STOPPED task stopped: ``success``, ``failed_to_start``, ``spot_interruption``,
    ``out_of_memory``, ``container_failed`` or ``stopped`` (stopped by a user or by ECS).

    Only the ``essential`` containers decide, unless ``fail_on_sidecars``; all of them when the
    essential ones are not known (``None`` or empty).
    """
    stop_code = task.get("stopCode")
    if stop_code == "TaskFailedToStart":
        return "failed_to_start"
    if stop_code in ("SpotInterruption", "TerminationNotice"):
        return "spot_interruption"
    if stop_code in STOPPED_BY:
        return "stopped"
    judged = [c for c in task.get("containers", []) if fail_on_sidecars or not essential or c["name"] in essential]
    failed = [c for c in judged if c.get("exitCode") != 0]
    if any("OutOfMemory" in (c.get("reason") or "") for c in failed):
        return "out_of_memory"
    if any(c.get("exitCode") not in (0, None) for c in failed):
        return "container_failed"
    if not failed and judged and stop_code in (None, "EssentialContainerExited"):
        return "success"
    return "stopped"


def summarize_task(
    task: dict[str, Any],
    outcome: str,
    log_group: str | None,
    log_stream: str | None,
    log_region: str | None = None,
    essential: set[str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The task's result: a JSON-serializable digest of one DescribeTasks entry.

    ``essential`` is ``None`` when the task definition could not be read (``warnings`` say so).
    """
    started, stopped = task.get("startedAt"), task.get("stoppedAt")
    return {
        "task_arn": task["taskArn"],
        "cluster_arn": task.get("clusterArn"),
        "outcome": outcome,
        "last_status": task.get("lastStatus"),
        "stop_code": task.get("stopCode"),
        "stopped_reason": task.get("stoppedReason"),
        "task_definition": task.get("taskDefinitionArn"),
        "containers": [
            {"name": c["name"], "image": c.get("image"), "exit_code": c.get("exitCode"), "reason": c.get("reason")}
            for c in task.get("containers", [])
        ],
        "capacity_provider": task.get("capacityProviderName"),
        "launch_type": task.get("launchType"),
        "started_at": _iso(started),
        "stopped_at": _iso(stopped),
        "duration_seconds": _seconds(started, stopped),
        "log_group": log_group,
        "log_stream": log_stream,
        "log_region": log_region,
        "essential_containers": None if essential is None else sorted(essential),
        "warnings": list(warnings or []),
    }


_OUTCOME_TEXT = {
    "failed_to_start": "failed to start",
    "spot_interruption": "was interrupted (Spot capacity reclaimed); a retry can run it again",
    "out_of_memory": "ran out of memory",
    "container_failed": "had an essential container exit with a non-zero code",
    "stopped": "was stopped",
}


def describe_task_failure(summary: dict[str, Any]) -> str:
    """A failure message that says why: the class of failure, stop code and reason, each container, where the
    log is. No log line."""
    outcome = summary["outcome"]
    text = STOPPED_BY.get(summary.get("stop_code") or "") if outcome == "stopped" else None
    lines = [
        f"ECS task {summary['task_arn']} {text or _OUTCOME_TEXT.get(outcome, outcome)}: "
        f"{summary.get('stopped_reason') or 'no reason given'} (stop code {summary.get('stop_code')})"
    ]
    for container in summary.get("containers") or []:
        lines.append(
            f"  container {container['name']}: exit code {container['exit_code']}, {container['reason'] or 'no reason'}"
        )
    lines.extend(f"  warning: {warning}" for warning in summary.get("warnings") or [])
    return with_log_location(lines, summary)


def listed_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task of a task instance (DescribeTasks with its tags) as :func:`start_choice` reads it: ``jobId`` (its
    ARN), ``createdAt`` (epoch seconds), ``tags`` (a mapping), ``lastStatus`` and ``desiredStatus``."""
    created = task.get("createdAt")
    return {
        "jobId": str(task["taskArn"]),
        "createdAt": created.timestamp() if isinstance(created, datetime) else float(created or 0),
        "tags": {tag["key"]: tag["value"] for tag in task.get("tags", [])},
        "lastStatus": task.get("lastStatus"),
        "desiredStatus": task.get("desiredStatus"),
    }


def task_is_live(task: Mapping[str, Any]) -> bool:
    """Whether a task (:func:`listed_task`) may still run: it has not stopped (a StopTask may be under way)."""
    return task.get("lastStatus") != "STOPPED"


def start_choice(
    tasks: list[dict[str, Any]], own_try: int, reattachable: range, current: str | None = None
) -> tuple[str | None, list[str]]:
    """Which of a task instance's ECS tasks (:func:`listed_task`) a trigger that runs its task waits for, and
    which live ones it stops (:func:`~airflow_ml_batch.jobs.common.start_choice`; a task someone asked to stop
    is never re-attached to)."""
    return common_start_choice(
        tasks,
        own_try,
        reattachable,
        current,
        is_live=task_is_live,
        may_reattach=lambda task: task.get("desiredStatus") != "STOPPED",
    )


def found_task(task: Mapping[str, Any]) -> FoundJob | None:
    """A group's task from its description with tags (they say the model, try and attempt); ``None`` if not one."""
    tags = {tag["key"]: tag["value"] for tag in task.get("tags", [])}
    numbers = [tags.get(f"airflow:{key}", "") for key in ("model_index", "try_number", "attempt")]
    if not all(number.isdigit() for number in numbers):
        return None
    index, try_number, attempt = map(int, numbers)
    return FoundJob(task["taskArn"], index, try_number, attempt, task.get("desiredStatus") != "STOPPED")
