"""Wait for an ECS task on the triggerer, through one shared DescribeTasks poller per cluster."""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_ml_batch.hooks.ecs import (
    EcsHook,
    classify_stopped_task,
    describe_task_failure,
    log_location,
    summarize_task,
)
from airflow_ml_batch.triggers.base import SharedPoller, WaitForJobTrigger


class EcsTaskPoller(SharedPoller):
    """Describes up to 100 tasks of one cluster per DescribeTasks call for every trigger of a (connection, region).

    Also keeps the task definitions it has read (which containers are essential, where they log), so
    thousands of tasks of one definition cost one DescribeTaskDefinition call.
    """

    batch_size = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._definitions: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def describe(self, client: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        # Tasks that ECS no longer (or not yet) knows come back in "failures" as MISSING: absent here.
        response = await client.describe_tasks(cluster=self.scope, tasks=ids)
        return {task["taskArn"]: task for task in response["tasks"]}

    @staticmethod
    def state_of(description: dict[str, Any]) -> str:
        return str(description.get("lastStatus"))

    async def task_definition(self, arn: str) -> dict[str, Any]:
        """The task definition ``arn``, read once per poller; ``{}`` when it cannot be read."""
        if arn not in self._definitions:
            self._definitions[arn] = asyncio.ensure_future(self._read_definition(arn))
        return await asyncio.shield(self._definitions[arn])

    async def _read_definition(self, arn: str) -> dict[str, Any]:
        try:
            async with self.hook.async_client() as client:
                response = await client.describe_task_definition(taskDefinition=arn)
        except Exception:
            self._definitions.pop(arn, None)  # not cached: the next task tries again
            return {}
        return dict(response["taskDefinition"])


class EcsTaskTrigger(WaitForJobTrigger):
    """Wait for an ECS task to stop; stop it on the deadline or when a user acts on the task.

    Every instance in a triggerer process shares one :class:`EcsTaskPoller` per (connection, region,
    cluster): 5000 waiting tasks of a cluster cost 50 DescribeTasks calls per round. A stopped task is
    classified (``success``, ``failed_to_start``, ``spot_interruption``, ``out_of_memory``,
    ``container_failed``, ``stopped``) from its stop code and its essential containers: a task stopped by
    a user (StopTask), the service scheduler or ECS is ``stopped``, whatever its exit codes. The event's
    payload is ``{"status": "success" | "failed" | "timeout" | "missing" | "error", "job_id", "message", "result"}``,
    or a ``TaskSuccessEvent`` with ``end_from_trigger``.

    :param cluster: the task's cluster (name or ARN).
    :param task_arn: the task to wait for.
    :param fail_on_sidecars: a non-essential container exiting non-zero fails the task too.
    :param container_name: the container whose CloudWatch log is tailed (failure message, metrics);
        default: the first essential container that logs with ``awslogs``.
    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    :param poll_interval: seconds between poll rounds (shared: the shortest of all waiting triggers).
    :param deadline: epoch seconds after which the task is stopped and the Airflow task fails.
    :param end_from_trigger: end a successful Airflow task from the triggerer, with no worker run after.
    :param xcom_result: with ``end_from_trigger``, push the result as the task's ``return_value``.
    :param missing_grace: seconds a task may be absent from DescribeTasks before it counts as gone
        (ECS forgets stopped tasks after about an hour).
    :param log_link: ``region_name`` and ``aws_domain`` of the CloudWatch log link saved with the result.

    Also takes ``log_tail_lines`` and ``collect_metrics``: see
    :class:`~airflow_ml_batch.triggers.base.WaitForJobTrigger`.
    """

    poller = EcsTaskPoller
    hook_class = EcsHook
    noun = "ECS task"

    def __init__(
        self,
        cluster: str,
        task_arn: str,
        fail_on_sidecars: bool = False,
        container_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.job_id = self.task_arn = task_arn
        self.fail_on_sidecars = fail_on_sidecars
        self.container_name = container_name

    @property
    def scope(self) -> str:
        return self.cluster

    def service_kwargs(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "task_arn": self.task_arn,
            "fail_on_sidecars": self.fail_on_sidecars,
            "container_name": self.container_name,
        }

    def is_final(self, description: dict[str, Any]) -> bool:
        return description.get("lastStatus") == "STOPPED"

    async def summarize(self, description: dict[str, Any]) -> dict[str, Any]:
        """Classify the stopped task from its definition's essential containers (read once per poller)."""
        definition = await self._poller().task_definition(description["taskDefinitionArn"])
        essential = {c["name"] for c in definition.get("containerDefinitions", []) if c.get("essential", True)}
        outcome = classify_stopped_task(description, essential, self.fail_on_sidecars)
        log_group, log_stream, log_region = log_location(description, definition, self.container_name)
        return summarize_task(description, outcome, log_group, log_stream, log_region)

    def succeeded(self, result: dict[str, Any]) -> bool:
        return bool(result["outcome"] == "success")

    def failure_message(self, result: dict[str, Any], log_tail: list[str]) -> str:
        return describe_task_failure(result, log_tail)

    async def stop(self, client: Any, reason: str) -> None:
        await client.stop_task(cluster=self.cluster, task=self.task_arn, reason=f"Airflow: {reason}"[:255])

    def _poller(self) -> EcsTaskPoller:
        return self.poller.for_scope(self.hook, self.scope)  # type: ignore[return-value]
