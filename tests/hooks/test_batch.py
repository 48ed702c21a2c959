"""BatchHook against a moto server: the sync client for operators and the shared async client for triggers."""

from __future__ import annotations

import pytest

from airflow_ml_batch.hooks.batch import (
    BatchHook,
    describe_failure,
    job_name_for,
    submit_job_request,
    summarize_job,
    valid_job_name,
)


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


@pytest.mark.parametrize(
    ("dag_id", "task_id", "run_id", "map_index"),
    [
        ("forecast", "train", "manual__2026-11-30T00:00:00+00:00", -1),
        ("forecast.monthly", "group.train model", "scheduled__2026-11-30", 4999),
        ("d" * 250, "t" * 250, "r", 3),
        ("...", "!!!", "r", -1),
    ],
)
def test_job_names_are_valid_deterministic_and_distinct(dag_id: str, task_id: str, run_id: str, map_index: int) -> None:
    name = job_name_for(dag_id, task_id, run_id, map_index)

    assert valid_job_name(name), name
    assert name == job_name_for(dag_id, task_id, run_id, map_index)
    assert name != job_name_for(dag_id, task_id, run_id + "x", map_index)
    assert name != job_name_for(dag_id, task_id, run_id, map_index + 1)


def test_submit_request_folds_shorthands_into_container_overrides() -> None:
    request = submit_job_request(
        job_name="model-1",
        job_queue="models",
        job_definition="forecast:3",
        container_overrides={
            "environment": [{"name": "KEEP", "value": "1"}, {"name": "PRODUCT", "value": "old"}],
            "resourceRequirements": [{"type": "GPU", "value": "1"}, {"type": "VCPU", "value": "1"}],
        },
        command=["python", "train.py"],
        environment={"PRODUCT": "widgets"},
        vcpus=0.5,
        memory=2048,
        timeout=5400,
        array_size=10,
        tags={"team": "demand"},
        submit_job_kwargs={"shareIdentifier": "blue"},
    )

    assert request == {
        "jobName": "model-1",
        "jobQueue": "models",
        "jobDefinition": "forecast:3",
        "containerOverrides": {
            "environment": [{"name": "KEEP", "value": "1"}, {"name": "PRODUCT", "value": "widgets"}],
            "resourceRequirements": [
                {"type": "GPU", "value": "1"},
                {"type": "VCPU", "value": "0.5"},
                {"type": "MEMORY", "value": "2048"},
            ],
            "command": ["python", "train.py"],
        },
        "timeout": {"attemptDurationSeconds": 5400},
        "arrayProperties": {"size": 10},
        "tags": {"team": "demand"},
        "propagateTags": True,
        "shareIdentifier": "blue",
    }


def test_summary_and_failure_message_of_a_spot_reclaimed_then_failed_job() -> None:
    job = {
        "jobId": "abc",
        "jobName": "model-9",
        "jobQueue": "models",
        "status": "FAILED",
        "statusReason": "Essential container in task exited",
        "startedAt": 1_000,
        "stoppedAt": 91_000,
        "container": {
            "exitCode": 137,
            "logStreamName": "forecast/default/t2",
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ml/models"}},
        },
        "attempts": [
            {"container": {"reason": "Host EC2 (instance i-0abc) terminated."}, "statusReason": "Spot"},
            {"container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"}},
        ],
    }

    summary = summarize_job(job)
    message = describe_failure(summary, ["epoch 3", "Killed"])

    assert summary["duration_seconds"] == 90
    assert (summary["log_group"], summary["log_stream"]) == ("/ml/models", "forecast/default/t2")
    assert summary["started_at"] == "1970-01-01T00:00:01+00:00"
    assert message.splitlines() == [
        "AWS Batch job model-9 (abc) FAILED: Essential container in task exited; exit code 137",
        "  attempt 1: exit code None, Host EC2 (instance i-0abc) terminated.",
        "  attempt 2: exit code 137, OutOfMemoryError: Container killed due to memory usage",
        "last 2 log lines (/ml/models forecast/default/t2):",
        "  epoch 3",
        "  Killed",
    ]
