"""Fleet reports: the outcome of every model job of a run, as rows, a CSV file, a chart and a summary.

A report task runs after the mapped job task with ``trigger_rule="all_done"``, so it runs whatever
failed, and hands over what Airflow kept of the fleet: the models (in map order), the job ids the
tasks pushed before deferring and the results of the jobs that succeeded::

    @task(trigger_rule="all_done")
    def report(models, ti=None):
        job_ids = pulled(ti.xcom_pull(task_ids="forecast", key=JOB_ID_XCOM_KEY))
        results = pulled(ti.xcom_pull(task_ids="forecast"))
        rows = gather_batch_jobs(BatchHook(aws_conn_id=...), model_ids(models), job_ids, results)
        write_csv(rows, "report.csv")
        write_chart(rows, "report.png")
        print(summarize(rows))

AWS Batch is the source of truth for status, duration and attempts (DescribeJobs, 100 jobs per call);
the metrics come from the results (``collect_metrics=True``). Every job kind is read alike
(:func:`~airflow_ml_batch.jobs.batch.summarize_job`: a multi-node job's exit code is its main node's). A model
whose task never submitted a job is reported as ``NOT_SUBMITTED``. The chart needs matplotlib
(``pip install 'airflow-ml-batch[report]'``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_ml_batch.jobs.batch import job_containers, summarize_job

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.batch import BatchHook

#: The status of a model whose task never submitted a job (it failed before, or was never run).
NOT_SUBMITTED = "NOT_SUBMITTED"
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
)


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

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def pulled(value: Any) -> list[Any]:
    """``ti.xcom_pull(task_ids=<a mapped task>, key=...)`` as a list, on every Airflow version.

    Airflow 2 returns every map index's value; Airflow 3 a list, the bare value when exactly one
    exists, or ``None`` when none does. Airflow 3 also hands a result that the triggerer pushed (a task
    ended from the trigger) to tasks as JSON text, as it stores such XComs encoded twice: those are
    decoded here.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, (str, bytes, Mapping)) else list(value)
    return [_decoded(item) for item in items]


def _decoded(item: Any) -> Any:
    if isinstance(item, str) and item.startswith("{"):
        with contextlib.suppress(ValueError):
            return json.loads(item)
    return item


def model_ids(expanded: Iterable[Mapping[str, Any]]) -> list[str]:
    """The model ids of ``airflow_ml_batch.fleet.batch_kwargs()`` or ``ecs_kwargs()`` entries, in map order."""
    return [entry["environment"][MODEL_ID_VARIABLE] for entry in expanded]


def _model_of(job: dict[str, Any]) -> str | None:
    """The job's ``model_id`` tag, else the ``MODEL_ID`` variable of its reported containers (any job kind)."""
    tags = job.get("tags") or {}
    if tags.get(MODEL_ID_KEY):
        return str(tags[MODEL_ID_KEY])
    containers, _ = job_containers(job)
    # ECS containers call it "environment", EKS containers "env"
    variables = [v for c in containers for v in (c.get("environment") or c.get("env") or [])]
    return next((str(v["value"]) for v in variables if v.get("name") == MODEL_ID_VARIABLE), None)


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
    metrics = {r["job_id"]: dict(r.get("metrics") or {}) for r in results if r and r.get("job_id")}
    by_model: dict[str, JobOutcome] = {}
    for job in hook.describe_jobs(i for i in job_ids if i):
        model = _model_of(job)
        if model is None:
            continue
        summary = summarize_job(job)
        tags = job.get("tags") or {}
        try_tag = str(tags.get("airflow:try_number", ""))
        outcome = JobOutcome(
            model_id=model,
            status=str(summary["status"]),
            job_id=summary["job_id"],
            duration_seconds=summary["duration_seconds"],
            attempts=len(summary["attempts"]),
            try_number=int(try_tag) if try_tag.isdigit() else None,
            exit_code=summary["exit_code"],
            reason=summary["status_reason"],
            metrics=metrics.get(summary["job_id"], {}),
        )
        earlier = by_model.get(model)
        if earlier is None or (earlier.try_number or 0) <= (outcome.try_number or 0):
            by_model[model] = outcome  # a model's latest try wins
    return [by_model.get(model) or JobOutcome(model_id=model, status=NOT_SUBMITTED) for model in models]


def write_csv(outcomes: Sequence[JobOutcome], path: str | Path) -> Path:
    """One row per model: the :data:`CSV_COLUMNS`, then one ``metric_<name>`` column per metric seen."""
    path = Path(path)
    names = sorted({name for outcome in outcomes for name in outcome.metrics})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *(f"metric_{name}" for name in names)])
        for outcome in outcomes:
            row = [getattr(outcome, column) for column in CSV_COLUMNS]
            writer.writerow(["" if v is None else v for v in (*row, *(outcome.metrics.get(n) for n in names))])
    return path


def read_csv(path: str | Path) -> list[JobOutcome]:
    """The outcomes in a report written by :func:`write_csv` (metrics as floats where they parse)."""
    outcomes = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            value = {k: (None if v == "" else v) for k, v in row.items()}
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
                )
            )
    return outcomes


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def write_chart(outcomes: Sequence[JobOutcome], path: str | Path, title: str = "Model jobs") -> Path:
    """A PNG bar chart of every model's duration in minutes, longest first, failures in red.

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
    colors = ["#2b6cb0" if o.succeeded else "#d62728" for o in ordered]
    figure, axes = plt.subplots(figsize=(12, 5), dpi=100)
    try:
        positions = range(len(ordered))
        axes.bar(positions, minutes, width=1.0, color=colors, linewidth=0)
        failed = [x for x, o in enumerate(ordered) if not o.succeeded]
        if failed:
            axes.scatter(failed, [0] * len(failed), marker="|", color="#d62728", s=60, zorder=3)
        succeeded = sum(1 for o in outcomes if o.succeeded)
        axes.set_title(f"{title}: {succeeded} succeeded, {len(outcomes) - succeeded} did not (red)")
        axes.set_xlabel(f"{len(ordered)} models, longest first")
        axes.set_ylabel("duration (minutes)")
        axes.set_xlim(-0.5, max(len(ordered), 1) - 0.5)
        axes.margins(y=0.05)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


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
        values = [v for o in outcomes if isinstance(v := o.metrics.get(name), (int, float)) and not isinstance(v, bool)]
        if values:
            lines.append(f"metric {name}: median {statistics.median(values):.4g} over {len(values)} models")
    failures = [o for o in outcomes if not o.succeeded]
    for outcome in failures[:show_failures]:
        lines.append(f"  {outcome.model_id}: {outcome.status} {outcome.reason or ''}".rstrip())
    if len(failures) > show_failures:
        lines.append(f"  ... and {len(failures) - show_failures} more (see the CSV)")
    return "\n".join(lines)
