"""What jobs of every service share: the tags that name a task instance, where a failed job's log is and the
metrics a job logs (no I/O)."""

from __future__ import annotations

import json
import re
from typing import Any

_INVALID_TAG_CHARACTERS = re.compile(r"[^\w\s.:/=+\-@]", re.UNICODE)


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
