"""The CloudWatch log link of a job, built on the Amazon provider's ``CloudWatchEventsLink``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink

from airflow_ml_batch.links.base import KeptLink


class JobLogsLink(KeptLink, CloudWatchEventsLink):
    """The job's CloudWatch log stream in the AWS console, saved once the job has one.

    Airflow 3 renders every link of a task when a worker run ends, the run that defers included. A job
    that has just been submitted has no log stream yet, and looking up the link's data then would log
    an "XCom not found" error in every task's log: the operator says when there is nothing to look up.
    """

    pending_flag = "log_link_pending"


def log_stream_url(
    *,
    aws_domain: str | None,
    region_name: str | None,
    log_group: str | None,
    log_stream: str | None,
    log_region: str | None = None,
) -> str | None:
    """The console URL of a CloudWatch log stream (``log_region``: the log's own region, else ``region_name``),
    or ``None`` when the stream or the partition's console is not known."""
    if not (log_group and log_stream and aws_domain):
        return None
    url = JobLogsLink().format_link(
        aws_domain=aws_domain,
        awslogs_region=log_region or region_name,
        awslogs_group=log_group,
        awslogs_stream_name=log_stream,
    )
    return str(url) or None


def job_log_url(result: Mapping[str, Any], *, aws_domain: str | None, region_name: str | None) -> str | None:
    """The console URL of a job result's log stream (``log_group``, ``log_stream``, ``log_region``), or ``None``."""
    return log_stream_url(
        aws_domain=aws_domain,
        region_name=region_name,
        log_group=result.get("log_group"),
        log_stream=result.get("log_stream"),
        log_region=result.get("log_region"),
    )
