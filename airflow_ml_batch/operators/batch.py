"""Submit an AWS Batch job from a short worker run, then wait for it on the triggerer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.exceptions import AirflowException, AirflowTaskTimeout
from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink
from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink
from botocore.exceptions import ClientError

from airflow_ml_batch._compat import BaseOperator, Context
from airflow_ml_batch.hooks.base import task_instance_tags
from airflow_ml_batch.hooks.batch import (
    BatchHook,
    job_name_for,
    submit_job_request,
    valid_job_name,
)
from airflow_ml_batch.triggers.batch import BatchJobTrigger

#: XCom key of the submitted job's id, pushed before the task defers.
JOB_ID_XCOM_KEY = "batch_job_id"


def deadline_for(context: Context, execution_timeout: timedelta | None) -> float | None:
    """Epoch seconds at which the trigger stops the job: a little before Airflow's own deferral timeout."""
    if execution_timeout is None:
        return None
    started = context["ti"].start_date
    margin = min(15.0, execution_timeout.total_seconds() / 10)
    start = started.timestamp() if started else time.time()
    return start + execution_timeout.total_seconds() - margin


class BatchJobOperator(BaseOperator):
    """Run an AWS Batch job without holding a worker slot while it runs.

    The worker submits the job (or, on a retry, re-attaches to the job an earlier try left running),
    records its id, and defers to :class:`~airflow_ml_batch.triggers.batch.BatchJobTrigger`. A
    successful job ends the task from the triggerer; a failed one raises an error with the job's status
    reason, exit code, every attempt's reason and the tail of its CloudWatch log. Retries and
    ``execution_timeout`` are Airflow's: at the timeout the job is terminated and the task fails.

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
    :param reattach: on a retry, wait for a job an earlier try left queued or running instead of
        submitting another (default). ``False`` terminates that job and submits a new one.
    :param poll_interval: seconds between status polls on the triggerer.
    :param end_from_trigger: end a successful task from the triggerer, without a second worker run.
    :param log_tail_lines: CloudWatch log lines shown in a failure message.
    :param missing_grace: seconds the job may be absent from DescribeJobs before the task fails.
    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    """

    template_fields: Sequence[str] = (
        "job_queue",
        "job_definition",
        "job_name",
        "parameters",
        "container_overrides",
        "command",
        "environment",
        "vcpus",
        "memory",
        "gpus",
        "retry_strategy",
        "timeout",
        "array_size",
        "depends_on",
        "share_identifier",
        "scheduling_priority",
        "tags",
        "submit_job_kwargs",
        "aws_conn_id",
        "region_name",
    )
    template_fields_renderers = {
        "parameters": "json",
        "container_overrides": "json",
        "environment": "json",
        "tags": "json",
        "submit_job_kwargs": "json",
    }
    operator_extra_links = (BatchJobDetailsLink(), CloudWatchEventsLink())
    ui_color = "#ff9900"

    def __init__(
        self,
        *,
        job_queue: str,
        job_definition: str,
        job_name: str | None = None,
        parameters: dict[str, str] | None = None,
        container_overrides: dict[str, Any] | None = None,
        command: list[str] | None = None,
        environment: dict[str, str] | None = None,
        vcpus: float | None = None,
        memory: int | None = None,
        gpus: int | None = None,
        retry_strategy: dict[str, Any] | None = None,
        timeout: int | None = None,
        array_size: int | None = None,
        depends_on: list[dict[str, Any]] | None = None,
        share_identifier: str | None = None,
        scheduling_priority: int | None = None,
        tags: dict[str, str] | None = None,
        submit_job_kwargs: dict[str, Any] | None = None,
        reattach: bool = True,
        poll_interval: float = 30.0,
        end_from_trigger: bool = True,
        log_tail_lines: int = 50,
        missing_grace: float = 600.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_queue = job_queue
        self.job_definition = job_definition
        self.job_name = job_name
        self.parameters = parameters
        self.container_overrides = container_overrides
        self.command = command
        self.environment = environment
        self.vcpus = vcpus
        self.memory = memory
        self.gpus = gpus
        self.retry_strategy = retry_strategy
        self.timeout = timeout
        self.array_size = array_size
        self.depends_on = depends_on
        self.share_identifier = share_identifier
        self.scheduling_priority = scheduling_priority
        self.tags = tags
        self.submit_job_kwargs = submit_job_kwargs
        self.reattach = reattach
        self.poll_interval = poll_interval
        self.end_from_trigger = end_from_trigger
        self.log_tail_lines = log_tail_lines
        self.missing_grace = missing_grace
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    @cached_property
    def hook(self) -> BatchHook:
        return BatchHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        map_index = -1 if ti.map_index is None else ti.map_index
        job_name = self.job_name or job_name_for(ti.dag_id, ti.task_id, ti.run_id, map_index)
        if not valid_job_name(job_name):
            raise ValueError(
                f"Invalid AWS Batch job name {job_name!r}: up to 128 letters, digits, hyphens and "
                "underscores, starting with a letter or digit"
            )
        job_id = None
        if ti.try_number > 1:  # only a retry (a re-run after a crash is one) can find an earlier job
            job_id = self._job_of_earlier_try(job_name, task_instance_tags(ti, with_try=False))
        if job_id is None:
            job_id = self._submit(job_name, task_instance_tags(ti))
        context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=job_id)
        location = self._link_location()
        BatchJobDetailsLink.persist(context=context, operator=self, job_id=job_id, **location)
        self.defer(
            trigger=BatchJobTrigger(
                job_id=job_id,
                log_tail_lines=self.log_tail_lines,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                poll_interval=self.poll_interval,
                deadline=deadline_for(context, self.execution_timeout),
                end_from_trigger=self.end_from_trigger,
                xcom_result=self.do_xcom_push,
                missing_grace=self.missing_grace,
                log_link={
                    "region_name": location["region_name"],
                    "aws_domain": CloudWatchEventsLink.get_aws_domain(location["aws_partition"]),
                },
            ),
            method_name="execute_complete",
        )

    def _job_of_earlier_try(self, job_name: str, identity: dict[str, str]) -> str | None:
        """Re-attach to (or, without ``reattach``, terminate) a job an earlier try left running."""
        jobs = self.hook.find_active_jobs(self.job_queue, job_name, identity)
        if jobs and self.reattach:
            job = jobs[0]
            self.log.info("Re-attaching to job %s (%s) of an earlier try, %s", job["jobId"], job_name, job["status"])
            return str(job["jobId"])
        for job in jobs:
            self.log.info("Terminating job %s of an earlier try before submitting again", job["jobId"])
            self.hook.conn.terminate_job(jobId=job["jobId"], reason="Airflow: resubmitted by a retry")
        return None

    def _submit(self, job_name: str, task_tags: dict[str, str]) -> str:
        request = submit_job_request(
            job_name=job_name,
            job_queue=self.job_queue,
            job_definition=self.job_definition,
            parameters=self.parameters,
            container_overrides=self.container_overrides,
            command=self.command,
            environment=self.environment,
            vcpus=self.vcpus,
            memory=self.memory,
            gpus=self.gpus,
            retry_strategy=self.retry_strategy,
            timeout=self.timeout,
            array_size=self.array_size,
            depends_on=self.depends_on,
            share_identifier=self.share_identifier,
            scheduling_priority=self.scheduling_priority,
            tags={**(self.tags or {}), **task_tags},
            submit_job_kwargs=self.submit_job_kwargs,
        )
        try:
            response = self.hook.conn.submit_job(**request)
        except ClientError as error:
            message = error.response.get("Error", {}).get("Message", str(error))
            raise AirflowException(
                f"AWS Batch rejected job {job_name!r} (job_queue={self.job_queue!r}, "
                f"job_definition={self.job_definition!r}): {message}"
            ) from error
        self.log.info("Submitted AWS Batch job %s (%s) to %s", response["jobId"], job_name, self.job_queue)
        return str(response["jobId"])

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the trigger: return the job's result or raise why it failed. No AWS calls."""
        if not isinstance(event, dict):
            return None  # a TaskSuccessEvent replayed by ``dag.test()``: its XComs were pushed already
        result = event.get("result")
        if result:
            self._persist_log_link(context, result)
        if event["status"] == "success":
            return result
        if event["status"] == "timeout":
            raise AirflowTaskTimeout(event["message"])
        raise AirflowException(event["message"])

    def _persist_log_link(self, context: Context, result: dict[str, Any]) -> None:
        if result.get("log_stream"):
            CloudWatchEventsLink.persist(
                context=context,
                operator=self,
                **self._link_location(),
                awslogs_region=self.hook.conn_region_name,
                awslogs_group=result["log_group"],
                awslogs_stream_name=result["log_stream"],
            )

    def _link_location(self) -> dict[str, str]:
        return {"region_name": self.hook.conn_region_name, "aws_partition": self.hook.conn_partition}
