"""What the group operators add to their single-job operator: many models per task, submitted by the triggerer."""

from __future__ import annotations

import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.exceptions import AirflowException

from airflow_ml_batch._compat import AirflowTaskTimeout, Context, tries_since_last_clear
from airflow_ml_batch.jobs.groups import (
    GroupSettings,
    entries_label,
    group_key,
    group_prefix,
    model_label,
    referenced_xcom,
)
from airflow_ml_batch.jobs.logs import copies_log, model_heading
from airflow_ml_batch.jobs.outcomes import outcome_table
from airflow_ml_batch.links.logs import JobLogsLink, job_log_url
from airflow_ml_batch.operators.base import DeferredJobOperator, deferral_timeout

if TYPE_CHECKING:
    from airflow_ml_batch.triggers.group import RunGroupTrigger


#: what labels a group's map index in the grid: its first and last model, and how many
#: (:attr:`ModelGroupOperator.models_label`)
MAP_INDEX_TEMPLATE = "{{ task.models_label }}"


def pulled_models(context: Context, models: Any) -> Any:
    """``models``, or the entries its :func:`~airflow_ml_batch.fleet.push_groups` reference names, pulled."""
    reference = referenced_xcom(models)
    if reference is None:
        return models
    task_id, key = reference
    pulled = context["ti"].xcom_pull(task_ids=task_id, key=key)
    if pulled is None:
        raise ValueError(
            f"models names the XCom {key!r} of task {task_id!r}, which this DAG run does not have "
            "(push_groups pushes one per group from the task that returns the references)"
        )
    return pulled


class ModelGroupOperator(DeferredJobOperator):
    """What ``BatchFleetOperator`` and ``EcsFleetOperator`` add to their single-job operator: many models per task.

    A fleet operator derives from this class first, then from its single-job operator.

    :param models: one mapping per model of what the single-job operator would take for it (``job_name``,
        ``command``, ``environment``, ``parameters``, resources, ``tags``, ...; e.g. an entry of
        :func:`airflow_ml_batch.fleet.batch_kwargs`); templated, and it may come from an upstream task
        (``.expand(models=...)`` over :func:`airflow_ml_batch.fleet.groups`). ``environment``,
        ``parameters`` and ``tags`` are merged over the operator's own; every other key replaces it.
    :param model_retries: extra jobs a model gets within one try of the task after its job failed (a Spot
        reclaim or a capacity failure counts).
    :param max_running: the most jobs of the group running (submitted, not finished) at once, to protect
        what the models read; ``None``: no cap.
    :param allowed_failures: models that may fail (after their retries) without failing the task.
    :param submit_rate: the most jobs per second that every group on this connection and region submits
        together from one triggerer. ``None`` (default): the account's published quota, AWS Batch's 50
        SubmitJob or ECS's 20 RunTask per second per Region; throttling halves the pace, which comes back by a
        tenth each second without throttling. Set it lower to leave room for other clients of the account.
        The group of the lowest map index waiting submits first (the models listed first start first).
    :param progress_interval: seconds between two lines of counts per state (and the failed models so far)
        in the task log.
    :param end_from_trigger: ``None`` (default) or ``False``: the task resumes on a worker when the group ends,
        and that run writes the table of every model (and their logs, ``job_logs``) into the task log, where
        a trigger's own lines may not reach it (Airflow 3 with remote logging); one worker run per group.
        ``True``: a successful group ends on the triggerer, which logs the table.

    Each map index is labelled with its models (``"m001 .. m100 (100 models)"``; ``map_index_template``
    replaces it). ``job_logs`` applies to each model: the worker that ends the group copies the logs of the
    models that failed (``"on_failure"``) or of every model (``"always"``), each under a heading naming the
    model.
    """

    #: request fields whose mappings a model's entry merges over the operator's
    merged_fields: ClassVar[tuple[str, ...]] = ("environment", "parameters", "tags")
    submit_rate: float | None  # one of the GroupSettings kept as attributes in __init__; the worker's stops use it

    def __init__(
        self,
        *,
        models: list[dict[str, Any]] | Any,
        model_retries: int = 0,
        max_running: int | None = None,
        allowed_failures: int = 0,
        submit_rate: float | None = None,
        progress_interval: float = 300.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        super().__init__(**kwargs)
        if not kwargs.get("wait_for_completion", True):
            raise ValueError("a group always waits for its models: wait_for_completion=False is not supported")
        self.models = models
        arguments = locals()
        for setting in fields(GroupSettings):  # kept as given, and given to the trigger by the same names
            setattr(self, setting.name, arguments[setting.name])

    @property
    def models_label(self) -> str:
        """The group's models in a few words (:func:`~airflow_ml_batch.jobs.groups.group_label`); ``""`` if unknown."""
        models: Any = self.models
        if referenced_xcom(models) is not None:  # push_groups: the label it gave, until the entries are pulled
            return str(models.get("models_label") or "")
        if not isinstance(self.models, (list, tuple)):
            return ""
        return entries_label(self.models)

    def label_map_index(self, context: Context) -> None:
        """Label this run's map index with the group's models, unless the DAG gives a ``map_index_template``.

        Airflow 3 renders the task's own template (set in ``__init__``); Airflow 2 renders the one of the mapped
        task, which has none unless the DAG gave one: the run's context gets ours.
        """
        if context.get("map_index_template") is None:
            context["map_index_template"] = MAP_INDEX_TEMPLATE  # type: ignore[typeddict-unknown-key]

    def ends_from_trigger(self) -> bool:
        """Whether a successful group ends on the triggerer: only with ``end_from_trigger=True``."""
        return bool(self.end_from_trigger)

    def save_group_link(self, context: Context, results: list[dict[str, Any]] | None) -> None:
        """Save the console link to the group's jobs (their queue, their cluster), from the request or ``results``."""

    def model_request(self, context: Context, values: dict[str, Any], label: str) -> dict[str, Any]:
        """The request starting one model's job, from the operator's values merged with the model's entry."""
        raise NotImplementedError

    def group_trigger(self, **arguments: Any) -> RunGroupTrigger:
        """The service's group trigger, built from ``arguments``."""
        raise NotImplementedError

    def group_identity(self, context: Context) -> dict[str, Any]:
        """``prefix``, ``try_number``, ``reattachable`` and ``reattach``: what finds the group's jobs again."""
        ti = context["ti"]
        map_index = -1 if ti.map_index is None else ti.map_index
        base = getattr(self, "job_name", None) or ti.task_id
        reattachable = tries_since_last_clear(ti.try_number, ti.max_tries, self.retries or 0)
        return {
            "prefix": group_prefix(str(base), group_key(ti.dag_id, ti.task_id, ti.run_id, map_index)),
            "try_number": ti.try_number,
            "reattachable": [reattachable.start, reattachable.stop],
            "reattach": self.reattach,
        }

    def group_models(self, context: Context) -> list[dict[str, Any]]:
        """Every model's ``index``, ``label`` and ``request``; a clear error for an entry that cannot be one."""
        models = self.models
        if not isinstance(models, (list, tuple)) or not models:
            raise ValueError(f"models must be a non-empty list of mappings, not {models!r:.200}")
        operator_values = self.request_values()
        known = set(self.request_fields)
        grouped = []
        for index, entry in enumerate(models):
            if not isinstance(entry, dict):
                raise ValueError(f"models[{index}] must be a mapping of operator arguments, not {entry!r:.200}")
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ValueError(
                    f"models[{index}] has arguments the operator does not take: {', '.join(unknown)} "
                    f"(it takes {', '.join(sorted(known))})"
                )
            values = {**operator_values, **entry}
            for name in self.merged_fields:
                if name in entry and operator_values.get(name):
                    values[name] = {**operator_values[name], **(entry[name] or {})}
            label = model_label(entry, index)
            grouped.append({"index": index, "label": label, "request": self.model_request(context, values, label)})
        return grouped

    def execute(self, context: Context) -> Any:
        self.models = pulled_models(context, self.models)
        self.label_map_index(context)
        models = self.group_models(context)
        settings = self.trigger_kwargs(context)
        trigger = self.group_trigger(
            models=models,
            group=self.group_identity(context),
            job=self.job_settings(settings),
            **{setting.name: getattr(self, setting.name) for setting in fields(GroupSettings)},
        )
        self.save_group_link(context, None)
        self.log.info("Deferring: the triggerer submits the %d models' jobs (%s)", len(models), trigger.group["prefix"])
        self.defer(
            trigger=trigger, method_name="execute_complete", timeout=deferral_timeout(context, self.execution_timeout)
        )

    def job_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The single-job trigger's settings for each job of the group (the service adds its own)."""
        return settings

    def active_group_jobs(self, context: Context) -> list[str]:
        """The ids of every job of this task instance (any try) that may still run, found by the group's prefix."""
        raise NotImplementedError

    def stop_abandoned_jobs(self, context: Context, reason: str) -> None:
        """Stop every job of the group that may still run (no trigger pushed their ids), once.

        At least 20 stops a second, or ``submit_rate`` if higher, so that a large group is stopped well within
        the run's own ``execution_timeout``; each goes through the client's retries, and the ones that could
        not be stopped are named in the log.
        """
        from airflow_ml_batch.jobs.errors import error_text

        if getattr(self, "_stopped_abandoned", False):
            return
        self._stopped_abandoned = True
        job_ids = self.active_group_jobs(context)
        self.log.info("Stopping %d jobs of the group: %s", len(job_ids), reason)
        not_stopped = []
        for job_id in job_ids:
            try:
                self.stop_job(job_id, reason)
            except Exception as error:
                not_stopped.append(f"{job_id} ({error_text(error)})")
            time.sleep(1.0 / max(float(self.submit_rate or 0), 20.0))
        if not_stopped:
            self.log.error("Could not stop %d jobs, which may still run: %s", len(not_stopped), "; ".join(not_stopped))

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the group's trigger: log every model's outcome, return the results or raise why it failed."""
        try:  # for the map index's label, which this run renders again
            self.models = pulled_models(context, self.models)
        except Exception as error:
            self.log.warning("Could not pull the group's models to label its map index: %s", error)
        self.label_map_index(context)
        if not isinstance(event, dict):  # a TaskSuccessEvent replayed by ``dag.test()``: pushed already
            return None
        results = event.get("result")
        if results:
            self.log_outcomes(results)
            self.save_group_link(context, results)
            copied = [entry for entry in results if copies_log(self.job_logs, bool(entry.get("succeeded")))]
            self.copy_job_logs(copied, heading=model_heading)
        if event["status"] == "success":
            return results
        if results is not None and self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=results)
        if event["status"] == "timeout":
            self._stopped_abandoned = True  # the trigger stopped the jobs; Airflow 2's on_kill follows this raise
            raise AirflowTaskTimeout(event["message"])
        raise AirflowException(event["message"])

    def log_outcomes(self, results: list[dict[str, Any]]) -> None:
        """Write the table of every model (:func:`~airflow_ml_batch.jobs.outcomes.outcome_table`) into the task log."""
        location = self.link_location()
        domain = JobLogsLink.get_aws_domain(location["aws_partition"])

        def log_url(entry: Any) -> str | None:
            return job_log_url(entry, aws_domain=domain, region_name=location["region_name"])

        failed = sum(1 for entry in results if not entry.get("succeeded"))
        self.log.info(
            "%d of %d models succeeded, %d failed:\n%s",
            len(results) - failed,
            len(results),
            failed,
            outcome_table(results, log_url),
        )
