"""AWS Batch jobs: the SubmitJob request, names, and what a DescribeJobs answer says (no I/O)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from airflow_ml_batch.jobs.common import name_part, task_instance_digest, with_log_location
from airflow_ml_batch.jobs.common import start_choice as common_start_choice
from airflow_ml_batch.jobs.fields import RequestField, direct_request, passed_through
from airflow_ml_batch.jobs.groups import FoundJob, parse_job_name

#: Job states in which the job may still run; SUCCEEDED and FAILED are final.
ACTIVE_STATES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"})
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED"})
#: Seconds a job whose SubmitJob answer was lost is looked for before the request is sent again: ListJobs
#: is eventually consistent, and a job just created may not be listed yet.
LOOKUP_SECONDS = 30.0
#: SubmitJob keys that identify a job, which ``submit_job_kwargs`` may not set, and what to use instead.
IDENTITY_KEYS = {
    "jobName": "use job_name (a retry and the lookup after a lost answer find the job by it)",
    "tags": "use tags (merged with the tags naming the task instance, which find the job again)",
}
#: The log group Batch writes to unless the job definition's logConfiguration names another.
DEFAULT_LOG_GROUP = "/aws/batch/job"
#: How many failed children of an array job a failure message names (the lowest indexes).
FAILED_CHILDREN_SHOWN = 10
_CHILD_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")


def job_name_for(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """A valid, deterministic Batch job name for a task instance (at most 128 of ``[A-Za-z0-9_-]``).

    The same task instance always gets the same name, so a retry can find the job of an earlier try;
    a short hash of the whole key keeps names of different runs and map indexes apart after truncation.
    """
    digest = task_instance_digest(dag_id, task_id, run_id, map_index)
    readable = name_part(f"{dag_id}-{task_id}") or "job"
    suffix = f"-{map_index}-{digest}" if map_index >= 0 else f"-{digest}"
    return readable[: 128 - len(suffix)] + suffix


def valid_job_name(name: str) -> bool:
    """Whether AWS Batch accepts ``name`` as a job name."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", name))


def submit_job_request(
    fields: Mapping[str, RequestField], values: Mapping[str, Any], *, job_name: str, tags: Mapping[str, str]
) -> dict[str, Any]:
    """SubmitJob's kwargs from an operator's request ``values`` (by parameter name, see ``fields``).

    Keyed fields go in as they are. ``command``, ``environment`` (a mapping), ``vcpus``, ``memory`` (MiB)
    and ``gpus`` override the same entries of ``container_overrides``; ``timeout`` is in seconds;
    ``tags`` are propagated to the job's tasks; ``submit_job_kwargs`` passes anything else through to
    SubmitJob as is, and wins over everything but what identifies the job (:data:`IDENTITY_KEYS`).

    :raises ValueError: ``submit_job_kwargs`` sets one of :data:`IDENTITY_KEYS`.
    """
    overrides = dict(values.get("container_overrides") or {})
    if values.get("command") is not None:
        overrides["command"] = list(values["command"])
    environment = values.get("environment")
    if environment:
        kept = [e for e in overrides.get("environment", []) if e["name"] not in environment]
        overrides["environment"] = kept + [{"name": k, "value": str(v)} for k, v in environment.items()]
    resources = {"VCPU": values.get("vcpus"), "MEMORY": values.get("memory"), "GPU": values.get("gpus")}
    requested = {kind: _number(value) for kind, value in resources.items() if value is not None}
    if requested:
        kept = [r for r in overrides.get("resourceRequirements", []) if r["type"] not in requested]
        overrides["resourceRequirements"] = kept + [{"type": k, "value": v} for k, v in requested.items()]
    folded = {
        "containerOverrides": overrides or None,
        "timeout": {"attemptDurationSeconds": int(values["timeout"])} if values.get("timeout") else None,
        "arrayProperties": {"size": int(values["array_size"])} if values.get("array_size") else None,
    }
    return {
        "jobName": job_name,
        **direct_request(fields, values),
        **{key: value for key, value in folded.items() if value is not None},
        "tags": dict(tags),
        "propagateTags": True,
        **passed_through("submit_job_kwargs", values.get("submit_job_kwargs"), IDENTITY_KEYS),
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _iso(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat()


def job_kind(job: dict[str, Any]) -> str:
    """How the job runs: ``multinode`` (``nodeProperties``: a parent, or a ``jobId#N`` node), ``eks``
    (``eksProperties``: a Kubernetes pod), ``ecs`` (``ecsProperties``: one or more containers in an ECS task)
    or ``container`` (``container``). An array job is any of these; see :func:`array_status_summary`.
    """
    if job.get("nodeProperties") or job.get("nodeDetails"):
        return "multinode"
    if (job.get("eksProperties") or {}).get("podProperties"):
        return "eks"
    if (job.get("ecsProperties") or {}).get("taskProperties"):
        return "ecs"
    return "container"


def main_node_index(job: dict[str, Any]) -> int | None:
    """The node a multi-node job reports on: the described node of a ``jobId#N`` node job
    (``nodeDetails.nodeIndex``), else the main node (``nodeProperties.mainNode``), which decides the job's
    status, exit code and times. ``None`` for other jobs.
    """
    index = (job.get("nodeDetails") or {}).get("nodeIndex")
    if index is None:
        index = (job.get("nodeProperties") or {}).get("mainNode")
    return None if index is None else int(index)


def _node_span(target_nodes: str, num_nodes: int | None) -> tuple[int, int] | None:
    """``targetNodes`` (``2``, ``0:3``, ``:3``, ``4:``) as an inclusive ``(first, last)``; ``None`` if invalid."""
    start, colon, end = target_nodes.partition(":")
    try:
        first = int(start) if start.strip() else 0
        if not colon:
            return first, first
        return first, int(end) if end.strip() else (num_nodes - 1 if num_nodes else sys.maxsize)
    except ValueError:
        return None


def node_range_for(node_properties: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The ``nodeRangeProperties`` entry that configures node ``index``: the narrowest range holding it
    (a nested range, ``4:5`` in ``0:10``, overrides the wider one).
    """
    best: tuple[int, dict[str, Any]] | None = None
    for node_range in node_properties.get("nodeRangeProperties") or []:
        span = _node_span(str(node_range.get("targetNodes", "")), node_properties.get("numNodes"))
        if span and span[0] <= index <= span[1] and (best is None or span[1] - span[0] < best[0]):
            best = (span[1] - span[0], node_range)
    return None if best is None else best[1]


def _task_containers(properties: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every ``taskProperties[].containers[]`` of ``ecsProperties`` or of an attempt."""
    tasks = (properties or {}).get("taskProperties") or []
    return [container for task in tasks for container in task.get("containers") or []]


def _pod_containers(properties: dict[str, Any] | None) -> list[dict[str, Any]]:
    pod = ((properties or {}).get("eksProperties") or {}).get("podProperties") or {}
    return list(pod.get("containers") or [])


def _own_containers(source: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The containers ``source`` (a job or a node range) describes, and whether they are Kubernetes (EKS) ones."""
    if source.get("container"):
        return [source["container"]], False
    pod = _pod_containers(source)
    return (pod, True) if pod else (_task_containers(source.get("ecsProperties")), False)


def job_containers(job: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The containers the job's result reports on, as DescribeJobs gives them (settings, and once they ran,
    exit codes and log streams), and whether they run on EKS: the job's own, or for a multi-node parent the
    main node's (from its ``nodeRangeProperties``, which carry settings only).
    """
    containers, on_eks = _own_containers(job)
    if not containers and not job.get("nodeDetails") and job_kind(job) == "multinode":
        index = main_node_index(job)
        node_range = None if index is None else node_range_for(job.get("nodeProperties") or {}, index)
        containers, on_eks = _own_containers(node_range or {})
    return containers, on_eks or bool(job.get("eksAttempts"))


def _attempts(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("attempts") or job.get("eksAttempts") or [])


def _attempt_containers(attempt: dict[str, Any]) -> list[dict[str, Any]]:
    """An attempt's containers: ``container`` (container jobs, multi-node parents), ``taskProperties[].containers``
    (ECS-properties jobs and nodes) or ``containers`` (EKS attempts)."""
    if attempt.get("container"):
        return [attempt["container"]]
    return _task_containers(attempt) or list(attempt.get("containers") or [])


def reported_container(
    containers: list[dict[str, Any]], essential: dict[str | None, bool] | None = None
) -> dict[str, Any] | None:
    """Of a job's containers, the one whose exit code and log the result reports: the first essential one that
    exited non-zero (the one that failed the job), else the first essential one, else the first.

    A container is essential unless it says ``essential: false`` (or ``essential`` maps its name to ``False``):
    ECS's default, and every container of an EKS pod.
    """
    flags = essential or {}
    essentials = [c for c in containers if flags.get(c.get("name"), c.get("essential", True)) is not False]
    failed = next((c for c in essentials if c.get("exitCode") not in (0, None)), None)
    return failed or next(iter(essentials or containers), None)


def _essential(defined: list[dict[str, Any]]) -> dict[str | None, bool]:
    """Whether each container (by name) is essential, from the job's described containers."""
    return {c.get("name"): c.get("essential", True) is not False for c in defined}


def _log_group(container: dict[str, Any] | None) -> str:
    options = ((container or {}).get("logConfiguration") or {}).get("options") or {}
    return str(options.get("awslogs-group", DEFAULT_LOG_GROUP))


def job_run(job: dict[str, Any]) -> dict[str, Any]:
    """What the job's current (or last) run reports: ``node_index`` and ``is_main_node`` (multi-node: the main
    node, or the described node of a ``jobId#N`` node job), ``container_name`` (ECS/EKS containers have
    names), ``exit_code``, ``reason``, ``log_group`` and ``log_stream``.

    EKS jobs have neither log group nor stream: Batch records none for them (pod logs go wherever the
    cluster's logging sends them), so there is no log tail and no metrics from the log.
    """
    defined, on_eks = job_containers(job)
    attempts = _attempts(job)
    own, _ = _own_containers(job)
    parent = job_kind(job) == "multinode" and not job.get("nodeDetails")
    # a multi-node parent's attempts are its main node's runs; other jobs describe their current run themselves
    current = _attempt_containers(attempts[-1]) if attempts and (parent or not own) else own
    chosen = reported_container(current, _essential(defined)) or {}
    name = chosen.get("name")

    def latest(key: str) -> Any:
        """``key`` of the reported container, else of the same container in the latest attempt that has it."""
        attempted = (c.get(key) for a in reversed(attempts) for c in _attempt_containers(a) if c.get("name") == name)
        return chosen.get(key) or next((value for value in attempted if value), None)

    definition = next((c for c in defined if c.get("name") == name), defined[0] if defined else None)
    return {
        "node_index": main_node_index(job) if job_kind(job) == "multinode" else None,
        "is_main_node": (job.get("nodeDetails") or {}).get("isMainNode", True)
        if job_kind(job) == "multinode"
        else None,
        "container_name": name,
        "exit_code": chosen.get("exitCode"),
        "reason": latest("reason"),
        "log_group": None if on_eks else _log_group(definition),
        "log_stream": None if on_eks else latest("logStreamName"),
        "image": chosen.get("image") or (definition or {}).get("image"),
    }


def log_location(job: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(log group, log stream)`` of a described job (of the reported container, see :func:`job_run`).

    The stream is ``None`` until the job starts; both are ``None`` for EKS jobs, for which Batch records none.
    """
    run = job_run(job)
    return run["log_group"], run["log_stream"]


def _pod(job: dict[str, Any]) -> dict[str, Any] | None:
    """Where an EKS job's (last) pod ran, to find its logs: pod name, namespace, node and cluster."""
    if job_kind(job) != "eks":
        return None
    current = (job.get("eksProperties") or {}).get("podProperties") or {}
    last = (job.get("eksAttempts") or [{}])[-1]
    return {
        "name": current.get("podName") or last.get("podName"),
        "namespace": last.get("podNamespace"),
        "node_name": current.get("nodeName") or last.get("nodeName"),
        "cluster_arn": last.get("eksClusterArn"),
    }


def array_status_summary(job: dict[str, Any]) -> dict[str, int] | None:
    """An array parent's children counts per state (``arrayProperties.statusSummary``); ``None`` for others."""
    properties = job.get("arrayProperties") or {}
    if properties.get("size") is None:
        return None
    return {state: int(count) for state, count in (properties.get("statusSummary") or {}).items()}


def _counts_text(counts: dict[str, int]) -> str:
    known = [state for state in _CHILD_STATES if counts.get(state)]
    return ", ".join(f"{counts[state]} {state}" for state in [*known, *sorted(set(counts) - set(_CHILD_STATES))])


def job_state(job: dict[str, Any]) -> str:
    """The state a watcher follows: the status, and for an array parent its children's counts per state
    (``PENDING [10 children: 4 RUNNING, 6 SUCCEEDED]``), so that a change in the counts wakes it too.
    """
    status = str(job["status"])
    counts = array_status_summary(job)
    text = _counts_text({state: n for state, n in (counts or {}).items() if n})
    return f"{status} [{job['arrayProperties']['size']} children: {text}]" if text else status


def _child_index(job: dict[str, Any]) -> int:
    index = (job.get("arrayProperties") or {}).get("index")
    if index is None:
        _, _, suffix = str(job["jobId"]).rpartition(":")
        index = int(suffix) if suffix.isdigit() else sys.maxsize
    return int(index)


def failed_child_ids(summaries: list[dict[str, Any]], limit: int = FAILED_CHILDREN_SHOWN) -> list[str]:
    """The ids of the ``limit`` failed children with the lowest indexes, of ListJobs' ``jobSummaryList``."""
    return [str(s["jobId"]) for s in sorted(summaries, key=_child_index)[:limit]]


def failed_children(parent: dict[str, Any], children: list[dict[str, Any]], listed: int) -> dict[str, Any]:
    """The failed children part of a failed array's result, from DescribeJobs of (some of) its failed children.

    ``failed_children`` lists each described child by index (exit code, reason, log); ``failed_children_count``
    is the larger of ``listed`` (how many ListJobs returned) and the parent's count of FAILED children.
    """
    shown = []
    for child in sorted(children, key=_child_index):
        run = job_run(child)
        shown.append(
            {
                "index": _child_index(child),
                "job_id": child["jobId"],
                "exit_code": run["exit_code"],
                "reason": run["reason"] or child.get("statusReason"),
                "log_group": run["log_group"],
                "log_stream": run["log_stream"],
            }
        )
    counted = (array_status_summary(parent) or {}).get("FAILED", 0)
    return {"failed_children": shown, "failed_children_count": max(listed, counted), "failed_children_error": None}


def summarize_job(job: dict[str, Any]) -> dict[str, Any]:
    """The task's result: a JSON-serializable digest of one DescribeJobs entry, for every kind of job.

    Exit code and log are those of :func:`job_run` (for a multi-node job, its main node's: ``node_index``);
    each of ``attempts`` (its retry strategy's) has its own exit code, reason and ``log_stream``; an array
    parent adds its size and children counts, an EKS job its ``pod``. The job's ``parameters`` are left out
    (they may hold anything the job definition substitutes, secrets included).
    """
    started, stopped = job.get("startedAt"), job.get("stoppedAt")
    run = job_run(job)
    essential = _essential(job_containers(job)[0])
    attempts = []
    for attempt in _attempts(job):
        container = reported_container(_attempt_containers(attempt), essential) or {}
        attempts.append(
            {
                "started_at": _iso(attempt.get("startedAt")),
                "stopped_at": _iso(attempt.get("stoppedAt")),
                "exit_code": container.get("exitCode"),
                "reason": container.get("reason") or attempt.get("statusReason"),
                "log_stream": container.get("logStreamName"),
            }
        )
    array = job.get("arrayProperties") or {}
    return {
        "job_id": job["jobId"],
        "job_name": job.get("jobName"),
        "job_queue": job.get("jobQueue"),
        "job_kind": job_kind(job),
        "job_definition": job.get("jobDefinition"),
        "image": run["image"],
        "status": job.get("status"),
        "status_reason": job.get("statusReason"),
        "exit_code": run["exit_code"],
        "node_index": run["node_index"],
        "is_main_node": run["is_main_node"],
        "container_name": run["container_name"],
        "attempts": attempts,
        "started_at": _iso(started),
        "stopped_at": _iso(stopped),
        "duration_seconds": (stopped - started) / 1000 if started and stopped else None,
        "log_group": run["log_group"],
        "log_stream": run["log_stream"],
        "pod": _pod(job),
        "array_size": array.get("size"),
        "array_status_summary": array_status_summary(job),
    }


def _reported(summary: dict[str, Any]) -> str:
    """Which node and container the exit code is of, e.g. `` (main node 0, container model)``."""
    parts = []
    if summary.get("node_index") is not None:
        parts.append(f"{'main node' if summary.get('is_main_node') else 'node'} {summary['node_index']}")
    if summary.get("container_name"):
        parts.append(f"container {summary['container_name']}")
    return f" ({', '.join(parts)})" if parts else ""


def describe_failure(summary: dict[str, Any]) -> str:
    """A failure message that says why: status reason, exit code, each attempt's reason, where the log is;
    for an array, the children's counts and the failed children; for an EKS job, its pod. No log line.
    """
    head = (
        f"AWS Batch job {summary['job_name']} ({summary['job_id']}) {summary['status']}: "
        f"{summary.get('status_reason') or 'no reason given'}"
    )
    if summary.get("array_size") is None:
        head += f"; exit code {summary.get('exit_code')}{_reported(summary)}"
    lines = [head]
    for number, attempt in enumerate(summary.get("attempts") or [], start=1):
        lines.append(f"  attempt {number}: exit code {attempt['exit_code']}, {attempt['reason'] or 'no reason'}")
    pod = summary.get("pod")
    if pod:
        lines.append(
            f"  pod {pod['name']} on node {pod['node_name']} (AWS Batch records no CloudWatch log stream for EKS jobs)"
        )
    if summary.get("array_size") is not None:
        lines.extend(_array_failure_lines(summary))
    return with_log_location(lines, summary)


def _array_failure_lines(summary: dict[str, Any]) -> list[str]:
    counts = _counts_text({state: n for state, n in (summary.get("array_status_summary") or {}).items() if n})
    lines = [f"  {summary['array_size']} children: {counts or 'no counts yet'}"]
    if summary.get("failed_children_error"):
        lines.append(f"  the failed children could not be listed: {summary['failed_children_error']}")
    shown = summary.get("failed_children") or []
    for child in shown:
        log = f" (log {child['log_group']} {child['log_stream']})" if child.get("log_stream") else ""
        lines.append(
            f"  child {child['index']} ({child['job_id']}): exit code {child['exit_code']}, "
            f"{child['reason'] or 'no reason'}{log}"
        )
    more = (summary.get("failed_children_count") or 0) - len(shown)
    if shown and more > 0:
        lines.append(f"  ... and {more} more failed children")
    return lines


def submitted_job(jobs: list[dict[str, Any]], request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The job (DescribeJobs ``JobDetail``) that SubmitJob ``request`` started, among ``jobs``: its name and
    every one of its tags; the newest if there are several."""
    tags = (request.get("tags") or {}).items()
    mine = [j for j in jobs if j.get("jobName") == request["jobName"] and tags <= (j.get("tags") or {}).items()]
    return max(mine, key=lambda job: job.get("createdAt", 0), default=None)


def may_reattach(job: Mapping[str, Any]) -> bool:
    """Whether a live job (a DescribeJobs ``JobDetail``) may be waited for again: nobody asked to terminate it."""
    return not (job.get("isTerminated") or job.get("isCancelled"))


def job_is_live(job: dict[str, Any]) -> bool:
    """Whether a job (a DescribeJobs ``JobDetail``) may still run."""
    return job.get("status") in ACTIVE_STATES


def start_choice(
    jobs: list[dict[str, Any]], own_try: int, reattachable: range, current: str | None = None
) -> tuple[str | None, list[str]]:
    """Which of a task instance's jobs (DescribeJobs details of its job name and task-instance tags) a trigger that
    submits for it waits for, and which live ones it stops (:func:`~airflow_ml_batch.jobs.common.start_choice`;
    a job someone asked to terminate is never re-attached to)."""
    return common_start_choice(
        jobs,
        own_try,
        reattachable,
        current,
        is_live=job_is_live,
        may_reattach=may_reattach,
    )


def found_job(prefix: str, summary: Mapping[str, Any]) -> FoundJob | None:
    """A group's job from its ListJobs summary (its name says the model, try and attempt); ``None`` if not one."""
    parsed = parse_job_name(prefix, summary.get("jobName", ""))
    if parsed is None:
        return None
    index, try_number, attempt = parsed
    status = summary.get("status")
    created = float(summary.get("createdAt") or 0)
    return FoundJob(summary["jobId"], index, try_number, attempt, status in ACTIVE_STATES, created, status == "FAILED")
