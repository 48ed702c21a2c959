"""What jobs of every service share: the tags that name a task instance, where a failed job's log is, the
metrics a job logs, and whether a cancelled trigger's job is abandoned (no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

_INVALID_TAG_CHARACTERS = re.compile(r"[^\w\s.:/=+\-@]", re.UNICODE)
_INVALID_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


def task_instance_digest(
    dag_id: str, task_id: str, run_id: str, map_index: int, *, algorithm: str = "sha1", length: int = 10
) -> str:
    """Hex digits naming one task instance, the same in every try: what job names, groups and ``startedBy`` carry.

    ``algorithm`` and ``length`` stay what each name had when it shipped (a retry finds the jobs of earlier
    tries, and of earlier releases, by them).
    """
    key = f"{dag_id}\n{task_id}\n{run_id}\n{map_index}"
    return hashlib.new(algorithm, key.encode(), usedforsecurity=False).hexdigest()[:length]


def name_part(text: str) -> str:
    """``text`` with every run of characters AWS does not allow in a name (``[A-Za-z0-9_-]``) as ``-``, trimmed."""
    return _INVALID_NAME_CHARACTERS.sub("-", text).strip("-_")


def task_instance_tags(task_instance: Any, *, with_try: bool = True) -> dict[str, str]:
    """Cost-attribution tags naming a task instance: dag, task, run, map index and (optionally) try.

    Values are made valid for AWS tags (letters, digits, spaces and ``_.:/=+-@``; 256 characters).
    Without ``with_try`` they identify the task instance across tries, to find an earlier try's job.
    """
    tags = {
        "airflow:dag_id": task_instance.dag_id,
        "airflow:task_id": task_instance.task_id,
        "airflow:run_id": task_instance.run_id,
        "airflow:map_index": str(task_instance.map_index),
    }
    if with_try:
        tags["airflow:try_number"] = str(task_instance.try_number)
    return {key: _INVALID_TAG_CHARACTERS.sub("_", str(value))[:256] for key, value in tags.items()}


def tag_problem(key: str, value: str) -> str | None:
    """What AWS's tag rules (Batch and ECS alike) find wrong with the tag ``key: value``; ``None`` if nothing.

    Keys of 1 to 128 characters, values of up to 256, of letters, digits, spaces and ``_.:/=+-@``; the
    prefixes ``aws:`` (AWS's) and ``airflow:`` (the tags naming the task instance) are reserved.
    """
    if not 1 <= len(key) <= 128:
        return f"a tag key has 1 to 128 characters, not {len(key)}"
    if len(value) > 256:
        return f"a tag value has at most 256 characters, not {len(value)}"
    for text, what in ((key, "key"), (value, "value")):
        bad = _INVALID_TAG_CHARACTERS.search(text)
        if bad:
            return f"the tag {what} {text!r} has {bad.group()!r}: only letters, digits, spaces and _.:/=+-@"
    if key.lower().startswith(("aws:", "airflow:")):
        return f"the tag key {key!r} starts with a reserved prefix (aws: or airflow:)"
    return None


def with_log_location(lines: list[str], summary: dict[str, Any]) -> str:
    """A failure message: ``lines``, then where the job's log is (``summary``'s group and stream), never a line
    of it: the task log has the lines (``job_logs``)."""
    if summary.get("log_group") and summary.get("log_stream"):
        lines = [*lines, f"  log: {summary['log_group']} {summary['log_stream']}"]
    return "\n".join(lines)


def metrics_from_log(lines: list[str]) -> dict[str, Any] | None:
    """The ``metrics`` of the last log line that is a JSON object with a ``metrics`` mapping, if any."""
    for line in reversed(lines):
        text = line.strip()
        if not (text.startswith("{") and '"metrics"' in text):
            continue
        try:
            document = json.loads(text)
        except ValueError:
            continue
        metrics = document.get("metrics") if isinstance(document, dict) else None
        if isinstance(metrics, dict):
            return metrics
    return None


#: The state of a task instance that could not be read: a doubt, which never stops a job.
UNKNOWN_STATE = "<unknown>"


def job_abandoned(state: str | None, try_number: int | None = None, own_try: int | None = None) -> bool:
    """Whether nobody will wait for a cancelled trigger's job, from its task's state (and try) now.

    ``try_number`` is the task instance's try now and ``own_try`` the one of the trigger's own task
    instance (the try that started the job), when known. A task on another try than the job's: the try
    that started the job is over, whatever the state says (the next try may have deferred already). Else
    ``deferred``: the trigger moved or the triggerer restarts, the job is waited for. Unknown: left
    running, as a doubt never terminates a job. Anything else (no state: cleared; the next try on its
    way; a success or failure a user marked; a timeout): the try that started the job is over, and the
    next one never re-attaches to a job of a cleared try.
    """
    if state == UNKNOWN_STATE:
        return False
    if try_number is not None and own_try is not None and try_number != own_try:
        return True
    return state != "deferred"


def try_of(job: Mapping[str, Any]) -> int | None:
    """The try that started ``job`` (its ``airflow:try_number`` tag), if it says. Tags as a mapping (AWS Batch,
    :func:`~airflow_ml_batch.jobs.ecs.listed_task`) or as ECS gives them (a list of ``key``/``value``)."""
    tags = job.get("tags") or {}
    if not isinstance(tags, Mapping):
        tags = {tag["key"]: tag["value"] for tag in tags}
    tag = str(tags.get("airflow:try_number", ""))
    return int(tag) if tag.isdigit() else None


def job_to_reattach(
    jobs: Iterable[Mapping[str, Any]], tries: range, may_reattach: Callable[[Any], bool] = lambda job: True
) -> Any:
    """The first of ``jobs`` (newest first) that a try in ``tries`` started and that ``may_reattach``; ``None`` if
    none: the job a later try of a task instance waits for instead of starting its own."""
    return next((job for job in jobs if try_of(job) in tries and may_reattach(job)), None)


def start_choice(
    jobs: list[dict[str, Any]],
    own_try: int,
    reattachable: range,
    current: str | None = None,
    *,
    is_live: Callable[[dict[str, Any]], bool],
    may_reattach: Callable[[dict[str, Any]], bool] = lambda job: True,
) -> tuple[str | None, list[str]]:
    """Which of a task instance's jobs a trigger that starts its job waits for, and which live ones it stops.

    ``jobs``: every job listed for the task instance, each with ``jobId``, ``createdAt`` (a number) and its
    ``tags`` as a mapping; ``is_live``: whether one may still run; ``may_reattach``: whether a live one may be
    waited for (nobody asked to stop it).

    ``current``: the job it already waits for (a later look for a second one, which the listing may have
    shown late): kept, every other live job of ``own_try`` stopped (never another try's). Otherwise a job
    of ``own_try`` (a trigger of this try ran before: the triggerer restarted) is waited for, live or ended,
    the oldest; else the newest live job of a try in ``reattachable`` that ``may_reattach``; else none (start
    one). Every other live job is stopped.
    """
    live = sorted(filter(is_live, jobs), key=lambda job: job.get("createdAt", 0), reverse=True)
    own = [job for job in jobs if try_of(job) == own_try]
    if current is not None:
        return current, [str(job["jobId"]) for job in live if job in own and job["jobId"] != current]
    first = min(own, key=lambda job: (job.get("createdAt", 0), job["jobId"]), default=None)
    earlier = None
    if first is None:
        earlier = job_to_reattach(live, reattachable, may_reattach)
    keep = next((str(job["jobId"]) for job in (first, earlier) if job is not None), None)
    return keep, [str(job["jobId"]) for job in live if job["jobId"] != keep]
