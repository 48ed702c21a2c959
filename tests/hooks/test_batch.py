"""BatchHook against a moto server: the sync client for operators and the shared async client for triggers."""

from __future__ import annotations

import pytest

from airflow_ml_batch.hooks.batch import BatchHook


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
