"""What the operators share: start a job, defer with the task's deadline, and the resume step.

The operator modules import no AWS SDK and no trigger at import: parsing a DAG file that uses them (the
dag-processor's parses and callbacks, each task run's parse) imports only what building the DAG needs; a
task run imports its hook and trigger when it calls AWS and defers.
"""

from __future__ import annotations

import time
from dataclasses import fields
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.exceptions import AirflowException

from airflow_ml_batch._compat import (
    AIRFLOW_V_3_0_PLUS,
    AirflowTaskTimeout,
    BaseOperator,
    Context,
    listeners_registered,
    tries_since_last_clear,
)
from airflow_ml_batch.jobs.fields import RequestField, request_fields
from airflow_ml_batch.jobs.groups import GroupSettings, group_key, group_prefix, model_label
from airflow_ml_batch.links.logs import JobLogsLink

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.base import AwsServiceHook
    from airflow_ml_batch.triggers.base import WaitForJobTrigger
    from airflow_ml_batch.triggers.group import RunGroupTrigger

#: ``next_method`` of a task that Airflow resumes only to fail it (its deferral timed out, say).
_FAIL_METHOD = "__fail__"
_TIMED_OUT = "the task's execution_timeout was reached while no trigger watched it"


def deadline_for(context: Context, execution_timeout: timedelta | None) -> float | None:
    """Epoch seconds at which the trigger stops the job: a little before Airflow's own deferral timeout."""
    if execution_timeout is None:
        return None
    margin = min(15.0, execution_timeout.total_seconds() / 10)
    return _started_at(context) + execution_timeout.total_seconds() - margin


def deferral_timeout(context: Context, execution_timeout: timedelta | None) -> timedelta | None:
    """How long Airflow may keep the task deferred: what is left of its ``execution_timeout``.

    Airflow 3 enforces ``execution_timeout`` on a deferred task only through this timeout, so a task
    whose trigger never runs (no triggerer, or it is down) still times out. The trigger's deadline
    (:func:`deadline_for`) comes first and stops the job.
    """
    if execution_timeout is None:
        return None
    left = _started_at(context) + execution_timeout.total_seconds() - time.time()
    return timedelta(seconds=max(left, 1.0))


def _started_at(context: Context) -> float:
    started: datetime | None = context["ti"].start_date
    return started.timestamp() if started else time.time()


class DeferredJobOperator(BaseOperator):
    """Base of the operators: start a remote job on a worker, defer, and finish from the trigger's event.

    :param reattach: on a retry, wait for a job an earlier try left running instead of starting another
        (default); ``False`` stops that job and starts a new one.
    :param wait_for_completion: wait for the job (default); ``False`` starts it, pushes its id to XCom
        and returns the id at once, for DAGs that wait for it elsewhere.
    :param poll_interval: seconds between status polls on the triggerer.
    :param end_from_trigger: end a successful task from the triggerer, without a second worker run.
        ``None`` (default): yes, unless listener plugins are registered (OpenLineage, Airflow's example
        listener under ``load_examples``): Airflow notifies no listener of a task ended from the
        triggerer, so the task then resumes on a worker when its job ends.
    :param log_tail_lines: CloudWatch log lines shown in a failure message.
    :param collect_metrics: put the last ``{"metrics": {...}}`` JSON line a successful job printed
        (within its last ``log_tail_lines`` log lines, read in one call) into the result as ``metrics``.
    :param missing_grace: seconds the job may be absent from describe calls before the task fails.
    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    :param verify: TLS verification of AWS calls: ``False``, or the path of a CA bundle.
    :param botocore_config: botocore client settings (a ``botocore.config.Config`` as a dict), over the
        connection's ``config_kwargs``.
    """

    ui_color = "#ff9900"
    #: The parameters that are fields of the request starting the job, from each subclass's ``__init__``
    #: (:mod:`airflow_ml_batch.jobs.fields`); they make its ``template_fields``, with the connection's.
    request_fields: ClassVar[dict[str, RequestField]] = {}
    #: XCom key under which the started job's id is pushed, before the task defers.
    job_id_xcom_key: ClassVar[str]

    def __init__(
        self,
        *,
        reattach: bool = True,
        wait_for_completion: bool = True,
        poll_interval: float = 30.0,
        end_from_trigger: bool | None = None,
        log_tail_lines: int = 50,
        collect_metrics: bool = False,
        missing_grace: float = 600.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reattach = reattach
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.end_from_trigger = end_from_trigger
        self.log_tail_lines = log_tail_lines
        self.collect_metrics = collect_metrics
        self.missing_grace = missing_grace
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited: dict[str, RequestField] = {}
        for base in reversed(cls.__mro__[1:]):  # a fleet operator has its single-job operator's fields
            inherited.update(base.__dict__.get("request_fields", {}))
        own = request_fields(cls.__dict__["__init__"]) if "__init__" in cls.__dict__ else {}
        cls.request_fields = {**inherited, **own}
        if "template_fields" not in cls.__dict__:
            templated = (name for name, field in cls.request_fields.items() if field.templated)
            cls.template_fields = (*templated, "aws_conn_id", "region_name")
        if "template_fields_renderers" not in cls.__dict__:
            cls.template_fields_renderers = {name: f.render for name, f in cls.request_fields.items() if f.render}

    def keep_request_fields(self, arguments: dict[str, Any]) -> None:
        """Keep the request fields among ``arguments`` (an ``__init__``'s ``locals()``) as attributes."""
        for name in type(self).request_fields:
            setattr(self, name, arguments[name])

    def request_values(self) -> dict[str, Any]:
        """The (rendered) value of every request field, by parameter name."""
        return {name: getattr(self, name) for name in type(self).request_fields}

    @cached_property
    def hook(self) -> Any:
        """The service's hook (:meth:`hook_for`), on the operator's connection and client settings."""
        return self.hook_for(
            aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify, config=self.botocore_config
        )

    # -- what each service defines ---------------------------------------------------------------------

    def hook_for(self, **arguments: Any) -> AwsServiceHook:
        """The service's hook, built from ``arguments`` (imported here, when a task run first calls AWS)."""
        raise NotImplementedError

    def start_job(self, context: Context) -> str:
        """Submit the job (or re-attach to an earlier try's), save its console link; return its id."""
        raise NotImplementedError

    def trigger_for(self, job_id: str, settings: dict[str, Any]) -> WaitForJobTrigger:
        """The trigger that waits for ``job_id``, with the shared ``settings`` of :meth:`trigger_kwargs`."""
        raise NotImplementedError

    def stop_job(self, job_id: str, reason: str) -> None:
        """Stop the job (terminate it, StopTask), from a worker."""
        raise NotImplementedError

    def save_job_link(self, context: Context, job_id: str) -> None:
        """Save the job's console link (:class:`~airflow_ml_batch.links.base.KeptLink`)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        job_id = self.start_job(context)
        context["ti"].xcom_push(key=self.job_id_xcom_key, value=job_id)
        if not self.wait_for_completion:
            self.log.info("Not waiting for %s (wait_for_completion=False)", job_id)
            return job_id
        self.log_link_pending = True  # no log stream yet: see JobLogsLink
        self.defer(
            trigger=self.trigger_for(job_id, self.trigger_kwargs(context)),
            method_name="execute_complete",
            timeout=deferral_timeout(context, self.execution_timeout),
        )

    def trigger_kwargs(self, context: Context) -> dict[str, Any]:
        """The settings every trigger takes, from this operator and the task's ``execution_timeout``."""
        location = self.link_location()
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "botocore_config": self.botocore_config,
            "poll_interval": self.poll_interval,
            "deadline": deadline_for(context, self.execution_timeout),
            "end_from_trigger": self.ends_from_trigger(),
            "xcom_result": self.do_xcom_push,
            "missing_grace": self.missing_grace,
            "log_tail_lines": self.log_tail_lines,
            "collect_metrics": self.collect_metrics,
            "log_link": {
                "region_name": location["region_name"],
                "aws_domain": JobLogsLink.get_aws_domain(location["aws_partition"]),
            },
        }

    def ends_from_trigger(self) -> bool:
        """Whether a successful job ends the task on the triggerer (see ``end_from_trigger``)."""
        if self.end_from_trigger is not None:
            return self.end_from_trigger
        listeners = listeners_registered()
        if listeners:
            self.log.info(
                "Listeners are registered (%s): the task resumes on a worker when its job ends, so that they "
                "see it end (Airflow notifies no listener of a task ended from the triggerer)",
                ", ".join(listeners),
            )
        return not listeners

    def link_location(self) -> dict[str, str]:
        """``region_name`` and ``aws_partition`` for the console links."""
        return {"region_name": self.hook.conn_region_name, "aws_partition": self.hook.conn_partition}

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the trigger: return the job's result or raise why it failed. No AWS calls."""
        if not isinstance(event, dict):
            # A TaskSuccessEvent replayed by ``dag.test()``: its XComs were pushed already; this run renders
            # the links again, the job's from the id pushed before the deferral.
            self.log_link_pending = JobLogsLink.key not in (getattr(event, "xcoms", None) or {})
            ti = context["ti"]
            if AIRFLOW_V_3_0_PLUS:
                job_id = ti.xcom_pull(task_ids=ti.task_id, key=self.job_id_xcom_key, map_indexes=ti.map_index)
                if job_id:
                    self.save_job_link(context, str(job_id))
            return None
        if AIRFLOW_V_3_0_PLUS and event.get("job_id"):  # this run renders every link again (links.base)
            self.save_job_link(context, str(event["job_id"]))
        result = event.get("result") or {}
        self.log_link_pending = not result.get("log_stream")
        if not self.log_link_pending:
            JobLogsLink.save(
                context,
                self,
                **self.link_location(),
                awslogs_region=result.get("log_region") or self.hook.conn_region_name,
                awslogs_group=result["log_group"],
                awslogs_stream_name=result["log_stream"],
            )
        if event["status"] == "success":
            return event.get("result")
        if event["status"] == "timeout":
            self._stopped_abandoned = True  # the trigger stopped the jobs; Airflow 2's on_kill follows this raise
            raise AirflowTaskTimeout(event["message"])
        raise AirflowException(event["message"])

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the deferral; when Airflow timed it out, stop the job first: nobody waits for it."""
        error = str((next_kwargs or {}).get("error", ""))
        if next_method == _FAIL_METHOD and "timeout" in error.lower():
            self.stop_abandoned_jobs(context, _TIMED_OUT)
        return super().resume_execution(next_method, next_kwargs, context)

    if not AIRFLOW_V_3_0_PLUS:  # Airflow 3 resumes a timed-out deferral in resume_execution; no extra step there

        def pre_execute(self, context: Context) -> Any:
            self._run_context = context  # for on_kill, which Airflow calls without one
            return super().pre_execute(context)

    def on_kill(self) -> None:
        """Airflow 2: a run resuming after the deferral timed out (or was killed): stop the jobs, nobody waits.

        Airflow 2 times a deferral out this way: the resumed run fails with ``AirflowTaskTimeout`` before
        :meth:`resume_execution` runs (its ``execution_timeout`` counts from the first run's start) and calls
        ``on_kill``. A killed first run (the submission) leaves its job to the next try, which re-attaches.
        """
        context = getattr(self, "_run_context", None)
        if context is None or not getattr(context["ti"], "next_method", None):
            return
        self.stop_abandoned_jobs(context, _TIMED_OUT)

    def stop_abandoned_jobs(self, context: Context, reason: str) -> None:
        """Stop the job this task instance started (its id pushed before the deferral), from a worker, once."""
        if getattr(self, "_stopped_abandoned", False):
            return
        self._stopped_abandoned = True
        ti = context["ti"]
        job_id = ti.xcom_pull(task_ids=ti.task_id, key=self.job_id_xcom_key, map_indexes=ti.map_index)
        if not job_id:
            return
        self.log.info("Stopping %s: %s", job_id, reason)
        try:
            self.stop_job(str(job_id), reason)
            if AIRFLOW_V_3_0_PLUS:  # this run renders every link again (links.base)
                self.save_job_link(context, str(job_id))
        except Exception:
            self.log.exception("Could not stop %s, which may still run", job_id)


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
        together from one triggerer (AWS Batch accepts 50 SubmitJob per second per account and region).
    :param progress_interval: seconds between two lines of counts per state in the task log.
    """

    #: request fields whose mappings a model's entry merges over the operator's
    merged_fields: ClassVar[tuple[str, ...]] = ("environment", "parameters", "tags")
    submit_rate: float  # one of the GroupSettings kept as attributes in __init__; the worker's stops use it too

    def __init__(
        self,
        *,
        models: list[dict[str, Any]] | Any,
        model_retries: int = 0,
        max_running: int | None = None,
        allowed_failures: int = 0,
        submit_rate: float = 20.0,
        progress_interval: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not kwargs.get("wait_for_completion", True):
            raise ValueError("a group always waits for its models: wait_for_completion=False is not supported")
        self.models = models
        arguments = locals()
        for setting in fields(GroupSettings):  # kept as given, and given to the trigger by the same names
            setattr(self, setting.name, arguments[setting.name])

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
        models = self.group_models(context)
        settings = self.trigger_kwargs(context)
        trigger = self.group_trigger(
            models=models,
            group=self.group_identity(context),
            job=self.job_settings(settings),
            **{setting.name: getattr(self, setting.name) for setting in fields(GroupSettings)},
        )
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
            time.sleep(1.0 / max(float(self.submit_rate), 20.0))
        if not_stopped:
            self.log.error("Could not stop %d jobs, which may still run: %s", len(not_stopped), "; ".join(not_stopped))

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the group's trigger: return every model's result, or raise why the group failed."""
        if not isinstance(event, dict):  # a TaskSuccessEvent replayed by ``dag.test()``: pushed already
            return None
        results = event.get("result")
        if event["status"] == "success":
            return results
        if results is not None and self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=results)
        if event["status"] == "timeout":
            self._stopped_abandoned = True  # the trigger stopped the jobs; Airflow 2's on_kill follows this raise
            raise AirflowTaskTimeout(event["message"])
        raise AirflowException(event["message"])
