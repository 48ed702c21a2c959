"""What the operators share: start a job, defer with the task's deadline, and the resume step.

The operator modules import no AWS SDK and no trigger at import: parsing a DAG file that uses them (the
dag-processor's parses and callbacks, each task run's parse) imports only what building the DAG needs; a
task run imports its hook and trigger when it calls AWS and defers.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger

from airflow_ml_batch._compat import (
    AIRFLOW_V_3_0_PLUS,
    AirflowTaskTimeout,
    BaseOperator,
    Context,
    listeners_registered,
    tries_since_last_clear,
)
from airflow_ml_batch.jobs.common import task_instance_tags
from airflow_ml_batch.jobs.fields import RequestField, request_fields
from airflow_ml_batch.jobs.logs import check_job_logs, copied_log, copies_log, job_title, log_sources, not_copied
from airflow_ml_batch.links.logs import JobLogsLink, log_stream_url

if TYPE_CHECKING:
    from airflow_ml_batch.hooks.base import AwsServiceHook
    from airflow_ml_batch.triggers.base import WaitForJobTrigger

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


class TriggerCall(BaseTrigger):
    """A trigger as a worker run hands it to Airflow: its classpath and keywords, its module not imported.

    Deferring needs only ``serialize()``; the triggerer imports the trigger's module (the AWS SDK, the poller)
    and builds it. A worker run that only defers so spares that import (about 0.14 CPU-s a run). Run in place
    (Airflow 2's ``dag.test()`` does so), it builds the trigger and runs it.
    """

    def __init__(self, classpath: str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.classpath = classpath
        self.kwargs = kwargs

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self.classpath, self.kwargs

    async def run(self) -> Any:
        module, _, name = self.classpath.rpartition(".")
        trigger = getattr(importlib.import_module(module), name)(**self.kwargs)
        trigger.task_instance = getattr(self, "task_instance", None)
        async for event in trigger.run():
            yield event


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
    :param job_logs: when the job's CloudWatch log is copied into the task log: ``"on_failure"`` (default)
        before the task fails, ``"always"`` also when the job succeeds, ``"never"``. A worker copies it when
        the task resumes there (a failure always does), the triggerer when it ends a successful task
        (``end_from_trigger``); either way the reads are paced for CloudWatch Logs' quota of 10 to 25
        GetLogEvents calls per second per account and Region, and a log that cannot be read leaves one
        warning line, never a failure. Each line shows its event time (UTC); a Batch job that ran several
        attempts has each attempt's log under its own heading. Failure messages, trigger events and XComs
        carry no log line, only where the log is.
    :param job_log_lines: the most lines copied per log stream (1 to 9999): the last ones. When earlier
        lines were left out the task log says so, with the stream's console link. Lines longer than 2000
        characters are cut.
    :param log_tail_lines: the last log lines ``collect_metrics`` reads (one GetLogEvents call).
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
    #: the trigger that submits the job
    #: (:meth:`~airflow_ml_batch.operators.base.DeferredJobOperator.trigger_start`), by classpath: a worker
    #: run does not import it
    trigger_classpath: ClassVar[str] = ""

    def __init__(
        self,
        *,
        reattach: bool = True,
        wait_for_completion: bool = True,
        poll_interval: float = 30.0,
        end_from_trigger: bool | None = None,
        job_logs: str = "on_failure",
        job_log_lines: int = 200,
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
        check_job_logs(job_logs, job_log_lines)
        self.job_logs = job_logs
        self.job_log_lines = job_log_lines
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

    def trigger_for(self, job_id: str | None, settings: dict[str, Any]) -> WaitForJobTrigger:
        """The trigger that waits for ``job_id``, with the shared ``settings`` of :meth:`trigger_kwargs`."""
        raise NotImplementedError

    def stop_job(self, job_id: str, reason: str) -> None:
        """Stop the job (terminate it, StopTask), from a worker."""
        raise NotImplementedError

    def save_job_link(self, context: Context, job_id: str) -> None:
        """Save the job's console link (:class:`~airflow_ml_batch.links.base.KeptLink`)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------

    def trigger_start(self, context: Context) -> dict[str, Any]:
        """What a trigger that submits the job is given (its ``start``, see
        :class:`~airflow_ml_batch.triggers.start.StartsJob`): the request, the try and the earlier tries it may
        re-attach to."""
        ti = context["ti"]
        tries = tries_since_last_clear(ti.try_number, ti.max_tries, self.retries or 0) if self.reattach else range(1)
        return {
            "request": self.start_request(ti),
            "try_number": ti.try_number,
            "reattach_tries": [tries.start, tries.stop],
            "identity": task_instance_tags(ti, with_try=False),
            "job_id_xcom_key": self.job_id_xcom_key,
        }

    def start_request(self, ti: Any) -> dict[str, Any]:
        """The request that starts the job (SubmitJob's, RunTask's keywords) for task instance ``ti``'s try."""
        raise NotImplementedError

    def submits_from_trigger(self) -> bool:
        """Whether the trigger submits the job, the worker run only deferring (``submit_from_trigger``)."""
        return False

    def execute(self, context: Context) -> Any:
        if self.submits_from_trigger():
            start = self.trigger_start(context)
            self.log_link_pending = self.job_link_pending = True  # no job yet: see JobLogsLink
            if AIRFLOW_V_3_0_PLUS:  # nothing to render yet: no empty link XComs; the trigger or the resuming run
                self.operator_extra_links = ()  # renders them once the job is known
            self.log.info("Deferring: the triggerer starts %s (%s)", *self.start_title(start))
            kwargs = {**self.trigger_arguments(), "start": start, **self.trigger_kwargs(context, with_links=False)}
            self.defer(
                trigger=TriggerCall(self.trigger_classpath, kwargs),
                method_name="execute_complete",
                timeout=deferral_timeout(context, self.execution_timeout),
            )
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

    def trigger_arguments(self) -> dict[str, Any]:
        """What the service's trigger takes besides its job and the shared settings (an ECS cluster)."""
        return {}

    def start_title(self, start: dict[str, Any]) -> tuple[str, str]:
        """What the trigger starts ("AWS Batch job <name>") and where it runs, for the task log, from its ``start``."""
        raise NotImplementedError

    def trigger_kwargs(self, context: Context, with_links: bool = True) -> dict[str, Any]:
        """The settings every trigger takes, from this operator and the task's ``execution_timeout``.

        ``with_links=False``: no ``log_link`` (the trigger finds its region from its client), so that a worker
        run that only defers looks up no connection.
        """
        location = self.link_location() if with_links else None
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
            "job_logs": self.job_logs,
            "job_log_lines": self.job_log_lines,
            "log_link": location
            and {
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
        """Resume after the trigger: copy the job's log (``job_logs``), then return the job's result, or push it
        (``do_xcom_push``) and raise why it failed. No other AWS call."""
        if not isinstance(event, dict):
            # A TaskSuccessEvent replayed by ``dag.test()``: its XComs were pushed already; this run renders
            # the links again, the job's from the id pushed before the deferral.
            xcoms = getattr(event, "xcoms", None) or {}
            self.log_link_pending = JobLogsLink.key not in xcoms
            ti = context["ti"]
            if AIRFLOW_V_3_0_PLUS:
                if self.submits_from_trigger():  # the trigger knew the id: it is among the event's XComs
                    job_id = xcoms.get(self.job_id_xcom_key)
                else:
                    job_id = ti.xcom_pull(task_ids=ti.task_id, key=self.job_id_xcom_key, map_indexes=ti.map_index)
                self.job_link_pending = not job_id
                if job_id:
                    self.save_job_link(context, str(job_id))
            return None
        if event.get("job_id") and self.submits_from_trigger():  # saved by no run before
            context["ti"].xcom_push(key=self.job_id_xcom_key, value=event["job_id"])
            self.save_job_link(context, str(event["job_id"]))
        elif AIRFLOW_V_3_0_PLUS and event.get("job_id"):  # this run renders every link again (links.base)
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
        succeeded = event["status"] == "success"
        if result and copies_log(self.job_logs, succeeded):
            self.copy_job_logs([result])
        if succeeded:
            return event.get("result")
        if event["status"] == "timeout":
            if not event.get("job_id") and self.submits_from_trigger():  # a submission's job the trigger missed
                self.stop_abandoned_jobs(context, _TIMED_OUT)
            self._stopped_abandoned = True  # the trigger stopped the jobs; Airflow 2's on_kill follows this raise
            raise AirflowTaskTimeout(event["message"])
        if result and self.do_xcom_push:  # every model's outcome readable without describing the jobs again
            context["ti"].xcom_push(key="return_value", value=result)
        raise AirflowException(event["message"])

    def copy_job_logs(
        self, results: Sequence[Mapping[str, Any]], *, heading: Callable[[Mapping[str, Any]], str] | None = None
    ) -> int:
        """Copy the CloudWatch logs of jobs into the task log, from a worker; how many streams were copied.

        Each of ``results`` is a job's result as the triggers give it (``log_group``, ``log_stream``,
        ``log_region``, Batch ``attempts[].log_stream``); its streams' last ``job_log_lines`` lines are copied
        under ``heading(result)`` (default: the job's id) and, for several attempts, each attempt's heading.
        Reads are paced for the worker process (a few calls per second, slower after throttling) and a
        throttled read is tried again with backoff; a stream that cannot be read leaves one warning line
        (why, and its link). Never raises.
        """
        from airflow_ml_batch.hooks.logs import CloudWatchLogsHook

        location = self.link_location()
        domain = JobLogsLink.get_aws_domain(location["aws_partition"])
        copied = 0
        for result in results:
            title = heading(result) if heading else job_title(result)
            for source in log_sources(result):
                link = log_stream_url(
                    aws_domain=domain,
                    region_name=location["region_name"],
                    log_group=source.log_group,
                    log_stream=source.log_stream,
                    log_region=source.log_region,
                )
                if not source.log_stream:
                    self.log.info("%s", copied_log(source, [], self.job_log_lines, None, title).splitlines()[0])
                    continue
                hook = CloudWatchLogsHook(
                    aws_conn_id=self.aws_conn_id,
                    region_name=source.log_region or self.region_name,
                    verify=self.verify,
                    config=self.botocore_config,
                )
                try:
                    events = hook.read_last_events(source.log_group, source.log_stream, self.job_log_lines + 1)
                except Exception as error:  # LogNotRead, or anything else: the log never fails the task
                    self.log.warning("%s", not_copied(source, str(error), link, title))
                    continue
                self.log.info("%s", copied_log(source, events, self.job_log_lines, link, title))
                copied += 1
        return copied

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
        for job_id in self.abandoned_jobs(context):
            self.log.info("Stopping %s: %s", job_id, reason)
            try:
                self.stop_job(job_id, reason)
                if AIRFLOW_V_3_0_PLUS:  # this run renders every link again (links.base)
                    self.save_job_link(context, job_id)
            except Exception:
                self.log.exception("Could not stop %s, which may still run", job_id)

    def abandoned_jobs(self, context: Context) -> list[str]:
        """The job this task instance's try started: its id pushed before the deferral (a trigger that submits
        pushes none: the service lists the job by its name)."""
        ti = context["ti"]
        job_id = ti.xcom_pull(task_ids=ti.task_id, key=self.job_id_xcom_key, map_indexes=ti.map_index)
        return [str(job_id)] if job_id else []


def __getattr__(name: str) -> Any:
    """``ModelGroupOperator`` lived here before 0.5: still importable from here, from its own module."""
    if name == "ModelGroupOperator":
        from airflow_ml_batch.operators.group import ModelGroupOperator

        return ModelGroupOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
