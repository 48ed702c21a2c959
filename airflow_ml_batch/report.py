"""Fleet reports: the outcome of every model job of a run, as rows, a CSV file, a chart and a summary.

:class:`~airflow_ml_batch.operators.report.FleetReportOperator` builds the whole report in one task; the
pieces are here for a report task of your own. A model's outcome comes from its job's result
(:func:`outcome_from_result`: what the task or its group's trigger pushed), or, for a model whose task
left none, from AWS (:func:`gather_batch_jobs`, :func:`gather_ecs_tasks`: every job kind is read alike, a
multi-node job's exit code is its main node's). A model whose task never submitted a job is reported as
``NOT_SUBMITTED``. The chart needs matplotlib (``pip install 'airflow-ml-batch[report]'``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_ml_batch.jobs.batch import job_containers, summarize_job
from airflow_ml_batch.jobs.ecs import classify_stopped_task, summarize_task
from airflow_ml_batch.jobs.outcomes import model_exit_code, model_reason, model_status

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.batch import BatchHook
    from airflow_ml_batch.hooks.ecs import EcsHook

#: The status of a model whose task never submitted a job (it failed before, or was never run).
NOT_SUBMITTED = "NOT_SUBMITTED"
#: The status of a model whose task left no result and whose job AWS no longer describes (ECS forgets a
#: task about an hour after it stops).
NOT_FOUND = "NOT_FOUND"
#: The job tag and environment variable that name a job's model (``airflow_ml_batch.fleet`` sets both).
MODEL_ID_KEY = "model_id"
MODEL_ID_VARIABLE = "MODEL_ID"
CSV_COLUMNS = (
    "model_id",
    "status",
    "job_id",
    "duration_seconds",
    "attempts",
    "try_number",
    "exit_code",
    "reason",
    "definition",
    "image",
    "dataset",
    "parameters",
)
#: The environment variables ``airflow_ml_batch.fleet`` gives each job: its dataset and parameters (JSON).
DATASET_VARIABLE = "MODEL_DATASET"
PARAMETERS_VARIABLE = "MODEL_PARAMETERS"


@dataclass(frozen=True)
class JobOutcome:
    """What became of one model's job."""

    model_id: str
    status: str
    job_id: str | None = None
    duration_seconds: float | None = None
    #: AWS Batch attempts of the job (its retry strategy), 0 if it never started
    attempts: int = 0
    #: the Airflow try that submitted the job, from its ``airflow:try_number`` tag
    try_number: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: what ran, the record kept per model: the job (or task) definition as ``name:revision``, the
    #: image, and the model's dataset and parameters (JSON) from the job's environment
    definition: str | None = None
    image: str | None = None
    dataset: str | None = None
    parameters: str | None = None
    #: where the job logged: CloudWatch log group, stream and region (for a log link; never the lines)
    log_group: str | None = None
    log_stream: str | None = None
    log_region: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def pulled(value: Any) -> list[Any]:
    """``ti.xcom_pull(task_ids=<a mapped task>, key=...)`` as a list, on every Airflow version.

    The results of ``BatchFleetOperator`` and ``EcsFleetOperator`` (a list per group) come out as one
    flat list of per-model results, like those of the single-job operators. Airflow 2 returns every map
    index's value; Airflow 3 a list, the bare value when exactly one
    exists, or ``None`` when none does. Airflow 3 also hands a result that the triggerer pushed (a task
    ended from the trigger) to tasks as JSON text, as it stores such XComs encoded twice: those are
    decoded here.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, (str, bytes, Mapping)) else list(value)
    flat: list[Any] = []
    for item in map(_decoded, items):
        if isinstance(item, list):  # a group's result: one per model
            flat.extend(map(_decoded, item))
        else:
            flat.append(item)
    return flat


def _decoded(item: Any) -> Any:
    if isinstance(item, str) and item.startswith(("{", "[")):
        with contextlib.suppress(ValueError):
            return json.loads(item)
    return item


def model_ids(expanded: Iterable[Any]) -> list[str]:
    """The model ids of ``airflow_ml_batch.fleet.batch_kwargs()`` or ``ecs_kwargs()`` entries, in map order.

    Groups of entries (``airflow_ml_batch.fleet.groups()``) are read as the entries they hold, in order.
    """
    return [entry_model_id(entry, index) for index, entry in enumerate(model_entries(expanded))]


def model_entries(expanded: Iterable[Any]) -> list[Mapping[str, Any]]:
    """Per-model entries, in order: ``expanded`` as given, or the entries of its groups."""
    entries: list[Mapping[str, Any]] = []
    for item in expanded:
        entries.extend(item if isinstance(item, (list, tuple)) else [item])
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise TypeError(f"models[{index}] must be a mapping of operator arguments, not {entry!r:.200}")
    return entries


def entry_model_id(entry: Mapping[str, Any], index: int) -> str:
    """The model id of one entry: its ``MODEL_ID`` variable, else its ``model_id`` tag, else its job name, else
    ``model-<index>`` (how a group names a model without either, :func:`~airflow_ml_batch.jobs.groups.model_label`)."""
    model = (entry.get("environment") or {}).get(MODEL_ID_VARIABLE) or (entry.get("tags") or {}).get(MODEL_ID_KEY)
    return str(model or entry.get("job_name") or f"model-{index}")


def outcome_from_result(model_id: str, result: Mapping[str, Any], entry: Mapping[str, Any] | None = None) -> JobOutcome:
    """A model's outcome from its job's result, as its task or its group's trigger wrote it; no AWS call.

    ``result`` is a single-job operator's result (AWS Batch's
    :func:`~airflow_ml_batch.jobs.batch.summarize_job`, ECS's :func:`~airflow_ml_batch.jobs.ecs.summarize_task`)
    or a group's entry (the same plus ``model``, ``succeeded``, ``tries``, ``message``; or, for a model
    AWS never started, ``status`` and ``status_reason``). ``attempts`` counts every run of the model: a
    group's earlier jobs (``tries``) and the last job's Batch attempts. ``entry`` (the model's operator
    arguments) gives the dataset and parameters.
    """
    if "task_arn" in result or "outcome" in result:  # ECS: the container whose exit code is reported
        image = next((c.get("image") for c in result.get("containers") or [] if c.get("image")), None)
        attempts = 1 if result.get("started_at") else 0
        definition = _definition(result.get("task_definition"))
    else:  # AWS Batch
        image = result.get("image")
        attempts = len(result.get("attempts") or [])
        definition = _definition(result.get("job_definition"))
    tries = int(result.get("tries") or 1)
    environment = {str(k): str(v) for k, v in ((entry or {}).get("environment") or {}).items()}
    return JobOutcome(
        model_id=model_id,
        status=model_status(result),
        job_id=result.get("task_arn") or result.get("job_id"),
        duration_seconds=result.get("duration_seconds"),
        attempts=attempts + tries - 1,
        exit_code=model_exit_code(result),
        reason=model_reason(result) or None,
        metrics=dict(result.get("metrics") or {}),
        definition=definition,
        image=image,
        dataset=environment.get(DATASET_VARIABLE),
        parameters=environment.get(PARAMETERS_VARIABLE),
        log_group=result.get("log_group"),
        log_stream=result.get("log_stream"),
        log_region=result.get("log_region"),
    )


def _definition(arn: str | None) -> str | None:
    """``name:revision`` of a job or task definition ARN (``...:job-definition/forecast:3``)."""
    return arn.rsplit("/", 1)[-1] if arn else None


def _variables(containers: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The environment of ``containers``, merged (ECS and Batch call it ``environment``, EKS ``env``)."""
    return {
        str(v["name"]): str(v.get("value", ""))
        for c in containers
        for v in (c.get("environment") or c.get("env") or [])
        if v.get("name")
    }


def _outcome(model: str, summary: Mapping[str, Any], environment: Mapping[str, str], **fields: Any) -> JobOutcome:
    return JobOutcome(
        model_id=model,
        duration_seconds=summary["duration_seconds"],
        dataset=environment.get(DATASET_VARIABLE),
        parameters=environment.get(PARAMETERS_VARIABLE),
        log_group=summary.get("log_group"),
        log_stream=summary.get("log_stream"),
        **fields,
    )


def _latest_per_model(models: Sequence[str], outcomes: Iterable[JobOutcome]) -> list[JobOutcome]:
    """One outcome per model of ``models``, in that order: its latest try's, else :data:`NOT_SUBMITTED`."""
    by_model: dict[str, JobOutcome] = {}
    for outcome in outcomes:
        earlier = by_model.get(outcome.model_id)
        if earlier is None or (earlier.try_number or 0) <= (outcome.try_number or 0):
            by_model[outcome.model_id] = outcome
    return [by_model.get(model) or JobOutcome(model_id=model, status=NOT_SUBMITTED) for model in models]


def _try_number(tags: Mapping[str, Any]) -> int | None:
    text = str(tags.get("airflow:try_number", ""))
    return int(text) if text.isdigit() else None


def _metrics_by_id(results: Iterable[Mapping[str, Any] | None], key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: dict(r.get("metrics") or {}) for r in results if r and r.get(key)}


def batch_job_outcome(job: Mapping[str, Any]) -> JobOutcome | None:
    """The outcome of one DescribeJobs entry, its model named by its tag or environment (``None``: neither)."""
    containers, _ = job_containers(dict(job))
    environment = _variables(containers)
    tags = job.get("tags") or {}
    model = tags.get(MODEL_ID_KEY) or environment.get(MODEL_ID_VARIABLE)
    if not model:
        return None
    summary = summarize_job(dict(job))
    return _outcome(
        str(model),
        summary,
        environment,
        status=str(summary["status"]),
        job_id=summary["job_id"],
        attempts=len(summary["attempts"]),
        try_number=_try_number(tags),
        exit_code=summary["exit_code"],
        reason=summary["status_reason"],
        definition=_definition(summary["job_definition"]),
        image=summary["image"],
    )


def ecs_task_outcome(task: Mapping[str, Any]) -> JobOutcome | None:
    """The outcome of one DescribeTasks entry, its model named by its tag or environment (``None``: neither).

    A stopped task's status is ``SUCCEEDED`` or its class of failure in capitals (``CONTAINER_FAILED``,
    ``SPOT_INTERRUPTION``, ...; every container is judged, as the task definition is not read); a task
    still running has its ``lastStatus``.
    """
    overrides = (task.get("overrides") or {}).get("containerOverrides") or []
    environment = _variables(overrides)
    tags = {t["key"]: t["value"] for t in task.get("tags") or []}
    model = tags.get(MODEL_ID_KEY) or environment.get(MODEL_ID_VARIABLE)
    if not model:
        return None
    stopped = task.get("lastStatus") == "STOPPED"
    outcome = classify_stopped_task(dict(task), None) if stopped else str(task.get("lastStatus"))
    summary = summarize_task(dict(task), outcome, None, None)
    failed = next((c for c in summary["containers"] if c["exit_code"] not in (0, None)), None)
    reported: dict[str, Any] = failed or next(iter(summary["containers"]), {})
    return _outcome(
        str(model),
        summary,
        environment,
        status=model_status(summary),
        job_id=summary["task_arn"],
        attempts=1 if task.get("startedAt") else 0,
        try_number=_try_number(tags),
        exit_code=reported.get("exit_code"),
        reason=summary["stopped_reason"],
        definition=_definition(summary["task_definition"]),
        image=reported.get("image"),
    )


def gather_batch_jobs(
    hook: BatchHook,
    models: Sequence[str],
    job_ids: Iterable[str | None],
    results: Iterable[Mapping[str, Any] | None] = (),
) -> list[JobOutcome]:
    """One :class:`JobOutcome` per model of ``models``, in that order, described from AWS Batch.

    :param models: every model id of the fleet, in map order.
    :param job_ids: the job ids the tasks pushed (any order; ``None`` entries are skipped).
    :param results: the tasks' results (any order); a result's ``metrics`` go to its job's outcome.
    """
    metrics = _metrics_by_id(results, "job_id")
    outcomes = []
    for job in hook.describe_jobs(i for i in job_ids if i):
        outcome = batch_job_outcome(job)
        if outcome is not None:
            outcomes.append(replace(outcome, metrics=metrics.get(str(outcome.job_id), {})))
    return _latest_per_model(models, outcomes)


def gather_ecs_tasks(
    hook: EcsHook,
    cluster: str,
    models: Sequence[str],
    task_arns: Iterable[str | None],
    results: Iterable[Mapping[str, Any] | None] = (),
) -> list[JobOutcome]:
    """One :class:`JobOutcome` per model of ``models``, in that order, described from Amazon ECS
    (:func:`ecs_task_outcome`). Parameters as :func:`gather_batch_jobs`, with the task ARNs the tasks
    pushed; a model whose task ECS no longer describes (it forgets one about an hour after it stops) is
    :data:`NOT_SUBMITTED`: :class:`~airflow_ml_batch.operators.report.FleetReportOperator` reads results first.
    """
    metrics = _metrics_by_id(results, "task_arn")
    outcomes = []
    for task in hook.describe_tasks(cluster, (arn for arn in task_arns if arn)):
        outcome = ecs_task_outcome(task)
        if outcome is not None:
            outcomes.append(replace(outcome, metrics=metrics.get(str(outcome.job_id), {})))
    return _latest_per_model(models, outcomes)


#: What a spreadsheet reads as the start of a formula: a text cell starting so is written after a ``'``.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """``value`` as a CSV cell: text a spreadsheet would run as a formula (``=HYPERLINK(...)``) is escaped."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _text(cell: str) -> str | None:
    """A text cell of :func:`write_csv` as it was given (``None`` for an empty one)."""
    if cell == "":
        return None
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_STARTS) else cell


def write_csv(outcomes: Sequence[JobOutcome], path: str | Path) -> Path:
    """One row per model: the :data:`CSV_COLUMNS`, then one ``metric_<name>`` column per metric seen.

    A text cell that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``, ``@``) is
    written after a ``'``, which :func:`read_csv` takes off again.
    """
    path = Path(path)
    names = sorted({name for outcome in outcomes for name in outcome.metrics})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *(f"metric_{name}" for name in names)])
        for outcome in outcomes:
            row = [getattr(outcome, column) for column in CSV_COLUMNS]
            writer.writerow([_cell(v) for v in (*row, *(outcome.metrics.get(n) for n in names))])
    return path


def read_csv(path: str | Path) -> list[JobOutcome]:
    """The outcomes in a report written by :func:`write_csv` (metrics as floats where they parse)."""
    outcomes = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            value = {k: _text(v) for k, v in row.items()}
            metrics = {k[len("metric_") :]: _number(v) for k, v in value.items() if k.startswith("metric_") and v}
            outcomes.append(
                JobOutcome(
                    model_id=str(value["model_id"]),
                    status=str(value["status"]),
                    job_id=value["job_id"],
                    duration_seconds=None if value["duration_seconds"] is None else float(value["duration_seconds"]),
                    attempts=int(value["attempts"] or 0),
                    try_number=None if value["try_number"] is None else int(value["try_number"]),
                    exit_code=None if value["exit_code"] is None else int(value["exit_code"]),
                    reason=value["reason"],
                    metrics=metrics,
                    definition=value.get("definition"),
                    image=value.get("image"),
                    dataset=value.get("dataset"),
                    parameters=value.get("parameters"),
                )
            )
    return outcomes


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def chart_metric(outcomes: Sequence[JobOutcome], metric: str | None = None) -> str | None:
    """The metric a chart shows: ``metric`` if given, else ``mape`` if any model reported it, else the
    first numeric metric by name; ``None`` if no model reported a number."""
    names = sorted({name for o in outcomes for name in o.metrics if metric_values([o], name)})
    if metric is not None:
        return metric
    return "mape" if "mape" in names else next(iter(names), None)


def metric_values(outcomes: Sequence[JobOutcome], name: str) -> list[float]:
    """The numeric values of metric ``name`` that the models reported, in model order."""
    values = (o.metrics.get(name) for o in outcomes)
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def write_chart(
    outcomes: Sequence[JobOutcome], path: str | Path, title: str = "Model jobs", metric: str | None = None
) -> Path:
    """A PNG of three panels: every model's duration (longest first, failures in red), the histogram of
    durations (succeeded and failed stacked), and the distribution of a metric (:func:`chart_metric`).

    Models without a duration (not submitted, or failed before starting) are red ticks at zero.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the chart needs matplotlib: pip install 'airflow-ml-batch[report]'") from error

    path = Path(path)
    ordered = sorted(outcomes, key=lambda o: -(o.duration_seconds or 0))
    minutes = [(o.duration_seconds or 0) / 60 for o in ordered]
    colors = [_OK if o.succeeded else _FAILED for o in ordered]
    succeeded = sum(1 for o in outcomes if o.succeeded)
    figure = plt.figure(figsize=(12, 8), dpi=100)
    try:
        grid = figure.add_gridspec(2, 2, height_ratios=(3, 2))
        bars, durations, distribution = (
            figure.add_subplot(grid[0, :]),
            figure.add_subplot(grid[1, 0]),
            figure.add_subplot(grid[1, 1]),
        )
        bars.bar(range(len(ordered)), minutes, width=1.0, color=colors, linewidth=0)
        failed = [x for x, o in enumerate(ordered) if not o.succeeded]
        if failed:
            bars.scatter(failed, [0] * len(failed), marker="|", color=_FAILED, s=60, zorder=3)
        bars.set_title(f"{title}: {succeeded} succeeded, {len(outcomes) - succeeded} did not (red)")
        bars.set_xlabel(f"{len(ordered)} models, longest first")
        bars.set_ylabel("duration (minutes)")
        bars.set_xlim(-0.5, max(len(ordered), 1) - 0.5)
        bars.margins(y=0.05)

        timed = [(o.duration_seconds / 60, o.succeeded) for o in outcomes if o.duration_seconds is not None]
        if timed:
            stacks = [[m for m, succeeded in timed if succeeded == ok] for ok in (True, False)]
            durations.hist(stacks, bins=30, stacked=True, color=[_OK, _FAILED], label=["succeeded", "failed"])
            durations.legend()
        durations.set_title("durations")
        durations.set_xlabel("minutes")
        durations.set_ylabel("models")

        name = chart_metric(outcomes, metric)
        values = metric_values(outcomes, name) if name else []
        if values:
            distribution.hist(values, bins=30, color=_OK)
            distribution.axvline(statistics.median(values), color="black", linestyle="--", label="median")
            distribution.legend()
        distribution.set_title(f"{name or 'no metric'} over {len(values)} models")
        distribution.set_xlabel(name or "")
        distribution.set_ylabel("models")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


_OK, _FAILED = "#2b6cb0", "#d62728"


def summarize(outcomes: Sequence[JobOutcome], show_failures: int = 10) -> str:
    """A few lines: counts by status, durations, the median of each metric, the first failures."""
    statuses = Counter(outcome.status for outcome in outcomes)
    lines = [f"{len(outcomes)} models: " + ", ".join(f"{n} {s.lower()}" for s, n in statuses.most_common())]
    durations = sorted(o.duration_seconds for o in outcomes if o.duration_seconds is not None)
    if durations:
        longest = max(outcomes, key=lambda o: o.duration_seconds or 0)
        p95 = durations[min(len(durations) - 1, int(0.95 * len(durations)))]
        lines.append(
            f"durations: median {statistics.median(durations) / 60:.1f} min, p95 {p95 / 60:.1f} min, "
            f"longest {durations[-1] / 60:.1f} min ({longest.model_id})"
        )
    retried = sum(1 for o in outcomes if (o.try_number or 1) > 1 or o.attempts > 1)
    if retried:
        lines.append(f"retried: {retried} models needed more than one try or attempt")
    for name in sorted({name for outcome in outcomes for name in outcome.metrics}):
        values = sorted(metric_values(outcomes, name))
        if values:
            p10, p90 = (values[round(q * (len(values) - 1))] for q in (0.1, 0.9))
            lines.append(
                f"metric {name}: median {statistics.median(values):.4g} (p10 {p10:.4g}, p90 {p90:.4g}) "
                f"over {len(values)} models"
            )
    failures = [o for o in outcomes if not o.succeeded]
    for outcome in failures[:show_failures]:
        lines.append(f"  {outcome.model_id}: {outcome.status} {outcome.reason or ''}".rstrip())
    if len(failures) > show_failures:
        lines.append(f"  ... and {len(failures) - show_failures} more (see the CSV)")
    return "\n".join(lines)
