"""Amazon ECS hook."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

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
