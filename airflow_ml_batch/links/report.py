"""Links of the fleet report: the report page of a report task, and a job's CloudWatch log stream."""

from __future__ import annotations

from urllib.parse import quote

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink

from airflow_ml_batch.links.base import KeptLink
from airflow_ml_batch.links.logs import log_stream_url
from airflow_ml_batch.report import JobOutcome


class FleetReportLink(KeptLink, BaseAwsLink):
    """The report's HTML page: the S3 console page of the object, or the file's ``file:`` URL."""

    name = "Fleet report"
    key = "fleet_report"
    format_str = "{url}"


def s3_console_url(bucket: str, key: str, *, aws_domain: str | None, region_name: str | None) -> str:
    """The S3 console page of object ``key`` in ``bucket``."""
    return (BASE_AWS_CONSOLE_LINK + "/s3/object/{bucket}?region={region}&prefix={key}").format(
        aws_domain=aws_domain or "aws.amazon.com",
        bucket=quote(bucket, safe=""),
        region=quote(region_name or "", safe=""),
        key=quote(key, safe=""),
    )


def log_url(outcome: JobOutcome, *, aws_domain: str | None, region_name: str | None) -> str | None:
    """The CloudWatch console URL of ``outcome``'s log stream (as the job tasks' log link), or ``None``."""
    return log_stream_url(
        aws_domain=aws_domain,
        region_name=region_name,
        log_group=outcome.log_group,
        log_stream=outcome.log_stream,
        log_region=outcome.log_region,
    )
