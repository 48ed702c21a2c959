"""AWS Batch hook."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from airflow_ml_batch.hooks.base import AwsServiceHook

if TYPE_CHECKING:
    from mypy_boto3_batch import BatchClient


class BatchHook(AwsServiceHook):
    """AWS Batch through an Airflow ``aws`` connection: ``hook.conn`` (sync) and ``hook.async_client()``.

    Takes the arguments of :class:`~airflow_ml_batch.hooks.base.AwsServiceHook`.
    """

    service = "batch"
    hook_name = "AWS Batch (airflow-ml-batch)"

    @property
    def conn(self) -> BatchClient:
        """The cached sync boto3 Batch client."""
        return cast("BatchClient", super().conn)
