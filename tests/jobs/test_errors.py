"""The pure functions of :mod:`airflow_ml_batch.jobs.errors`: which AWS errors pass by themselves, how one reads."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
    SSLError,
)

from airflow_ml_batch.jobs.errors import answer_lost, backoff, error_text, is_throttling, is_transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (client_error("TooManyRequestsException", 429), True),
        (client_error("ThrottlingException", 400), True),
        (client_error("ServerException", 500), True),
        (client_error("ExpiredTokenException", 400), True),
        (client_error("AccessDeniedException", 403), False),
        (client_error("ClusterNotFoundException", 400), False),
        (client_error("UnrecognizedClientException", 403), False),
        (EndpointConnectionError(endpoint_url="https://batch.eu-west-1.amazonaws.com"), True),
        (ConnectionClosedError(endpoint_url="https://batch.eu-west-1.amazonaws.com"), True),
        (ReadTimeoutError(endpoint_url="https://batch.eu-west-1.amazonaws.com"), True),
        (asyncio.TimeoutError(), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (CredentialRetrievalError(provider="assume-role", error_msg="timed out"), True),
        (SSLError(endpoint_url="https://x", error=ssl.SSLError("certificate verify failed")), False),
        (ParamValidationError(report="Invalid type for parameter jobs"), False),
        (NoRegionError(), False),
        (NoCredentialsError(), False),
        (KeyError("jobId"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_what_passes_by_itself(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_an_error_reads_as_its_aws_code_and_message_or_its_type_and_text() -> None:
    assert error_text(client_error("AccessDeniedException", 403)) == "AccessDeniedException: m"
    assert error_text(ClientError({"Error": {}}, "DescribeJobs")).startswith("Error: An error occurred")
    assert error_text(NoRegionError()) == "NoRegionError: You must specify a region."


def test_the_trigger_module_still_exports_what_moved_from_it() -> None:
    from airflow_ml_batch.jobs import common, errors
    from airflow_ml_batch.triggers import base

    assert base.is_transient is errors.is_transient
    assert base.error_text is errors.error_text
    assert base.TRANSIENT_ERROR_CODES is errors.TRANSIENT_ERROR_CODES
    assert base.metrics_from_log is common.metrics_from_log


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (client_error("ServerException", 500), True),  # AWS may have started the job before failing
        (ReadTimeoutError(endpoint_url="https://batch.eu-west-1.amazonaws.com"), True),
        (ConnectionClosedError(endpoint_url="https://batch.eu-west-1.amazonaws.com"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (asyncio.TimeoutError(), True),
        (client_error("TooManyRequestsException", 429), False),  # refused for its rate: nothing done
        (client_error("ThrottlingException", 400), False),
        (client_error("ExpiredTokenException", 400), False),
        (EndpointConnectionError(endpoint_url="https://batch.eu-west-1.amazonaws.com"), False),  # never sent
        (ConnectionRefusedError(111, "Connection refused"), False),
        (client_error("ClientException", 400), False),  # refused: not transient at all
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_an_answer_is_lost_only_where_aws_may_have_done_the_work(error: BaseException, lost: bool) -> None:
    assert answer_lost(error) is lost


def test_a_file_that_cannot_be_read_is_no_network_trouble() -> None:
    # a CA bundle given as ``verify`` that does not exist: waiting would never help
    assert not is_transient(FileNotFoundError(2, "No such file or directory", "/etc/ssl/missing.pem"))
    assert not is_transient(PermissionError(13, "Permission denied"))
    assert is_transient(ConnectionResetError(104, "Connection reset by peer"))


def test_backoff_grows_with_failures_within_its_bounds() -> None:
    waits = [backoff(failures, first=1.0, longest=30.0) for failures in range(1, 40) for _ in range(20)]

    assert all(0 <= wait <= 30.0 for wait in waits)
    assert max(backoff(1, first=1.0) for _ in range(200)) <= 2.0
    assert max(waits) > 16.0


def test_throttling_is_told_by_status_or_code_and_never_by_a_network_error() -> None:
    assert is_throttling(client_error("TooManyRequestsException", 429))
    assert is_throttling(client_error("ThrottlingException", 400))
    assert not is_throttling(client_error("ServerException", 500))
    assert not is_throttling(ConnectionClosedError(endpoint_url="https://ecs.eu-west-1.amazonaws.com"))


def test_the_aws_message_alone_is_what_rejections_quote() -> None:
    from botocore.exceptions import ClientError

    from airflow_ml_batch.jobs.errors import error_message

    rejected = ClientError({"Error": {"Code": "ClientException", "Message": "JobQueue nope not found"}}, "SubmitJob")

    assert error_message(rejected) == "JobQueue nope not found"
    assert error_message(ValueError("bad")) == "bad"
