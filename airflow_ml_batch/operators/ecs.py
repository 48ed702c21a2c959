"""Run an ECS (Fargate, Fargate Spot or EC2) task from a short worker run, then wait for it on the triggerer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

from airflow.exceptions import AirflowException

from airflow_ml_batch._compat import Context, tries_since_last_clear
from airflow_ml_batch.jobs.common import job_to_reattach, task_instance_tags
from airflow_ml_batch.jobs.ecs import (
    client_token_for,
    failures_text,
    listed_task,
    no_capacity,
    run_task_request,
    started_by_for,
    task_id_of,
)
from airflow_ml_batch.jobs.fields import RequestField
from airflow_ml_batch.links.ecs import EcsClusterTasksLink, EcsTaskLink
from airflow_ml_batch.links.logs import JobLogsLink
from airflow_ml_batch.operators.base import DeferredJobOperator
from airflow_ml_batch.operators.group import ModelGroupOperator

if TYPE_CHECKING:  # imported by a task run, not by parsing its DAG file (operators.base)
    from airflow_ml_batch.hooks.ecs import EcsHook
    from airflow_ml_batch.triggers.ecs import EcsFleetTrigger, EcsTaskTrigger

#: XCom key of the started task's ARN, pushed before the task defers.
TASK_ARN_XCOM_KEY = "ecs_task_arn"


class EcsTaskOperator(DeferredJobOperator):
    """Run an ECS task without holding a worker slot while it runs; Fargate by default.

    The worker run defers at once to :class:`~airflow_ml_batch.triggers.ecs.EcsTaskTrigger`, which calls RunTask
    (or, on a retry, re-attaches to the task an earlier try left provisioning or running) and waits for it
    (``submit_from_trigger``; with ``False`` the worker calls RunTask and records the ARN before deferring).
    A task whose essential containers exit 0
    ends the Airflow task from the triggerer; any other stop raises an error that says which class of
    failure it was (failed to start, Spot interruption, out of memory, container exit code, stopped by a
    user or by ECS), with the stop reason, each container's exit code and where its CloudWatch log is, after
    the log was copied into the task log (``job_logs``).

    RunTask carries a ``clientToken`` and every task a deterministic ``startedBy`` naming the task instance:
    a RunTask whose answer was lost or that was throttled is sent again with the same token and starts no
    second task; a capacity failure (which started nothing) is tried again with a new token, both with backoff
    within ``run_task_attempts`` calls. Tasks are tagged with the task instance for cost attribution.

    :param cluster: cluster name or ARN.
    :param task_definition: ``family``, ``family:revision`` or ARN.
    :param container_name: the container that ``command``, ``environment``, ``cpu`` and ``memory`` override,
        and whose CloudWatch log is copied (``job_logs``), read by ``collect_metrics`` and linked; default for the
        log: the first essential container that logs with ``awslogs``. The log is read in that container's
        ``awslogs-region``.
    :param overrides: RunTask ``overrides``.
    :param command: shorthand for the container's command.
    :param environment: shorthand for the container's environment, as a mapping.
    :param cpu: CPU units for the container and the task (Fargate sizes: 256, 512, 1024, ...).
    :param memory: memory in MiB for the container and the task.
    :param launch_type: ``FARGATE`` (default), ``EC2`` or ``EXTERNAL``; ignored with a capacity provider strategy.
    :param capacity_provider_strategy: e.g. ``[{"capacityProvider": "FARGATE", "base": 1, "weight": 1},
        {"capacityProvider": "FARGATE_SPOT", "weight": 4}]``.
    :param network_configuration: RunTask ``networkConfiguration`` (``awsvpcConfiguration``: subnets,
        security groups, ``assignPublicIp``).
    :param platform_version: Fargate platform version.
    :param group: task group.
    :param placement_constraints: RunTask ``placementConstraints`` (EC2).
    :param placement_strategy: RunTask ``placementStrategy`` (EC2).
    :param enable_execute_command: allow ECS Exec into the task.
    :param ephemeral_storage_gib: Fargate ephemeral storage size.
    :param tags: extra task tags, merged with the task-instance tags.
    :param propagate_tags: RunTask ``propagateTags``: ``TASK_DEFINITION`` (default: the task definition's
        tags are copied to the task), ``SERVICE`` or ``NONE``; ``None`` leaves it out of the request.
        The ECS API reference says RunTask rejects ``SERVICE``.
    :param run_task_kwargs: anything else RunTask accepts, passed through as is.
    :param fail_on_sidecars: a non-essential container exiting non-zero fails the task too.
    :param run_task_attempts: RunTask attempts while ECS answers with no capacity (from the worker: or throttling).
    :param submit_from_trigger: the triggerer runs the task (default), so the worker run only defers: no AWS
        client, no RunTask, no XCom on the worker. The trigger first lists the tasks started for the task
        instance: it waits for this try's task after a triggerer restart, re-attaches to an earlier try's
        (``reattach``) or runs one, and stops any other live one. The task's ARN is in the task log as soon as
        it starts, and with the result, the ``ecs_task_arn`` XCom and the task's link when the Airflow task
        ends. ``False``: the worker calls RunTask and saves the ARN and link before deferring.
        ``wait_for_completion=False`` always runs it from the worker.

    Also takes every parameter of :class:`~airflow_ml_batch.operators.base.DeferredJobOperator` (waiting,
    retries, connection).
    """

    operator_extra_links = (EcsTaskLink(), JobLogsLink())
    # request fields that the operator's own logic reads (all of them are kept: keep_request_fields)
    cluster: str
    task_definition: str
    container_name: str | None
    tags: dict[str, str] | None

    def __init__(
        self,
        *,
        cluster: Annotated[str, RequestField("cluster")],
        task_definition: Annotated[str, RequestField("taskDefinition")],
        container_name: Annotated[str | None, RequestField()] = None,
        overrides: Annotated[dict[str, Any] | None, RequestField(render="json")] = None,
        command: Annotated[list[str] | None, RequestField()] = None,
        environment: Annotated[dict[str, str] | None, RequestField(render="json")] = None,
        cpu: Annotated[int | None, RequestField()] = None,
        memory: Annotated[int | None, RequestField()] = None,
        launch_type: Annotated[str | None, RequestField()] = "FARGATE",
        capacity_provider_strategy: Annotated[
            list[dict[str, Any]] | None, RequestField("capacityProviderStrategy")
        ] = None,
        network_configuration: Annotated[
            dict[str, Any] | None, RequestField("networkConfiguration", render="json")
        ] = None,
        platform_version: Annotated[str | None, RequestField("platformVersion")] = None,
        group: Annotated[str | None, RequestField("group")] = None,
        placement_constraints: Annotated[list[dict[str, Any]] | None, RequestField("placementConstraints")] = None,
        placement_strategy: Annotated[list[dict[str, Any]] | None, RequestField("placementStrategy")] = None,
        enable_execute_command: Annotated[bool, RequestField(templated=False)] = False,
        ephemeral_storage_gib: Annotated[int | None, RequestField()] = None,
        tags: Annotated[dict[str, str] | None, RequestField(render="json")] = None,
        propagate_tags: Annotated[str | None, RequestField("propagateTags")] = "TASK_DEFINITION",
        run_task_kwargs: Annotated[dict[str, Any] | None, RequestField(render="json")] = None,
        fail_on_sidecars: bool = False,
        run_task_attempts: int = 8,
        submit_from_trigger: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.keep_request_fields(locals())
        self.fail_on_sidecars = fail_on_sidecars
        self.run_task_attempts = run_task_attempts
        self.submit_from_trigger = submit_from_trigger

    job_id_xcom_key = TASK_ARN_XCOM_KEY
    trigger_classpath = "airflow_ml_batch.triggers.ecs.EcsTaskTrigger"

    def submits_from_trigger(self) -> bool:
        return self.submit_from_trigger and self.wait_for_completion

    def trigger_start(self, context: Context) -> dict[str, Any]:
        return {**super().trigger_start(context), "capacity_tries": self.run_task_attempts}

    def start_request(self, ti: Any) -> dict[str, Any]:
        started_by = self.started_by_of(ti)
        return run_task_request(
            self.request_fields,
            self.request_values(),
            started_by=started_by,
            client_token=client_token_for(started_by, ti.try_number),
            tags={**(self.tags or {}), **task_instance_tags(ti)},
        )

    def start_title(self, start: dict[str, Any]) -> tuple[str, str]:
        return f"the ECS task started by {start['request']['startedBy']}", f"cluster={self.cluster!r}"

    def trigger_arguments(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "fail_on_sidecars": self.fail_on_sidecars,
            "container_name": self.container_name,
        }

    def abandoned_jobs(self, context: Context) -> list[str]:
        task_arns = super().abandoned_jobs(context)
        if task_arns or not self.submits_from_trigger():
            return task_arns
        ti = context["ti"]
        identity = task_instance_tags(ti).items()
        running = self.hook.tasks_started_by(self.cluster, self.started_by_of(ti), "RUNNING")
        return [str(task["taskArn"]) for task in running if identity <= listed_task(task)["tags"].items()]

    @staticmethod
    def started_by_of(ti: Any) -> str:
        """The ``startedBy`` of every task this task instance runs (the same for every try)."""
        return started_by_for(ti.dag_id, ti.task_id, ti.run_id, -1 if ti.map_index is None else ti.map_index)

    def start_job(self, context: Context) -> str:
        ti = context["ti"]
        started_by = self.started_by_of(ti)
        task_arn = None
        if ti.try_number > 1:  # only a retry (a re-run after a crash is one) can find an earlier task
            reattachable = tries_since_last_clear(ti.try_number, ti.max_tries, self.retries or 0)
            task_arn = self._task_of_earlier_try(started_by, task_instance_tags(ti, with_try=False), reattachable)
        if task_arn is None:
            task_arn = self._run_task(started_by, ti.try_number, task_instance_tags(ti))
        self.save_job_link(context, task_arn)
        return task_arn

    def save_job_link(self, context: Context, job_id: str) -> None:
        cluster_name = self.cluster.rsplit("/", 1)[-1]
        EcsTaskLink.save(context, self, **self.link_location(), cluster_name=cluster_name, task_id=task_id_of(job_id))

    def hook_for(self, **arguments: Any) -> EcsHook:
        from airflow_ml_batch.hooks.ecs import EcsHook

        return EcsHook(**arguments)

    def trigger_for(self, job_id: str | None, settings: dict[str, Any]) -> EcsTaskTrigger:
        from airflow_ml_batch.triggers.ecs import EcsTaskTrigger

        return EcsTaskTrigger(task_arn=job_id, **self.trigger_arguments(), **settings)

    def stop_job(self, job_id: str, reason: str) -> None:
        self.hook.conn.stop_task(cluster=self.cluster, task=job_id, reason=f"Airflow: {reason}"[:255])

    def _task_of_earlier_try(self, started_by: str, identity: dict[str, str], reattachable: range) -> str | None:
        """Re-attach to a task an earlier try left running; stop the others (of a cleared try, say); say what
        became of a stopped one."""

        def ours(task: dict[str, Any]) -> bool:
            return identity.items() <= {t["key"]: t["value"] for t in task.get("tags", [])}.items()

        for task in filter(ours, self.hook.tasks_started_by(self.cluster, started_by, "STOPPED")):
            self.log.info(
                "An earlier try's ECS task %s stopped (%s: %s); running a new one",
                task["taskArn"],
                task.get("stopCode"),
                task.get("stoppedReason"),
            )
        running = list(filter(ours, self.hook.tasks_started_by(self.cluster, started_by, "RUNNING")))
        keep = job_to_reattach(running, reattachable) if self.reattach else None  # RUNNING: never StopTask-ed
        if keep is not None:
            self.log.info("Re-attaching to ECS task %s of an earlier try, %s", keep["taskArn"], keep["lastStatus"])
            return str(keep["taskArn"])
        for task in running:
            self.log.info("Stopping ECS task %s of an earlier try before running a new one", task["taskArn"])
            self.stop_job(task["taskArn"], "rerun by a later try")
        return None

    def _run_task(self, started_by: str, try_number: int, task_tags: dict[str, str]) -> str:
        """RunTask, sent once per call: a call whose answer was lost is sent again with the same ``clientToken``
        (ECS answers it with the task it started); a capacity failure, which started nothing, is tried again
        with a new token. Both within ``run_task_attempts`` calls."""
        from botocore.exceptions import ClientError

        from airflow_ml_batch.jobs.errors import backoff, error_message, error_text, is_transient

        placement = 1
        request = run_task_request(
            self.request_fields,
            self.request_values(),
            started_by=started_by,
            client_token=client_token_for(started_by, try_number),
            tags={**(self.tags or {}), **task_tags},
        )
        where = f"(cluster={self.cluster!r}, task_definition={self.task_definition!r})"
        for attempt in range(1, self.run_task_attempts + 1):
            try:
                response = self.hook.send_once_conn.run_task(**request)
            except Exception as error:
                if not is_transient(error) or attempt == self.run_task_attempts:
                    if not isinstance(error, ClientError):
                        raise
                    message = error_message(error)
                    raise AirflowException(f"ECS rejected RunTask {where}: {message}") from error
                reason = error_text(error)
            else:
                if response["tasks"]:
                    task_arn = str(response["tasks"][0]["taskArn"])
                    self.log.info("Started ECS task %s on %s", task_arn, self.cluster)
                    return task_arn
                reason = failures_text(response["failures"])
                if not no_capacity(response["failures"]) or attempt == self.run_task_attempts:
                    tried = f" ({placement} placements tried)" if placement > 1 else ""
                    raise AirflowException(f"ECS could not run the task {where}: {reason}{tried}")
                placement += 1
                request["clientToken"] = client_token_for(started_by, try_number, placement=placement)
            pause = backoff(attempt, first=1.0, longest=60.0)
            self.log.warning("RunTask attempt %d failed (%s); retrying in %.0fs", attempt, reason, pause)
            time.sleep(pause)
        raise AssertionError("unreachable")


class EcsFleetOperator(ModelGroupOperator, EcsTaskOperator):
    """Run a group of models' ECS tasks from one task instance, without holding a worker slot.

    As :class:`~airflow_ml_batch.operators.batch.BatchFleetOperator`, with RunTask: the worker builds one
    request per model (the operator's arguments, then the model's entry, e.g. from
    :func:`airflow_ml_batch.fleet.ecs_kwargs`) and defers to
    :class:`~airflow_ml_batch.triggers.ecs.EcsFleetTrigger`, which starts the tasks within ``submit_rate``
    (RunTask and Fargate's launch rate are limited per account; the default keeps under both), waits for
    them, and ends with one result per model (what :class:`EcsTaskOperator` returns, plus ``model``,
    ``index``, ``succeeded``, ``tries`` and ``message``). A stopped task whose model has ``model_retries``
    left (a Spot interruption, a capacity failure, an exit code) is started again.

    Also takes every parameter of :class:`EcsTaskOperator` and of
    :class:`~airflow_ml_batch.operators.group.ModelGroupOperator`.
    """

    template_fields = (*EcsTaskOperator.template_fields, "models")
    template_fields_renderers = {**EcsTaskOperator.template_fields_renderers, "models": "json"}
    operator_extra_links: tuple[Any, ...] = (EcsClusterTasksLink(),)  # no one task to link to: the cluster's

    def save_group_link(self, context: Context, results: list[dict[str, Any]] | None) -> None:
        cluster_name = self.cluster.rsplit("/", 1)[-1]
        EcsClusterTasksLink.save(context, self, **self.link_location(), cluster_name=cluster_name)

    def group_trigger(self, **arguments: Any) -> EcsFleetTrigger:
        from airflow_ml_batch.triggers.ecs import EcsFleetTrigger

        return EcsFleetTrigger(**arguments)

    def model_request(self, context: Context, values: dict[str, Any], label: str) -> dict[str, Any]:
        tags = {**(values.get("tags") or {}), **task_instance_tags(context["ti"], with_try=False)}
        tags["airflow:model"] = label[:256]
        request = run_task_request(self.request_fields, values, started_by="", client_token="", tags=tags)
        del request["startedBy"], request["clientToken"]  # the trigger sets them for each attempt
        return request

    def active_group_jobs(self, context: Context) -> list[str]:
        prefix = self.group_identity(context)["prefix"]
        pages = self.hook.conn.get_paginator("list_tasks").paginate(
            cluster=self.cluster, startedBy=prefix, desiredStatus="RUNNING"
        )
        return [arn for page in pages for arn in page["taskArns"]]

    def job_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {
            **settings,
            "cluster": self.cluster,
            "fail_on_sidecars": self.fail_on_sidecars,
            "container_name": self.container_name,
        }
