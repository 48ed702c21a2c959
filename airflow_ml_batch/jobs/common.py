"""What jobs of every service share: the tags that name a task instance, where a failed job's log is, the
metrics a job logs, and whether a cancelled trigger's job is abandoned (no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
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
