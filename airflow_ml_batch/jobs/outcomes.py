"""Every model of a group in one table: what a person reads in the task log when the group ends (no I/O).

A group's result holds one entry per model (``RunGroupTrigger``): the model's label and index, the job's
digest (AWS Batch's :func:`~airflow_ml_batch.jobs.batch.summarize_job` or ECS's
:func:`~airflow_ml_batch.jobs.ecs.summarize_task`), ``succeeded``, ``tries`` and ``message``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: the table's columns, in order
COLUMNS = ("model", "status", "duration", "tries", "exit code", "reason", "log")
#: characters of a reason in the table (the whole message is in the result)
REASON_WIDTH = 60


def model_status(entry: Mapping[str, Any]) -> str:
    """The model's status: AWS Batch's job status, ECS's outcome (``SUCCEEDED``, ``CONTAINER_FAILED``, ...)."""
    status = entry.get("status") or entry.get("outcome") or "UNKNOWN"
    if status == "success":  # ECS's word for a task whose essential containers exited 0
        return "SUCCEEDED"
    return str(status).upper()


def model_exit_code(entry: Mapping[str, Any]) -> Any:
    """The job's exit code (an ECS task's first essential container that failed, else its first one)."""
    if "exit_code" in entry:
        return entry["exit_code"]
    containers = entry.get("containers") or []
    essential = set(entry.get("essential_containers") or [c["name"] for c in containers])
    judged = [c for c in containers if c.get("name") in essential] or list(containers)
    failed = [c for c in judged if c.get("exit_code") not in (0, None)]
    chosen = (failed or judged or [{}])[0]
    return chosen.get("exit_code")


def model_reason(entry: Mapping[str, Any]) -> str:
    """Why a model failed, in one line: the status reason, else the first line of the message; ``""`` for a success
    (AWS Batch says "Essential container in task exited" of those too)."""
    if entry.get("succeeded"):
        return ""
    reason = entry.get("status_reason") or entry.get("stopped_reason") or str(entry.get("message") or "").split("\n")[0]
    return " ".join(str(reason).split())


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    minutes, second = divmod(round(seconds), 60)
    return f"{minutes}m{second:02d}s" if minutes else f"{second}s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def outcome_rows(
    entries: Sequence[Mapping[str, Any]], log_url: Callable[[Mapping[str, Any]], str | None]
) -> list[tuple[str, ...]]:
    """One row of :data:`COLUMNS` per entry; ``log_url`` gives an entry's log link (``None``: no log)."""
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        exit_code = model_exit_code(entry)
        rows.append(
            (
                str(entry.get("model", entry.get("index", "?"))),
                model_status(entry),
                _duration(entry.get("duration_seconds")),
                str(entry.get("tries", 1)),
                "-" if exit_code is None else str(exit_code),
                _cut(model_reason(entry), REASON_WIDTH) or "-",
                log_url(entry) or "-",
            )
        )
    return rows


def outcome_table(entries: Sequence[Mapping[str, Any]], log_url: Callable[[Mapping[str, Any]], str | None]) -> str:
    """Every entry as a row of a fixed-width table with a header, failed models first, then in model order."""
    ordered = sorted(entries, key=lambda entry: (bool(entry.get("succeeded")), int(entry.get("index", 0))))
    rows = [COLUMNS, *outcome_rows(ordered, log_url)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:  # the log link, last, is not padded
        lines.append("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]))
    lines.insert(1, "  ".join("-" * width for width in widths) + "  ---")
    return "\n".join(line.rstrip() for line in lines)
