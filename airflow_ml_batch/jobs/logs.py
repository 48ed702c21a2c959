"""Copying a job's CloudWatch log into the Airflow task log: when, which streams, and how lines read (no I/O).

A job's result (Batch or ECS) names its log group and stream; a Batch job retried by its retry strategy names
each attempt's stream too (``attempts[].log_stream``). Each stream is read in one GetLogEvents call of its
last lines; the task log shows them under a heading, each with its event time, each capped in length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

#: The values of the operators' ``job_logs``: when a job's log is copied into the task log.
JOB_LOGS = ("never", "on_failure", "always")
#: The most characters of one log line copied; the rest is counted, not shown.
MAX_LINE_CHARACTERS = 2000
#: The most events one GetLogEvents call returns: ``job_log_lines`` stays below it, so that one more line
#: than copied can be asked for, to tell whether earlier lines were left out.
MAX_LOG_LINES = 9999


def check_job_logs(job_logs: Any, job_log_lines: Any) -> None:
    """Raise a ``ValueError`` naming the value at fault if ``job_logs`` or ``job_log_lines`` is invalid."""
    if job_logs not in JOB_LOGS:
        raise ValueError(f"job_logs must be one of {', '.join(map(repr, JOB_LOGS))}, not {job_logs!r}")
    if isinstance(job_log_lines, bool) or not isinstance(job_log_lines, int) or not 1 <= job_log_lines <= MAX_LOG_LINES:
        raise ValueError(f"job_log_lines must be a whole number from 1 to {MAX_LOG_LINES}, not {job_log_lines!r}")


def copies_log(job_logs: str, succeeded: bool) -> bool:
    """Whether a job that ``succeeded`` (or not) has its log copied, by ``job_logs``."""
    return job_logs == "always" or (job_logs == "on_failure" and not succeeded)


@dataclass(frozen=True)
class LogSource:
    """One log stream of a job to copy, with the heading it is copied under."""

    heading: str
    log_group: str
    #: ``None``: the attempt has no stream (its container never started); only the heading is shown
    log_stream: str | None
    #: the region of the log when it differs from the job's (an ECS ``awslogs-region``)
    log_region: str | None = None


def log_sources(result: Mapping[str, Any]) -> list[LogSource]:
    """The streams of a job's ``result`` to copy, in order: each attempt's when there were several (Batch's
    retry strategy), else the job's own. None for a job without a log (an EKS job, one that never started).
    """
    group, region = result.get("log_group"), result.get("log_region")
    if not group:
        return []
    attempts = [attempt for attempt in result.get("attempts") or [] if isinstance(attempt, Mapping)]
    if len(attempts) > 1 and any(attempt.get("log_stream") for attempt in attempts):
        sources = []
        for number, attempt in enumerate(attempts, start=1):
            stream = attempt.get("log_stream")
            where = f"log stream {stream} in {group}" if stream else "no log stream (its container never started)"
            sources.append(LogSource(f"attempt {number} of {len(attempts)}: {where}", group, stream, region))
        return sources
    stream = result.get("log_stream")
    return [LogSource(f"log stream {stream} in {group}", group, stream, region)] if stream else []


def event_line(event: Mapping[str, Any]) -> str:
    """One log event as a line: its time in UTC (ISO 8601, milliseconds), then its message, capped at
    :data:`MAX_LINE_CHARACTERS` characters."""
    stamp = event.get("timestamp")
    when = (
        datetime.fromtimestamp(stamp / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(stamp, (int, float))
        else "-"
    )
    message = str(event.get("message", "")).rstrip("\r\n")
    if len(message) > MAX_LINE_CHARACTERS:
        message = f"{message[:MAX_LINE_CHARACTERS]}... ({len(message) - MAX_LINE_CHARACTERS} more characters)"
    return f"{when} {message}"


def copied_log(
    source: LogSource, events: Sequence[Mapping[str, Any]], lines: int, link: str | None, title: str | None = None
) -> str:
    """The text the task log shows for ``source``: ``title`` and its heading, a note when earlier lines were
    left out (``events`` has more than ``lines``: one more was asked for), then the last ``lines`` events."""
    head = f"{title}: {source.heading}" if title else source.heading
    shown = list(events)[-lines:] if lines > 0 else []
    text = [head]
    if len(events) > len(shown):
        text.append(f"(earlier lines left out: the last {len(shown)} are copied here; the whole log: {link or head})")
    elif not shown:
        text.append("(no log lines)")
    text.extend(event_line(event) for event in shown)
    return "\n".join(text)


def not_copied(source: LogSource, reason: str, link: str | None, title: str | None = None) -> str:
    """The one warning line a log that could not be read leaves in the task log: what, why, and where it is."""
    head = f"{title}: {source.heading}" if title else source.heading
    return f"Could not copy the log ({head}): {reason}; read it at {link or source.log_group}"


def model_heading(entry: Mapping[str, Any]) -> str:
    """The title of a group's model's copied log: the model and its job."""
    return f"Model {entry.get('model')} ({job_title(entry)})"


def job_title(result: Mapping[str, Any]) -> str:
    """The default title of a job's copied log: its id (a Batch job id, an ECS task ARN)."""
    return f"Job {result.get('job_id') or result.get('task_arn') or '(unknown)'}"
