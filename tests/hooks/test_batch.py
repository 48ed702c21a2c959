"""BatchHook against a moto server: the sync client for operators and the shared async client for triggers."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from helpers import aws_connection_uri

from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.testing.endpoint import Endpoint


def test_sync_client_submits_and_describes(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    hook = BatchHook(aws_conn_id=aws_conn_id)

    job = hook.conn.submit_job(
        jobName="model-1",
        **{"jobQueue": batch_queue["job_queue"]},
        jobDefinition=batch_queue["job_definition"],
    )
    described = hook.conn.describe_jobs(jobs=[job["jobId"]])["jobs"]

    assert hook.conn is hook.conn, "the sync client is cached per hook"
    assert [(j["jobId"], j["jobName"]) for j in described] == [(job["jobId"], "model-1")]
    assert hook.conn.meta.region_name == "eu-west-1"


async def test_async_client_submits_and_describes(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    hook = BatchHook(aws_conn_id=aws_conn_id)

    async with hook.async_client() as client:
        job = await client.submit_job(
            jobName="model-2", jobQueue=batch_queue["job_queue"], jobDefinition=batch_queue["job_definition"]
        )
        described = (await client.describe_jobs(jobs=[job["jobId"]]))["jobs"]

    assert [j["jobName"] for j in described] == ["model-2"]


async def test_async_client_reports_aws_errors(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    hook = BatchHook(aws_conn_id=aws_conn_id)

    async with hook.async_client() as client:
        with pytest.raises(client.exceptions.ClientException, match="no-such-queue"):
            await client.submit_job(
                jobName="model-3", jobQueue="no-such-queue", jobDefinition=batch_queue["job_definition"]
            )


@pytest.fixture
def retrying(aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection to the endpoint with botocore's standard retries, as users have them."""
    retries = {"retries": {"mode": "standard", "total_max_attempts": 5}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_RETRYING", aws_connection_uri(aws_endpoint.url, config_kwargs=retries))
    return "aws_retrying"


REQUEST = {
    "jobName": "forecast-widgets",
    "jobQueue": "models",
    "jobDefinition": "forecast",
    "tags": {"airflow:run_id": "manual__1", "airflow:try_number": "1"},
}


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_submission_whose_answer_was_lost_makes_one_job(aws_endpoint: Endpoint, retrying: str, mode: str) -> None:
    # AWS created the job, then the answer was lost: botocore's retries would send SubmitJob again
    aws_endpoint.lose_answers("SubmitJob", next=1, mode=mode)

    job_id = BatchHook(aws_conn_id=retrying).submit_job(REQUEST)

    assert list(aws_endpoint.batch.jobs) == [job_id]
    assert aws_endpoint.calls["SubmitJob"] == 1
    assert aws_endpoint.calls["ListJobs"] >= 1


def test_a_lost_job_is_looked_for_again_while_the_listing_lags(aws_endpoint: Endpoint) -> None:
    aws_endpoint.faults.update({"list_lag_seconds": 1.5})
    aws_endpoint.lose_answers("SubmitJob", next=1)

    job_id = BatchHook(aws_conn_id="aws_fake").submit_job(REQUEST)

    assert list(aws_endpoint.batch.jobs) == [job_id]
    assert aws_endpoint.calls["ListJobs"] >= 2, "not listed at first: looked for again"


def test_a_job_never_found_is_submitted_again(aws_endpoint: Endpoint) -> None:
    # SubmitJob answered 500 and really did nothing: after the lookup, the request is sent again
    aws_endpoint.fail_next("SubmitJob", times=1, status=500, code="ServerException")

    job_id = BatchHook(aws_conn_id="aws_fake").submit_job(REQUEST, lookup_seconds=0.5)

    assert list(aws_endpoint.batch.jobs) == [job_id]
    assert aws_endpoint.calls["SubmitJob"] == 2


def test_throttling_is_sent_again_without_looking(aws_endpoint: Endpoint) -> None:
    aws_endpoint.fail_next("SubmitJob", times=2)

    job_id = BatchHook(aws_conn_id="aws_fake").submit_job(REQUEST)

    assert list(aws_endpoint.batch.jobs) == [job_id]
    assert aws_endpoint.calls["ListJobs"] == 0


def test_a_rejected_submission_raises_the_aws_error_at_once(aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.on_submit = lambda body: {"reject": "Job queue models does not exist"}

    with pytest.raises(ClientError, match="Job queue models does not exist"):
        BatchHook(aws_conn_id="aws_fake").submit_job(REQUEST)
    assert aws_endpoint.calls["SubmitJob"] == 1


async def test_the_send_once_client_is_shared_apart_from_the_retrying_one(retrying: str) -> None:
    hook = BatchHook(aws_conn_id=retrying)

    async with hook.async_client() as retrying_client, hook.async_client(send_once=True) as once:
        async with BatchHook(aws_conn_id=retrying).async_client(send_once=True) as same:
            assert same is once
        assert once is not retrying_client
        assert once.meta.config.retries["total_max_attempts"] == 1
        assert retrying_client.meta.config.retries["total_max_attempts"] == 5
    assert hook.send_once_conn.meta.config.retries["total_max_attempts"] == 1
