"""Helpers the tests share: the test region and connections to the moto server."""

from __future__ import annotations

from typing import Any

from airflow_ml_batch.testing import DEFAULT_REGION as REGION
from airflow_ml_batch.testing import aws_connection_json

CONN_ID = "aws_moto"

__all__ = ["CONN_ID", "REGION", "aws_connection_uri"]


def aws_connection_uri(endpoint_url: str, **extra: Any) -> str:
    """The test connection: everything at ``endpoint_url``, and no botocore retries.

    A test sees moto's first answer: retries would only hide errors and slow the suite.
    """
    extra.setdefault("config_kwargs", {"retries": {"mode": "standard", "total_max_attempts": 1}})
    return aws_connection_json(endpoint_url, **extra)
