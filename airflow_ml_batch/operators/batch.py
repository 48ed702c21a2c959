"""Submit an AWS Batch job from a short worker run, then wait for it on the triggerer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from airflow.exceptions import AirflowException

from airflow_ml_batch._compat import Context, tries_since_last_clear
from airflow_ml_batch.jobs.batch import (
    ACTIVE_STATES,
    job_name_for,
    may_reattach,
    submit_job_request,
    valid_job_name,
)
from airflow_ml_batch.jobs.common import job_to_reattach, task_instance_tags
from airflow_ml_batch.jobs.fields import RequestField
from airflow_ml_batch.jobs.groups import parse_job_name
from airflow_ml_batch.links.batch import BatchJobLink, BatchQueueLink
from airflow_ml_batch.links.logs import JobLogsLink
from airflow_ml_batch.operators.base import DeferredJobOperator
from airflow_ml_batch.operators.group import ModelGroupOperator

if TYPE_CHECKING:  # imported by a task run, not by parsing its DAG file (operators.base)
    from airflow_ml_batch.hooks.batch import BatchHook
    from airflow_ml_batch.triggers.batch import BatchFleetTrigger, BatchJobTrigger

#: XCom key of the submitted job's id, pushed before the task defers.
JOB_ID_XCOM_KEY = "batch_job_id"


class BatchJobOperator(DeferredJobOperator):
    """Run an AWS Batch job without holding a worker slot while it runs.

    The worker run defers at once to :class:`~airflow_ml_batch.triggers.batch.BatchJobTrigger`, which submits
    the job (or, on a retry, re-attaches to the job an earlier try left running) and waits for it
    (``submit_from_trigger``; with ``False`` the worker submits and records its id before deferring). A
    successful job ends the task from the triggerer; a failed one raises an error with the job's status
    reason, exit code, every attempt's reason and where its CloudWatch log is, after the log was copied into
    the task log (``job_logs``). Retries and
    ``execution_timeout`` are Airflow's: at the timeout the job is terminated and the task fails.

    Every request parameter below is templated.

    Every job is tagged with the task instance (``airflow:dag_id``, ``task_id``, ``run_id``,
    ``map_index``, ``try_number``, plus ``tags``) and propagates the tags to its ECS tasks for cost
    attribution.

    :param job_queue: job queue name or ARN.
    :param job_definition: job definition name, ``name:revision`` or ARN.
    :param job_name: job name; default: derived from dag, task, run and map index, valid for Batch.
    :param parameters: job definition parameter substitutions.
    :param container_overrides: SubmitJob ``containerOverrides``.
    :param command: shorthand for ``containerOverrides.command``.
    :param environment: shorthand for ``containerOverrides.environment``, as a mapping.
    :param vcpus: shorthand for the VCPU resource requirement.
    :param memory: shorthand for the MEMORY resource requirement, in MiB.
    :param gpus: shorthand for the GPU resource requirement.
    :param retry_strategy: SubmitJob ``retryStrategy`` (Batch-level attempts, e.g. for Spot reclaims).
    :param timeout: Batch attempt timeout in seconds.
    :param array_size: run an array job of this size.
    :param depends_on: SubmitJob ``dependsOn``.
    :param share_identifier: fair-share identifier.
    :param scheduling_priority: fair-share scheduling priority override.
    :param tags: extra job tags, merged with the task-instance tags.
    :param submit_job_kwargs: anything else SubmitJob accepts, passed through as is.
    :param submit_from_trigger: the triggerer submits the job (default), so the worker run only defers: no
        AWS client, no SubmitJob, no XCom on the worker. The trigger first lists the jobs named for the task
        instance: it waits for this try's job after a triggerer restart, re-attaches to an earlier try's
        (``reattach``) or submits, and stops any other live one. The job's id is in the task log as soon as it
        is submitted, and with the result, the ``batch_job_id`` XCom and the job's link when the task ends; a
        refused request fails the task with AWS's message. ``False``: the worker submits, as in 0.4, and
        saves the id and link before deferring. ``wait_for_completion=False`` always submits from the worker.

    Also takes every parameter of :class:`~airflow_ml_batch.operators.base.DeferredJobOperator` (waiting,
    retries, connection).
    """

    operator_extra_links = (BatchJobLink(), JobLogsLink())
    # request fields that the operator's own logic reads (all of them are kept: keep_request_fields)
    job_queue: str
    job_definition: str
    job_name: str | None
    tags: dict[str, str] | None

    def __init__(
        self,
        *,
        job_queue: Annotated[str, RequestField("jobQueue")],
        job_definition: Annotated[str, RequestField("jobDefinition")],
        job_name: Annotated[str | None, RequestField()] = None,
        parameters: Annotated[dict[str, str] | None, RequestField("parameters", render="json")] = None,
        container_overrides: Annotated[dict[str, Any] | None, RequestField(render="json")] = None,
        command: Annotated[list[str] | None, RequestField()] = None,
        environment: Annotated[dict[str, str] | None, RequestField(render="json")] = None,
        vcpus: Annotated[float | None, RequestField()] = None,
        memory: Annotated[int | None, RequestField()] = None,
        gpus: Annotated[int | None, RequestField()] = None,
        retry_strategy: Annotated[dict[str, Any] | None, RequestField("retryStrategy")] = None,
        timeout: Annotated[int | None, RequestField()] = None,
        array_size: Annotated[int | None, RequestField()] = None,
        depends_on: Annotated[list[dict[str, Any]] | None, RequestField("dependsOn")] = None,
        share_identifier: Annotated[str | None, RequestField("shareIdentifier")] = None,
        scheduling_priority: Annotated[int | None, RequestField("schedulingPriorityOverride")] = None,
        tags: Annotated[dict[str, str] | None, RequestField(render="json")] = None,
        submit_job_kwargs: Annotated[dict[str, Any] | None, RequestField(render="json")] = None,
        submit_from_trigger: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.keep_request_fields(locals())
        self.submit_from_trigger = submit_from_trigger

    job_id_xcom_key = JOB_ID_XCOM_KEY
    trigger_classpath = "airflow_ml_batch.triggers.batch.BatchJobTrigger"

    def submits_from_trigger(self) -> bool:
        return self.submit_from_trigger and self.wait_for_completion

    def start_request(self, ti: Any) -> dict[str, Any]:
        tags = {**(self.tags or {}), **task_instance_tags(ti)}
        return submit_job_request(self.request_fields, self.request_values(), job_name=self.job_name_of(ti), tags=tags)

    def start_title(self, start: dict[str, Any]) -> tuple[str, str]:
        return f"AWS Batch job {start['request']['jobName']}", f"job_queue={self.job_queue!r}"

    def abandoned_jobs(self, context: Context) -> list[str]:
        job_ids = super().abandoned_jobs(context)
        if job_ids or not self.submits_from_trigger():
            return job_ids
        ti = context["ti"]
        jobs = self.hook.find_active_jobs(self.job_queue, self.job_name_of(ti), task_instance_tags(ti))
        return [str(job["jobId"]) for job in jobs]

    def job_name_of(self, ti: Any) -> str:
        """The job's name: ``job_name``, else one derived from the task instance (the same for every try)."""
        map_index = -1 if ti.map_index is None else ti.map_index
        job_name = self.job_name or job_name_for(ti.dag_id, ti.task_id, ti.run_id, map_index)
        if not valid_job_name(job_name):
            raise ValueError(
                f"Invalid AWS Batch job name {job_name!r}: up to 128 letters, digits, hyphens and "
                "underscores, starting with a letter or digit"
            )
        return job_name

    def start_job(self, context: Context) -> str:
        ti = context["ti"]
        job_name = self.job_name_of(ti)
        job_id = None
        if ti.try_number > 1:  # only a retry (a re-run after a crash is one) can find an earlier job
            reattachable = tries_since_last_clear(ti.try_number, ti.max_tries, self.retries or 0)
            job_id = self._job_of_earlier_try(job_name, task_instance_tags(ti, with_try=False), reattachable)
        if job_id is None:
            job_id = self._submit(job_name, task_instance_tags(ti))
        self.save_job_link(context, job_id)
        return job_id

    def save_job_link(self, context: Context, job_id: str) -> None:
        BatchJobLink.save(context, self, job_id=job_id, **self.link_location())

    def hook_for(self, **arguments: Any) -> BatchHook:
        from airflow_ml_batch.hooks.batch import BatchHook

        return BatchHook(**arguments)

    def trigger_for(self, job_id: str | None, settings: dict[str, Any]) -> BatchJobTrigger:
        from airflow_ml_batch.triggers.batch import BatchJobTrigger

        return BatchJobTrigger(job_id=job_id, **settings)

    def stop_job(self, job_id: str, reason: str) -> None:
        self.hook.conn.terminate_job(jobId=job_id, reason=f"Airflow: {reason}"[:1024])

    def _job_of_earlier_try(self, job_name: str, identity: dict[str, str], reattachable: range) -> str | None:
        """Re-attach to a job an earlier try left running; terminate the others (of a cleared try, say)."""
        jobs = self.hook.find_active_jobs(self.job_queue, job_name, identity)
        keep = job_to_reattach(jobs, reattachable, may_reattach) if self.reattach else None
        if keep is not None:
            self.log.info("Re-attaching to job %s (%s) of an earlier try, %s", keep["jobId"], job_name, keep["status"])
            return str(keep["jobId"])
        for job in jobs:
            self.log.info(
                "Terminating job %s of try %s before submitting again",
                job["jobId"],
                (job.get("tags") or {}).get("airflow:try_number", "?"),
            )
            self.stop_job(job["jobId"], "resubmitted by a later try")
        return None

    def _submit(self, job_name: str, task_tags: dict[str, str]) -> str:
        from botocore.exceptions import ClientError

        from airflow_ml_batch.jobs.errors import error_message

        request = submit_job_request(
            self.request_fields, self.request_values(), job_name=job_name, tags={**(self.tags or {}), **task_tags}
        )
        try:
            job_id = str(self.hook.submit_job(request))
        except ClientError as error:
            message = error_message(error)
            raise AirflowException(
                f"AWS Batch rejected job {job_name!r} (job_queue={self.job_queue!r}, "
                f"job_definition={self.job_definition!r}): {message}"
            ) from error
        self.log.info("Submitted AWS Batch job %s (%s) to %s", job_id, job_name, self.job_queue)
        return job_id


class BatchFleetOperator(ModelGroupOperator, BatchJobOperator):
    """Run a group of models' AWS Batch jobs from one task instance, without holding a worker slot.

    The worker builds one SubmitJob request per model (the operator's arguments, then the model's entry)
    and defers at once to :class:`~airflow_ml_batch.triggers.batch.BatchFleetTrigger`, which submits the
    jobs within the account's rate, waits for them on the shared poller, retries failed models
    (``model_retries``) and ends the task with one result per model, in the order of ``models``: what
    :class:`BatchJobOperator` returns for its job, plus ``model``, ``index``, ``succeeded``, ``tries`` and
    ``message``. The task fails once every model has ended if more than ``allowed_failures`` failed; the
    result is pushed then too.

    A task retry, a triggerer restart or a worker lost while deferring never submits a second job for a
    model: each job's name carries the group, the model, the try and the attempt, and a trigger that starts
    waits for the jobs already there (those of a cleared try are stopped, as for ``BatchJobOperator``).
    A retry of the task submits only the models whose job failed.

    Use it for thousands of models: Airflow's cost is one task instance per group, whatever the fleet's size.
    Split a fleet with :func:`airflow_ml_batch.fleet.groups` and map over it::

        BatchFleetOperator.partial(task_id="forecast", job_queue=..., job_definition=...).expand(
            models=groups(batch_kwargs(load_models("models.yaml")), size=100)
        )

    Also takes every parameter of :class:`BatchJobOperator` (as the operator-wide value of each model's
    request) and of :class:`~airflow_ml_batch.operators.group.ModelGroupOperator`.
    """

    template_fields = (*BatchJobOperator.template_fields, "models")
    template_fields_renderers = {**BatchJobOperator.template_fields_renderers, "models": "json"}
    operator_extra_links: tuple[Any, ...] = (BatchQueueLink(),)  # no one job to link to: their queue

    def save_group_link(self, context: Context, results: list[dict[str, Any]] | None) -> None:
        """The queue's link needs its ARN: the one given, else the one DescribeJobs gave the first result."""
        queue = next((r.get("job_queue") for r in results or [] if r.get("job_queue")), None) or self.job_queue
        if isinstance(queue, str) and queue.startswith("arn:"):
            BatchQueueLink.save(context, self, **self.link_location(), job_queue_arn=queue)

    def group_trigger(self, **arguments: Any) -> BatchFleetTrigger:
        from airflow_ml_batch.triggers.batch import BatchFleetTrigger

        return BatchFleetTrigger(**arguments)

    def model_request(self, context: Context, values: dict[str, Any], label: str) -> dict[str, Any]:
        tags = {**(values.get("tags") or {}), **task_instance_tags(context["ti"], with_try=False)}
        tags["airflow:model"] = label[:256]
        request = submit_job_request(self.request_fields, values, job_name="", tags=tags)
        del request["jobName"]  # the trigger names each attempt
        return request

    def active_group_jobs(self, context: Context) -> list[str]:
        prefix = self.group_identity(context)["prefix"]
        job_ids = []
        for queue in sorted({model["request"]["jobQueue"] for model in self.group_models(context)}):
            pages = self.hook.conn.get_paginator("list_jobs").paginate(
                jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [f"{prefix}*"]}]
            )
            job_ids += [
                summary["jobId"]
                for page in pages
                for summary in page["jobSummaryList"]
                if summary.get("status") in ACTIVE_STATES and parse_job_name(prefix, summary["jobName"]) is not None
            ]
        return job_ids
