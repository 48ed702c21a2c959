"""Wait for an ECS task on the triggerer, through one shared DescribeTasks poller per cluster."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from botocore.exceptions import ClientError

from airflow_ml_batch.hooks.ecs import EcsHook
from airflow_ml_batch.jobs.ecs import (
    classify_stopped_task,
    client_token_for,
    describe_task_failure,
    essential_containers,
    failures_text,
    found_task,
    listed_task,
    log_location,
    no_capacity,
    start_choice,
    summarize_task,
    task_id_of,
    task_is_live,
)
from airflow_ml_batch.jobs.errors import error_message, error_text, is_transient
from airflow_ml_batch.jobs.groups import FoundJob
from airflow_ml_batch.links.ecs import EcsTaskLink
from airflow_ml_batch.triggers.base import SharedPoller, WaitForJobTrigger
from airflow_ml_batch.triggers.group import RunGroupTrigger
from airflow_ml_batch.triggers.start import StartsJob
from airflow_ml_batch.triggers.submission import NoCapacity, RejectedError

log = logging.getLogger(__name__)

#: RunTask calls (and Fargate task launches) per second per account and Region that ECS publishes
RUN_TASK_RATE = 20.0
#: DescribeTaskDefinition is retried with backoff: up to this many answers with an error that will not
#: pass by itself (access denied), and transient errors (throttling, 5xx) for up to this many seconds.
DEFINITION_ATTEMPTS = 4
DEFINITION_RETRY_SECONDS = 300.0
#: Seconds a definition that could not be read is not read again (tasks finishing meanwhile go without).
DEFINITION_FAILURE_TTL = 300.0


class TaskDefinitionUnavailable(Exception):
    """A task definition could not be read, even after retrying."""


class EcsTaskPoller(SharedPoller):
    """Describes up to 100 tasks of one cluster per DescribeTasks call for every trigger of a (connection, region).

    Also keeps the task definitions it has read (which containers are essential, where they log), so
    thousands of tasks of one definition cost one DescribeTaskDefinition call.
    """

    batch_size = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._definitions: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._unreadable_since: dict[str, float] = {}

    operation = "DescribeTasks"
    scope_name = "cluster"

    async def request(self, client: Any, ids: list[str]) -> Any:
        return await client.describe_tasks(cluster=self.scope, tasks=ids)

    def found(self, answer: Any) -> dict[str, dict[str, Any]]:
        # Tasks that ECS no longer (or not yet) knows come back in "failures" as MISSING: absent here.
        return {task["taskArn"]: task for task in answer["tasks"]}

    @staticmethod
    def state_of(description: dict[str, Any]) -> str:
        return str(description.get("lastStatus"))

    async def task_definition(self, arn: str) -> dict[str, Any]:
        """The task definition ``arn``, read once per poller, in a task of its own (never in a poll round).

        Errors are logged and retried with backoff (:data:`DEFINITION_ATTEMPTS`,
        :data:`DEFINITION_RETRY_SECONDS`).

        :raises TaskDefinitionUnavailable: it could not be read; for :data:`DEFINITION_FAILURE_TTL`
            seconds, other tasks of it get that answer without a new read.
        """
        failed_at = self._unreadable_since.get(arn)
        if failed_at is not None and time.monotonic() - failed_at > DEFINITION_FAILURE_TTL:
            self._definitions.pop(arn, None)
            self._unreadable_since.pop(arn, None)
        if arn not in self._definitions:
            future = self._definitions[arn] = asyncio.ensure_future(self._read_definition(arn))
            future.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, even unawaited
        return await asyncio.shield(self._definitions[arn])

    async def _read_definition(self, arn: str) -> dict[str, Any]:
        started, attempt, refusals = time.monotonic(), 0, 0
        while True:
            attempt += 1
            try:
                async with self.hook.async_client() as client:
                    response = await client.describe_task_definition(taskDefinition=arn)
                return dict(response["taskDefinition"])
            except Exception as error:
                refusals += not is_transient(error)
                if refusals >= DEFINITION_ATTEMPTS or time.monotonic() - started >= DEFINITION_RETRY_SECONDS:
                    self._unreadable_since[arn] = time.monotonic()
                    log.warning("Giving up reading ECS task definition %s after %d attempts: %s", arn, attempt, error)
                    message = f"DescribeTaskDefinition {arn} failed {attempt} times: {error}"
                    raise TaskDefinitionUnavailable(message) from error
                pause = min(60.0, self._interval() * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning("Could not read ECS task definition %s (attempt %d): %s; retrying", arn, attempt, error)
                await asyncio.sleep(pause)


class EcsTaskTrigger(StartsJob, WaitForJobTrigger):
    """Wait for an ECS task to stop; stop it on the deadline or when a user acts on the task.

    Every instance in a triggerer process shares one :class:`EcsTaskPoller` per (connection, region,
    cluster): 5000 waiting tasks of a cluster cost 50 DescribeTasks calls per ``poll_interval``. A stopped task is
    classified (``success``, ``failed_to_start``, ``spot_interruption``, ``out_of_memory``,
    ``container_failed``, ``stopped``) from its stop code and its essential containers: a task stopped by
    a user (StopTask), the service scheduler or ECS is ``stopped``, whatever its exit codes. The event's
    payload is ``{"status": "success" | "failed" | "timeout" | "missing" | "error", "job_id", "message", "result"}``,
    or a ``TaskSuccessEvent`` with ``end_from_trigger``.

    :param cluster: the task's cluster (name or ARN).
    :param task_arn: the task to wait for; ``None`` with ``start``: the one the trigger runs.
    :param start: run the task from here (``EcsTaskOperator(submit_from_trigger=True)``): ``request`` (RunTask's
        keywords, its ``startedBy``, ``clientToken`` and tags included), ``try_number``, ``reattach_tries``,
        ``identity`` (the task-instance tags without the try), ``job_id_xcom_key`` and ``capacity_tries``; see
        :class:`~airflow_ml_batch.triggers.start.StartsJob`. A RunTask whose answer was lost is sent again with
        the same ``clientToken`` (ECS answers it with the task it started); one that found no capacity is
        tried again with a new token, up to ``capacity_tries`` times.
    :param fail_on_sidecars: a non-essential container exiting non-zero fails the task too.
    :param container_name: the container whose CloudWatch log is copied (``job_logs``) and read for metrics;
        default: the first essential container that logs with ``awslogs``.
    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    :param poll_interval: seconds between two DescribeTasks of this task (each trigger at its own pace).
    :param deadline: epoch seconds after which the task is stopped and the Airflow task fails.
    :param end_from_trigger: end a successful Airflow task from the triggerer, with no worker run after.
    :param xcom_result: with ``end_from_trigger``, push the result as the task's ``return_value``.
    :param missing_grace: seconds a task may be absent from DescribeTasks before it counts as gone
        (ECS forgets stopped tasks after about an hour).
    :param log_link: ``region_name`` and ``aws_domain`` of the CloudWatch log link saved with the result.

    Also takes ``log_tail_lines``, ``collect_metrics``, ``job_logs`` and ``job_log_lines``: see
    :class:`~airflow_ml_batch.triggers.base.WaitForJobTrigger`.
    """

    poller = EcsTaskPoller
    hook_class = EcsHook
    noun = "ECS task"
    start_operation = "RunTask"
    list_operation = "ListTasks"
    start_rate = RUN_TASK_RATE
    resend_is_safe = True  # the same clientToken: ECS answers with the task it started

    def __init__(
        self,
        cluster: str,
        task_arn: str | None = None,
        fail_on_sidecars: bool = False,
        container_name: str | None = None,
        start: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task_arn is None and start is None:
            raise ValueError("EcsTaskTrigger needs a task_arn, or a start to run the task from")
        self.cluster = cluster
        self.job_id = task_arn
        self.fail_on_sidecars = fail_on_sidecars
        self.container_name = container_name
        self.start = start

    @property
    def task_arn(self) -> str | None:
        """The task waited for (``None`` until a trigger that runs it has)."""
        return self.job_id

    @property
    def scope(self) -> str:
        return self.cluster

    def service_kwargs(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "task_arn": self.job_id,
            "fail_on_sidecars": self.fail_on_sidecars,
            "container_name": self.container_name,
            "start": self.start,
        }

    async def named_jobs(self, client: Any) -> list[dict[str, Any]]:
        """ListTasks on the task instance's ``startedBy`` (running, then stopped), one DescribeTasks of those found
        (with their tags), those carrying the task-instance tags (:func:`~airflow_ml_batch.jobs.ecs.listed_task`)."""
        start = self.start or {}
        started_by = start["request"]["startedBy"]
        try:
            arns = []
            for desired in ("RUNNING", "STOPPED"):
                listed = await client.list_tasks(cluster=self.cluster, startedBy=started_by, desiredStatus=desired)
                arns += listed["taskArns"]
            tasks = []
            if arns:
                answer = await client.describe_tasks(cluster=self.cluster, tasks=arns[:100], include=["TAGS"])
                tasks = answer["tasks"]
        except ClientError as error:
            if is_transient(error):
                raise
            raise RejectedError(
                f"ECS could not list the tasks of cluster={self.cluster!r}: {error_text(error)}"
            ) from error
        identity = (start.get("identity") or {}).items()
        return [task for task in map(listed_task, tasks) if identity <= task["tags"].items()]

    async def send_start(self, client: Any) -> str:
        request = (self.start or {})["request"]
        where = f"cluster={self.cluster!r}, task_definition={request.get('taskDefinition')!r}"
        try:
            response = await client.run_task(**request)
        except ClientError as error:
            if is_transient(error):
                raise
            raise RejectedError(f"ECS rejected RunTask ({where}): {error_message(error)}") from error
        if response["tasks"]:
            return str(response["tasks"][0]["taskArn"])
        failures = response["failures"]
        if no_capacity(failures):
            raise NoCapacity(failures_text(failures))
        raise RejectedError(f"ECS could not run the task ({where}): {failures_text(failures)}")

    def place_again(self, placement: int) -> None:
        """A new ``clientToken`` (ECS answers a token it knows with its first outcome: no capacity again)."""
        request = (self.start or {})["request"]
        request["clientToken"] = client_token_for(request["startedBy"], self.try_number, placement=placement)

    def start_choice(self, jobs: list[dict[str, Any]], current: str | None) -> tuple[str | None, list[str]]:
        return start_choice(jobs, self.try_number, self.reattach_tries, current)

    def is_live(self, job: dict[str, Any]) -> bool:
        return task_is_live(job)

    async def stop_other(self, client: Any, job_id: str, reason: str) -> None:
        await client.stop_task(cluster=self.cluster, task=job_id, reason=f"Airflow: {reason}"[:255])

    def job_link(self) -> tuple[Any, dict[str, Any]] | None:
        if not self.start or self.job_id is None:
            return None
        return EcsTaskLink(), {"cluster_name": self.cluster.rsplit("/", 1)[-1], "task_id": task_id_of(self.job_id)}

    def is_final(self, description: dict[str, Any]) -> bool:
        return description.get("lastStatus") == "STOPPED"

    async def summarize(self, description: dict[str, Any]) -> dict[str, Any]:
        """Classify the stopped task from its definition's essential containers (read once per poller).

        Without the definition, every container is judged, and the task log and the result say so.
        """
        definition: dict[str, Any] | None = None
        warnings = []
        try:
            definition = await self._poller().task_definition(description["taskDefinitionArn"])
        except TaskDefinitionUnavailable as error:
            warnings.append(f"the essential containers are unknown, so all containers are judged ({error})")
            self.log.warning("%s %s: %s", self.noun, self.task_arn, warnings[-1])
        essential = None if definition is None else essential_containers(definition)
        outcome = classify_stopped_task(description, essential, self.fail_on_sidecars)
        log_group, log_stream, log_region = log_location(description, definition, self.container_name)
        return summarize_task(description, outcome, log_group, log_stream, log_region, essential, warnings)

    def succeeded(self, result: dict[str, Any]) -> bool:
        return bool(result["outcome"] == "success")

    def failure_message(self, result: dict[str, Any]) -> str:
        return describe_task_failure(result)

    async def stop(self, client: Any, reason: str) -> None:
        await client.stop_task(cluster=self.cluster, task=self.task_arn, reason=f"Airflow: {reason}"[:255])

    async def describe(self, client: Any) -> dict[str, Any] | None:
        tasks = (await client.describe_tasks(cluster=self.cluster, tasks=[self.task_arn]))["tasks"]
        return tasks[0] if tasks else None

    def _poller(self) -> EcsTaskPoller:
        """The poller this trigger watches through (it holds the task definitions read)."""
        poller = self.poller.of(self.hook, self.scope)
        return poller if isinstance(poller, EcsTaskPoller) else EcsTaskPoller(self.hook, self.scope)


class EcsFleetTrigger(RunGroupTrigger):
    """Run and wait for the ECS tasks of a group of models (``EcsFleetOperator``).

    Every task of the group is started by ``startedBy=<prefix>`` and tagged with its model's index, the
    try and the attempt; its ``clientToken`` is derived from them, so a RunTask sent again after a lost
    answer or a triggerer restart starts no second task. ListTasks on ``startedBy`` (running and stopped)
    finds the tasks the task instance already has. RunTask capacity failures are tried again with backoff
    and a new token, without counting as an attempt, up to
    :data:`~airflow_ml_batch.triggers.submission.CAPACITY_TRIES` times. See
    :class:`~airflow_ml_batch.triggers.group.RunGroupTrigger` for the parameters.
    """

    job_trigger = EcsTaskTrigger
    job_id_argument = "task_arn"
    noun = "ECS tasks"
    published_submit_rate = RUN_TASK_RATE
    resend_is_safe = True  # the same clientToken: ECS answers with the task it started

    async def find_jobs(self, client: Any) -> list[FoundJob]:
        cluster, prefix = self.job["cluster"], self.group["prefix"]
        arns: list[str] = []
        try:
            for desired in ("RUNNING", "STOPPED"):
                paginator = client.get_paginator("list_tasks")
                async for page in paginator.paginate(cluster=cluster, startedBy=prefix, desiredStatus=desired):
                    arns.extend(page["taskArns"])
        except ClientError as error:
            if is_transient(error):
                raise
            message = f"ECS could not list the tasks of cluster={cluster!r}: {error_text(error)}"
            raise RejectedError(message) from error
        found = []
        for start in range(0, len(arns), 100):
            answer = await client.describe_tasks(cluster=cluster, tasks=arns[start : start + 100], include=["TAGS"])
            found += [job for task in answer["tasks"] if (job := found_task(task)) is not None]
        return found

    async def submit(self, client: Any, model: dict[str, Any], attempt: int, placement: int = 1) -> str:
        index, prefix = int(model["index"]), self.group["prefix"]
        numbers = {"model_index": index, "try_number": self.try_number, "attempt": attempt}
        tags = [
            *model["request"].get("tags", []),
            *({"key": f"airflow:{k}", "value": str(v)} for k, v in numbers.items()),
        ]
        token = client_token_for(prefix, index, self.try_number, attempt, placement=placement)
        request = {**model["request"], "startedBy": prefix, "clientToken": token, "tags": tags}
        try:
            response = await client.run_task(**request)
        except ClientError as error:
            if is_transient(error):
                raise
            message = error_message(error)
            raise RejectedError(
                f"ECS rejected RunTask of model {model['label']} ({self._where()}): {message}"
            ) from error
        if response["tasks"]:
            return str(response["tasks"][0]["taskArn"])
        failures = response["failures"]
        if no_capacity(failures):
            raise NoCapacity(failures_text(failures))
        raise RejectedError(
            f"ECS could not run the task of model {model['label']} ({self._where()}): {failures_text(failures)}"
        )

    def _where(self) -> str:
        definition = next(iter(self.models), {}).get("request", {}).get("taskDefinition")
        return f"cluster={self.job['cluster']!r}, task_definition={definition!r}"
