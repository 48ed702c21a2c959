"""Model groups: one task instance runs many models' jobs. Names, what to re-attach to, and the verdict (no I/O).

Every job of a group is named (Batch) or tagged (ECS) with the group's key, the model's index and label,
the task's try and the model's attempt within that try, so that a trigger that starts again (a triggerer
restart, a task retry) finds the jobs already submitted instead of submitting them twice.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_ml_batch.jobs.common import name_part, task_instance_digest

#: the most characters of a model's label in its job name (Batch allows 128 in all)
_LABEL_CHARACTERS = 55


def model_label(entry: Mapping[str, Any], index: int) -> str:
    """What a model is called in names, logs and results: its ``job_name``, its ``model_id`` tag, or its index."""
    label = entry.get("job_name") or (entry.get("tags") or {}).get("model_id") or f"model-{index}"
    return str(label)


def xcom_reference(task_id: str, key: str, label: str = "") -> dict[str, str]:
    """What a group's ``models`` holds when its entries are the XCom ``key`` of task ``task_id`` (``push_groups``).

    ``label`` (:func:`group_label` of its models) labels the group's map index before its entries are pulled:
    Airflow 3.2+ renders the label before the run, and shows it while the group waits.
    """
    return {"xcom_task_id": task_id, "xcom_key": key, "models_label": label}


def referenced_xcom(models: Any) -> tuple[str, str] | None:
    """``(task_id, key)`` if ``models`` is an :func:`xcom_reference` (``models_label`` optional), else ``None``."""
    if isinstance(models, Mapping) and set(models) in ({"xcom_task_id", "xcom_key"}, set(xcom_reference("", ""))):
        return str(models["xcom_task_id"]), str(models["xcom_key"])
    return None


def group_key(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """Ten hex digits naming one task instance of a group, the same in every try."""
    return task_instance_digest(dag_id, task_id, run_id, map_index)


def group_prefix(base: str, key: str) -> str:
    """The start of every job name of a group: a readable ``base`` (the task id, say), its key, ``--``."""
    readable = name_part(base)[:40] or "group"
    return f"{readable}-{key}--"


def model_job_name(prefix: str, index: int, label: str, try_number: int, attempt: int) -> str:
    """A model's Batch job name: ``<prefix><index>-<label>-t<try>-a<attempt>``, valid for Batch."""
    readable = name_part(label)[:_LABEL_CHARACTERS] or "model"
    return f"{prefix}{index}-{readable}-t{try_number}-a{attempt}"


@dataclass(frozen=True)
class FoundJob:
    """A job of the group that AWS already knows, with what its name or tags say of it."""

    job_id: str
    index: int
    try_number: int
    attempt: int
    active: bool
    created_at: float = 0.0
    #: it ended and failed (known from the listing alone: AWS Batch's status; ECS tells only by a describe)
    failed: bool = False


def parse_job_name(prefix: str, name: str) -> tuple[int, int, int] | None:
    """``(index, try, attempt)`` of a job named by :func:`model_job_name` with ``prefix``; ``None`` otherwise."""
    if not name.lower().startswith(prefix.lower()):
        return None
    match = re.fullmatch(r"(\d+)-.*-t(\d+)-a(\d+)", name[len(prefix) :])
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


@dataclass
class Plan:
    """What a group's trigger does first with the jobs it found (see :func:`plan_group`)."""

    #: model index -> the job to wait for (running, or finished: its result decides what follows)
    attach: dict[int, FoundJob]
    #: active jobs nobody will wait for (of a cleared try, or a second one for a model)
    stop: list[FoundJob]
    #: model index -> the highest attempt already submitted for it in this try (counts against ``model_retries``)
    attempts: dict[int, int]


def plan_group(
    found: Iterable[FoundJob], model_count: int, try_number: int, reattachable: range, reattach: bool = True
) -> Plan:
    """Which found jobs a (re)started group trigger waits for, and which it stops.

    The newest job of each model from this try or a try in ``reattachable`` (tries since the last clear)
    is waited for: a running one is not submitted again, a succeeded one is done, a failed one of this
    try counts as one of its attempts (the next attempt's number is the highest seen plus one). A job known
    to have failed in an earlier try is not waited for: its model is submitted again without describing it
    or reading its log once more. Active jobs of other
    tries (a cleared try's), older active duplicates, and with ``reattach=False`` every active job of an
    earlier try, are stopped. Jobs of later tries (a newer trigger of the same task exists) are left alone.
    """
    attach: dict[int, FoundJob] = {}
    stop: list[FoundJob] = []
    attempts: Counter[int] = Counter()
    for job in sorted(found, key=lambda j: (j.try_number, j.attempt, j.created_at)):
        if job.index >= model_count or job.try_number > try_number:
            continue
        if job.try_number == try_number:  # the highest attempt seen: a lost job may leave a gap in the count
            attempts[job.index] = max(attempts[job.index], job.attempt)
        keep = job.try_number == try_number or (reattach and job.try_number in reattachable and not job.failed)
        if not keep:
            if job.active:
                stop.append(job)
            continue
        earlier = attach.get(job.index)
        if earlier is not None and earlier.active:
            stop.append(earlier)
        attach[job.index] = job
    return Plan(attach, stop, dict(attempts))


#: failed models a progress line names (the count says how many there are)
FAILED_NAMED = 10


def progress_line(states: Mapping[int, str], total: int, failed: Sequence[str] = ()) -> str:
    """``"100 models: 40 RUNNING, 50 SUCCEEDED, 10 waiting to be submitted; failed so far (2): m7, m9"``.

    States in a stable order; ``failed`` are the labels of the models that failed for good so far, the first
    :data:`FAILED_NAMED` named.
    """
    counts = Counter(states.values())
    waiting = total - sum(counts.values())
    parts = [f"{count} {state}" for state, count in sorted(counts.items())]
    if waiting:
        parts.append(f"{waiting} waiting to be submitted")
    line = f"{total} models: " + ", ".join(parts)
    if failed:
        named = ", ".join(failed[:FAILED_NAMED]) + (", ..." if len(failed) > FAILED_NAMED else "")
        line += f"; failed so far ({len(failed)}): {named}"
    return line


#: characters of a group's label in the grid (Airflow keeps at most 250)
_LABEL_LIMIT = 250


def group_label(labels: Sequence[str]) -> str:
    """What the grid shows for a group's map index: ``"m001 .. m100 (100 models)"``, or the one model's label."""
    if not labels:
        return ""
    if len(labels) == 1:
        return labels[0][:_LABEL_LIMIT]
    ends = 100  # each end's share of the label, so that both ends always show
    return f"{labels[0][:ends]} .. {labels[-1][:ends]} ({len(labels)} models)"


def entries_label(entries: Sequence[Any]) -> str:
    """:func:`group_label` of a group's entries, each called by :func:`model_label` (its index if not a mapping)."""
    return group_label([model_label(e, i) if isinstance(e, dict) else str(i) for i, e in enumerate(entries)])


#: failures a group's failure message shows in full (all of them are in the result)
FAILURES_SHOWN = 5


def group_failure_message(noun: str, results: Sequence[Mapping[str, Any]], allowed_failures: int) -> str | None:
    """Why a finished group fails (``None``: it succeeds): how many models failed, and the first failures' messages."""
    failed = [r for r in results if not r.get("succeeded")]
    if len(failed) <= allowed_failures:
        return None
    lines = [f"{len(failed)} of {len(results)} models failed ({noun}; allowed_failures={allowed_failures})."]
    for result in failed[:FAILURES_SHOWN]:
        lines.append(f"--- model {result['model']} (tries {result.get('tries', 1)}):")
        lines.append(str(result.get("message") or result.get("status")))
    if len(failed) > FAILURES_SHOWN:
        lines.append(f"... and {len(failed) - FAILURES_SHOWN} more: every model's outcome is in the result")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class GroupSettings:
    """The settings of a group's trigger, declared once: its keywords, its attributes and what it serializes.

    The group operators take the same parameters and pass them on by these names.
    """

    #: extra jobs a model may get within this try after its job failed
    model_retries: int = 0
    #: the most jobs of the group submitted and not finished at once; ``None``: no cap
    max_running: int | None = None
    #: models that may fail without failing the task
    allowed_failures: int = 0
    #: the most submissions per second of every group on this connection and region; ``None``: the rate AWS
    #: publishes for the account (AWS Batch's SubmitJob 50, ECS's RunTask on Fargate 20), halved on throttling
    submit_rate: float | None = None
    #: seconds between two lines of counts per state in the task log
    progress_interval: float = 300.0
