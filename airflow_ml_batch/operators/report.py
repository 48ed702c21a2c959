"""The fleet report in one task: every model's outcome as a CSV file, a chart, an HTML page and a summary.

Imports no AWS SDK at import (see :mod:`airflow_ml_batch.operators.base`): the hooks come with the task run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS, BaseOperator, Context
from airflow_ml_batch.jobs.groups import model_label
from airflow_ml_batch.links.report import FleetReportLink, log_url, s3_console_url
from airflow_ml_batch.operators.batch import JOB_ID_XCOM_KEY
from airflow_ml_batch.operators.ecs import TASK_ARN_XCOM_KEY, EcsTaskOperator
from airflow_ml_batch.operators.group import ModelGroupOperator, pulled_models
from airflow_ml_batch.report import (
    NOT_FOUND,
    NOT_SUBMITTED,
    JobOutcome,
    batch_job_outcome,
    ecs_task_outcome,
    entry_model_id,
    model_entries,
    outcome_from_result,
    summarize,
    write_chart,
    write_csv,
)
from airflow_ml_batch.report_html import write_html

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.base import AwsServiceHook

try:  # Airflow 3.1+
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow before 3.1
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef,attr-defined]

#: the files of a report, by kind
FILE_NAMES = {"csv": "report.csv", "chart": "report.png", "html": "report.html"}
#: failed models named in the failure message
_NAMED_FAILURES = 10


class FleetReportOperator(BaseOperator):
    """Every model's outcome after a fleet task, in one report: ``report.csv``, ``report.png``, ``report.html``.

    Runs after the fleet task (``trigger_rule="all_done"`` by default, so it runs whatever failed): a mapped
    ``BatchJobOperator`` or ``EcsTaskOperator`` (one task per model) or ``BatchFleetOperator`` or
    ``EcsFleetOperator`` (one task per group). A model's outcome comes from its result as its task or its
    group pushed it; only a model left without one (its task failed before its job ended) is described
    from AWS, by the job id its task pushed; a model with neither is ``NOT_SUBMITTED``, and one whose job
    AWS no longer describes (ECS forgets a task an hour after it stops) ``NOT_FOUND``.

    The files go to ``location``: the CSV (:func:`~airflow_ml_batch.report.write_csv`), the chart
    (:func:`~airflow_ml_batch.report.write_chart`, left out if matplotlib is not installed: ``pip install
    'airflow-ml-batch[report]'``) and a self-contained HTML page (a sortable table of every model with its
    log link, the summary and the chart). The summary goes to the task log, the page to the task's
    "Fleet report" link, and a few counts and the files' locations to the task's result.

    :param fleet_task_ids: the fleet task's id, or a list of ids (their models are reported together).
    :param location: a directory, or ``s3://bucket/prefix`` (written through the Amazon provider's
        ``S3Hook`` on ``aws_conn_id``); templated.
    :param models: what the fleet task was expanded over, in map order: the per-model entries (e.g.
        :func:`airflow_ml_batch.fleet.batch_kwargs`) or their groups (:func:`airflow_ml_batch.fleet.groups`, or the
        references :func:`airflow_ml_batch.fleet.push_groups` returns, whose XComs are pulled);
        with several fleet tasks, a list of those, one per task. It names the models of a task with no
        result and gives the dataset and parameters of each. Templated: an upstream task's output works.
        Without it, what the fleet task was expanded over is read (``expand_kwargs(...)``, or a group
        operator's ``expand(models=...)`` or ``models``); failing that, a per-model task's model is named
        by its job's ``model_id`` tag where it was described, else ``<task_id>[<map index>]``.
    :param service: ``"batch"`` or ``"ecs"``; ``None``: from the fleet task's operator.
    :param max_failures: fail this task (after writing the report) when more models than this did not
        succeed.
    :param max_failure_fraction: fail this task (after writing the report) when more than this fraction of
        the models did not succeed (as Step Functions' tolerated failure percentage, here 0 to 1).
        With neither given, any model that did not succeed fails the task (and with it the run, whose
        last task the report usually is); ``max_failure_fraction=1`` never does.
    :param title: the report's title; templated. Default: ``<dag_id> <run_id>``.
    :param chart_metric: the metric the chart shows (:func:`~airflow_ml_batch.report.chart_metric`).
    :param aws_conn_id: Airflow ``aws`` connection, for the jobs described, the log links and S3.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: TLS verification of AWS calls: ``False``, or the path of a CA bundle.
    :param botocore_config: botocore client settings (a ``botocore.config.Config`` as a dict).
    """

    template_fields = ("fleet_task_ids", "location", "models", "title", "aws_conn_id", "region_name")
    template_fields_renderers = {"models": "json"}
    operator_extra_links = (FleetReportLink(),)
    ui_color = "#ffe0b2"

    def __init__(
        self,
        *,
        fleet_task_ids: str | Sequence[str],
        location: str,
        models: Any = None,
        service: Literal["batch", "ecs"] | None = None,
        max_failures: int | None = None,
        max_failure_fraction: float | None = None,
        title: str | None = None,
        chart_metric: str | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        trigger_rule: str = "all_done",
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        if service not in (None, "batch", "ecs"):
            raise ValueError(f"service must be 'batch', 'ecs' or None, not {service!r}")
        if max_failures is not None and (isinstance(max_failures, bool) or max_failures < 0):
            raise ValueError(f"max_failures must be a number of models (0 or more) or None, not {max_failures!r}")
        if max_failure_fraction is not None and not 0 <= max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be between 0 and 1 or None, not {max_failure_fraction!r}")
        self.fleet_task_ids = fleet_task_ids
        self.location = location
        self.models = models
        self.service = service
        self.max_failures = max_failures
        self.max_failure_fraction = max_failure_fraction
        self.title = title
        self.chart_metric = chart_metric
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    # -- the outcomes -----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        task_ids = [self.fleet_task_ids] if isinstance(self.fleet_task_ids, str) else list(self.fleet_task_ids)
        if not task_ids or not self.location:
            raise ValueError(
                f"fleet_task_ids and location are required, not {self.fleet_task_ids!r}, {self.location!r}"
            )
        per_task = [self.models] if len(task_ids) == 1 else list(self.models or [None] * len(task_ids))
        if len(per_task) != len(task_ids):
            raise ValueError(f"models must hold one list per fleet task ({len(task_ids)}), not {len(per_task)}")
        outcomes: list[JobOutcome] = []
        for task_id, models in zip(task_ids, per_task, strict=True):
            entries = None if models is None else model_entries([pulled_models(context, item) for item in models])
            outcomes += self.task_outcomes(context, task_id, entries)
        ti = context["ti"]
        title = self.title or f"{ti.dag_id} {ti.run_id}"
        files = self.write_report(context, outcomes, title)
        failed = [o for o in outcomes if not o.succeeded]
        summary = {
            "models": len(outcomes),
            "succeeded": len(outcomes) - len(failed),
            "failed": len(failed),
            "statuses": dict(sorted(_counts(o.status for o in outcomes).items())),
            **files,
        }
        message = self.threshold_message(outcomes, failed, str(files["html"]))
        if message is not None:
            if self.do_xcom_push:
                ti.xcom_push(key="return_value", value=summary)
            raise AirflowFailException(message)
        return summary

    def task_outcomes(
        self, context: Context, task_id: str, entries: list[Mapping[str, Any]] | None
    ) -> list[JobOutcome]:
        """One outcome per model of fleet task ``task_id``: from the results, else from AWS, else not submitted."""
        fleet = self.dag.get_task(task_id) if self.dag is not None and self.dag.has_task(task_id) else None
        fleet_class = getattr(fleet, "operator_class", type(fleet))  # a mapped task's operator
        known = isinstance(fleet_class, type) and hasattr(fleet_class, "job_id_xcom_key")
        grouped = known and issubclass(fleet_class, ModelGroupOperator)
        job_key = getattr(fleet_class, "job_id_xcom_key", None)
        service = self.service or (("ecs" if issubclass(fleet_class, EcsTaskOperator) else "batch") if known else None)
        if entries is None and fleet is not None:
            entries = self._expanded_entries(context, task_id, fleet)
        states = _task_states(context, task_id)
        results = _xcoms_by_map_index(context, task_id, "return_value", states)
        if service is None:  # not this DAG's task: tell by the results
            found = [r for value in results.values() for r in (value if isinstance(value, list) else [value])]
            service = "ecs" if any(isinstance(r, dict) and "task_arn" in r for r in found) else "batch"
        grouped = grouped or any(isinstance(value, list) for value in results.values())
        if grouped:
            return self._group_outcomes(task_id, entries, results, states)
        job_key = job_key or (TASK_ARN_XCOM_KEY if service == "ecs" else JOB_ID_XCOM_KEY)
        indexes = sorted(set(states) | set(results) | set(range(len(entries or []))))
        named = {i: self._name(task_id, i, entries) for i in indexes}
        outcomes: dict[int, JobOutcome] = {}
        for index, result in results.items():
            if isinstance(result, dict) and index in named:
                outcomes[index] = outcome_from_result(named[index][0], result, named[index][1])
        missing = [i for i in indexes if i not in outcomes]
        job_ids = _xcoms_by_map_index(context, task_id, job_key, states, missing) if missing else {}
        described = self._describe(service, {i: str(job_ids[i]) for i in missing if job_ids.get(i)})
        for index in missing:
            model_id = named[index][0]
            state = states.get(index)
            if index in described:
                outcome = described[index]
                outcomes[index] = replace(outcome, model_id=model_id if entries is not None else outcome.model_id)
            elif job_ids.get(index):
                outcomes[index] = JobOutcome(
                    model_id=model_id,
                    status=NOT_FOUND,
                    job_id=str(job_ids[index]),
                    reason=f"{service.upper()} no longer describes {job_ids[index]}, and its task ({state}) left "
                    "no result",
                )
            else:
                reason = f"its task ended {state} before submitting a job" if state else "its task never ran"
                outcomes[index] = JobOutcome(model_id=model_id, status=NOT_SUBMITTED, reason=reason)
        return [outcomes[i] for i in indexes]

    def _expanded_entries(self, context: Context, task_id: str, fleet: Any) -> list[Mapping[str, Any]] | None:
        """The models fleet task ``task_id`` ran: what it was expanded over (``expand_kwargs``, or its
        ``expand(models=...)`` groups) or an unmapped group's ``models``; ``None`` when it cannot tell."""
        expand_input = getattr(fleet, "expand_input", None)
        if expand_input is None:
            value = getattr(fleet, "models", None)
        else:
            value = getattr(expand_input, "value", None)
            if isinstance(value, Mapping):  # expand(...): only a group operator's models name its models
                value = value.get("models") if set(value) == {"models"} else None
        if value is None:
            return None
        try:
            if hasattr(value, "resolve"):  # an upstream task's output (XComArg)
                value = value.resolve(context)
            return model_entries([pulled_models(context, item) for item in value])  # push_groups' references
        except Exception as error:  # the models are then named from the results and jobs
            self.log.warning("Could not read the models %s ran, to name them (%s)", task_id, error)
            return None

    def _name(self, task_id: str, index: int, entries: list[Mapping[str, Any]] | None) -> tuple[str, Any]:
        """The model id and entry of map index ``index`` (``-1``: an unmapped task, the first entry)."""
        position = max(index, 0)
        if entries is not None and position < len(entries):
            return entry_model_id(entries[position], position), entries[position]
        return (task_id if index < 0 else f"{task_id}[{index}]"), None

    def _group_outcomes(
        self,
        task_id: str,
        entries: list[Mapping[str, Any]] | None,
        results: dict[int, Any],
        states: dict[int, str | None],
    ) -> list[JobOutcome]:
        """Every model of the groups, in the order of ``entries`` (else of the results), from the groups' results."""
        by_label: dict[str, JobOutcome] = {}
        order: list[str] = []
        for group in sorted(results):
            for result in results[group] if isinstance(results[group], list) else []:
                if isinstance(result, dict) and result.get("model") is not None:
                    label = str(result["model"])
                    by_label[label] = outcome_from_result(label, result)
                    order.append(label)
        if entries is None:
            return [by_label[label] for label in dict.fromkeys(order)]
        ended = ", ".join(sorted({str(s) for g, s in states.items() if g not in results and s})) or "without a result"
        outcomes = []
        for index, entry in enumerate(entries):
            model_id = entry_model_id(entry, index)
            found = by_label.pop(model_label(entry, index), None) or by_label.pop(model_id, None)
            if found is None:
                reason = f"no result of its group ({task_id}: {ended})"
                outcomes.append(JobOutcome(model_id=model_id, status=NOT_SUBMITTED, reason=reason))
                continue
            environment = outcome_from_result(model_id, {}, entry)
            outcomes.append(
                replace(found, model_id=model_id, dataset=environment.dataset, parameters=environment.parameters)
            )
        return outcomes + list(by_label.values())  # results of models the entries do not name

    def _describe(self, service: str, job_ids: dict[int, str]) -> dict[int, JobOutcome]:
        """The outcomes of the jobs of ``job_ids`` (by map index) that AWS still describes."""
        if not job_ids:
            return {}
        hook = self._hook(service)
        if service == "ecs":
            by_cluster: dict[str, list[str]] = {}
            for arn in job_ids.values():  # arn:aws:ecs:<region>:<account>:task/<cluster>/<id>
                by_cluster.setdefault(
                    arn.split(":", 5)[-1].split("/")[1] if arn.count("/") >= 2 else "default", []
                ).append(arn)
            found = [
                ecs_task_outcome(t) for cluster, arns in by_cluster.items() for t in hook.describe_tasks(cluster, arns)
            ]
        else:
            found = [batch_job_outcome(job) for job in hook.describe_jobs(job_ids.values())]
        by_id = {o.job_id: o for o in found if o is not None}
        return {index: by_id[job_id] for index, job_id in job_ids.items() if job_id in by_id}

    def _hook(self, service: str) -> Any:
        """The service's hook (``EcsHook``, ``BatchHook``), on the operator's connection and client settings."""
        from airflow_ml_batch.hooks.batch import BatchHook
        from airflow_ml_batch.hooks.ecs import EcsHook

        hook: type[AwsServiceHook] = EcsHook if service == "ecs" else BatchHook
        return hook(
            aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify, config=self.botocore_config
        )

    # -- the files --------------------------------------------------------------------------------------

    def write_report(self, context: Context, outcomes: list[JobOutcome], title: str) -> dict[str, str | None]:
        """Write the report's files to ``location``; log the summary; save the page's link. Their locations, by kind."""
        s3 = self.location.startswith("s3://")
        location = self._link_location()
        with tempfile.TemporaryDirectory(prefix="fleet-report-") as scratch:
            directory = Path(scratch) if s3 else Path(self.location)
            directory.mkdir(parents=True, exist_ok=True)
            files: dict[str, Path | None] = {"csv": write_csv(outcomes, directory / FILE_NAMES["csv"]), "chart": None}
            note = None
            try:
                files["chart"] = write_chart(outcomes, directory / FILE_NAMES["chart"], title, self.chart_metric)
            except ImportError as error:
                note = f"No chart: {error}"
                self.log.warning("%s", note)
            summary = summarize(outcomes)
            urls = {o.model_id: log_url(o, **location) for o in outcomes}
            chart = files["chart"]
            files["html"] = write_html(
                outcomes,
                directory / FILE_NAMES["html"],
                title=title,
                summary=summary,
                chart_png=chart.read_bytes() if chart else None,
                chart_note=note,
                log_urls={model: url for model, url in urls.items() if url},
            )
            written = {kind: self._upload(path) if s3 else str(path) for kind, path in files.items() if path}
        self.log.info("%s\n%s", summary, "\n".join(f"{kind}: {where}" for kind, where in written.items()))
        html = written["html"]
        if s3:
            bucket, _, key = html.removeprefix("s3://").partition("/")
            page = s3_console_url(bucket, key, **location)
        else:
            page = Path(html).resolve().as_uri()
        region = location["region_name"] or ""
        FleetReportLink.save(context, self, region_name=region, aws_partition=self._partition, url=page)
        return {"csv": written["csv"], "chart": written.get("chart"), "html": html}

    def _upload(self, path: Path) -> str:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, prefix = self.location.removeprefix("s3://").partition("/")
        key = f"{prefix.strip('/')}/{path.name}" if prefix.strip("/") else path.name
        S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify).load_file(
            str(path), key=key, bucket_name=bucket, replace=True
        )
        return f"s3://{bucket}/{key}"

    def _link_location(self) -> dict[str, str | None]:
        """``aws_domain`` and ``region_name`` of the console links, from the connection."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        self._partition = "aws"
        region = self.region_name
        try:
            hook = AwsBaseHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, client_type="s3")
            region = hook.conn_region_name
            self._partition = hook.conn_partition
        except Exception as error:  # the links then name the default partition
            self.log.warning("Could not read the connection's region and partition for the links: %s", error)
        return {"aws_domain": FleetReportLink.get_aws_domain(self._partition), "region_name": region}

    def threshold_message(self, outcomes: list[JobOutcome], failed: list[JobOutcome], page: str) -> str | None:
        """Why the task fails (more failures than allowed), or ``None``."""
        over = []
        if self.max_failures is None and self.max_failure_fraction is None and failed:
            over.append("none allowed (neither max_failures nor max_failure_fraction given)")
        if self.max_failures is not None and len(failed) > self.max_failures:
            over.append(f"max_failures={self.max_failures}")
        if self.max_failure_fraction is not None and len(failed) > self.max_failure_fraction * len(outcomes):
            over.append(f"max_failure_fraction={self.max_failure_fraction}")
        if not over:
            return None
        named = "; ".join(
            f"{o.model_id} ({o.status}{': ' + o.reason if o.reason else ''})" for o in failed[:_NAMED_FAILURES]
        )
        more = f"; and {len(failed) - _NAMED_FAILURES} more" if len(failed) > _NAMED_FAILURES else ""
        return (
            f"{len(failed)} of {len(outcomes)} models did not succeed, over {' and '.join(over)}: {named}{more}. "
            f"Report: {page}"
        )


def _counts(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# -- what Airflow kept of the fleet task, by map index (Airflow 2 reads its database, Airflow 3 its API) ----


def _task_states(context: Context, task_id: str) -> dict[int, str | None]:
    """The state of every task instance of ``task_id`` in this run, by map index (``-1``: unmapped)."""
    ti = context["ti"]
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
        found: dict[int, str | None] = {}
        for key, state in states.get(ti.run_id, {}).items():
            suffix = key[len(task_id) + 1 :]
            index = -1 if key == task_id else int(suffix) if suffix.isdigit() else None
            if index is not None:
                found[index] = None if state is None else str(getattr(state, "value", state))
        return found
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance.map_index, TaskInstance.state)
            .filter(TaskInstance.dag_id == ti.dag_id, TaskInstance.task_id == task_id, TaskInstance.run_id == ti.run_id)
            .all()
        )
    return {int(index): None if state is None else str(getattr(state, "value", state)) for index, state in rows}


def _xcoms_by_map_index(
    context: Context, task_id: str, key: str, states: dict[int, str | None], indexes: list[int] | None = None
) -> dict[int, Any]:
    """The XCom ``key`` of each task instance of ``task_id`` that pushed one, by map index (of ``indexes``, or all).

    Airflow 3 hands a task the values of a mapped task in map-index order without their indexes: they are
    placed by the task instances that succeeded (each pushed its result) and those of the others, read one
    by one; when the count does not match, every map index is read alone.
    """
    from airflow_ml_batch.report import _decoded

    ti = context["ti"]
    if not AIRFLOW_V_3_0_PLUS:
        from airflow.models.xcom import XCom
        from airflow.utils.session import create_session

        with create_session() as session:  # the columns XCom.deserialize_value reads, as TaskInstance.xcom_pull
            query = XCom.get_many(
                run_id=ti.run_id, key=key, task_ids=task_id, dag_ids=ti.dag_id, map_indexes=indexes, session=session
            )
            columns = (XCom.run_id, XCom.task_id, XCom.dag_id, XCom.map_index, XCom.value)
            rows = query.with_entities(*columns).order_by(None).all()
            return {int(row.map_index): _decoded(XCom.deserialize_value(row)) for row in rows}

    def one(index: int) -> Any:
        return _decoded(ti.xcom_pull(task_ids=task_id, key=key, map_indexes=index))

    wanted = sorted(states) if indexes is None else sorted(indexes)
    if indexes is not None or len(wanted) <= 1:
        return {i: value for i in wanted if (value := one(i)) is not None}
    others = {i: one(i) for i in wanted if states.get(i) != "success"}
    having = sorted({i for i in wanted if states.get(i) == "success"} | {i for i, v in others.items() if v is not None})
    pulled = ti.xcom_pull(task_ids=task_id, key=key)
    values = [] if pulled is None else [pulled] if len(having) == 1 else list(pulled)
    if len(values) != len(having):
        return {i: value for i in wanted if (value := one(i)) is not None}
    return {i: _decoded(value) for i, value in zip(having, values, strict=True)}
