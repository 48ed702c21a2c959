"""Amazon ECS through an Airflow ``aws`` connection."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow_ml_batch.hooks.base import AwsServiceHook

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient


class EcsHook(AwsServiceHook):
    """Amazon ECS through an Airflow ``aws`` connection: ``hook.conn`` (sync) and ``hook.async_client()``.

    Takes the arguments of :class:`~airflow_ml_batch.hooks.base.AwsServiceHook`.
    """

    service = "ecs"
    hook_name = "Amazon ECS (airflow-ml-batch)"

    @property
    def conn(self) -> ECSClient:
        """The cached sync boto3 ECS client."""
        return cast("ECSClient", super().conn)

    def describe_tasks(self, cluster: str, task_arns: Iterable[str]) -> list[dict[str, Any]]:
        """DescribeTasks (with tags) for any number of tasks, 100 per call; unknown ones are left out."""
        arns = list(dict.fromkeys(task_arns))
        return [
            dict(task)
            for start in range(0, len(arns), 100)
            for task in self.conn.describe_tasks(cluster=cluster, tasks=arns[start : start + 100], include=["TAGS"])[
                "tasks"
            ]
        ]

    def tasks_started_by(
        self, cluster: str, started_by: str, desired_status: Literal["RUNNING", "STOPPED"]
    ) -> list[dict[str, Any]]:
        """Tasks of ``cluster`` that ``started_by`` started and whose desired status is ``desired_status``."""
        arns = self.conn.list_tasks(cluster=cluster, startedBy=started_by, desiredStatus=desired_status)["taskArns"]
        if not arns:
            return []
        tasks = self.conn.describe_tasks(cluster=cluster, tasks=arns[:100], include=["TAGS"])["tasks"]
        return sorted((dict(t) for t in tasks), key=lambda t: str(t.get("createdAt", "")), reverse=True)
