"""The pure functions of :mod:`airflow_ml_batch.jobs.batch`: job names, SubmitJob requests, and what a described
job says (summaries, failure messages, states), for every job kind."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.jobs.batch import (
    describe_failure,
    job_name_for,
    job_state,
    node_range_for,
    start_choice,
    submit_job_request,
    submitted_job,
    summarize_job,
    valid_job_name,
)
from airflow_ml_batch.operators.batch import BatchJobOperator
from airflow_ml_batch.testing.endpoint import Endpoint


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
    values = {
        "job_queue": "models",
        "job_definition": "forecast:3",
        "container_overrides": {
            "environment": [{"name": "KEEP", "value": "1"}, {"name": "PRODUCT", "value": "old"}],
            "resourceRequirements": [{"type": "GPU", "value": "1"}, {"type": "VCPU", "value": "1"}],
        },
        "command": ["python", "train.py"],
        "environment": {"PRODUCT": "widgets"},
        "vcpus": 0.5,
        "memory": 2048,
        "timeout": 5400,
        "array_size": 10,
        "submit_job_kwargs": {"shareIdentifier": "blue"},
    }
    request = submit_job_request(BatchJobOperator.request_fields, values, job_name="model-1", tags={"team": "demand"})

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
        "parameters": {"password": "s3cret"},
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
    message = describe_failure(summary)

    assert summary["duration_seconds"] == 90
    assert "parameters" not in summary, "a job's parameters may hold secrets: results carry none"
    assert (summary["log_group"], summary["log_stream"]) == ("/ml/models", "forecast/default/t2")
    assert summary["started_at"] == "1970-01-01T00:00:01+00:00"
    assert message.splitlines() == [
        "AWS Batch job model-9 (abc) FAILED: Essential container in task exited; exit code 137",
        "  attempt 1: exit code None, Host EC2 (instance i-0abc) terminated.",
        "  attempt 2: exit code 137, OutOfMemoryError: Container killed due to memory usage",
        "  log: /ml/models forecast/default/t2",
    ]


# -- every job kind, described through a Batch-shaped endpoint (botocore parses, and drops unknown fields) --


def described(endpoint: Endpoint, status: str, **fields: Any) -> dict[str, Any]:
    """A job as DescribeJobs returns it, after botocore parsed the endpoint's answer."""
    (job,) = BatchHook(aws_conn_id="aws_fake", region_name="eu-west-1").describe_jobs(
        [endpoint.batch.add_job(status, **fields)]
    )
    return job


def awslogs(group: str) -> dict[str, Any]:
    return {"logDriver": "awslogs", "options": {"awslogs-group": group, "awslogs-region": "eu-west-1"}}


def test_a_multi_node_job_reports_its_main_node(aws_endpoint: Endpoint) -> None:
    node_properties = {
        "numNodes": 4,
        "mainNode": 1,
        "nodeRangeProperties": [
            {"targetNodes": "0:", "container": {"image": "train:3", "logConfiguration": awslogs("/ml/workers")}},
            {"targetNodes": "1", "container": {"image": "train:3", "logConfiguration": awslogs("/ml/main")}},
        ],
    }
    job = described(
        aws_endpoint,
        "FAILED",
        jobName="train-mnp",
        statusReason="Essential container in task exited",
        nodeProperties=node_properties,
        attempts=[  # a multi-node parent's attempts are its main node's
            {"container": {"reason": "Host EC2 (instance i-0abc) terminated.", "logStreamName": "train/default/a1"}},
            {"container": {"exitCode": 2, "logStreamName": "train/default/a2"}, "startedAt": 3, "stoppedAt": 9},
        ],
    )

    summary = summarize_job(job)

    assert (summary["job_kind"], summary["node_index"], summary["exit_code"]) == ("multinode", 1, 2)
    assert (summary["log_group"], summary["log_stream"]) == ("/ml/main", "train/default/a2")
    assert [a["exit_code"] for a in summary["attempts"]] == [None, 2]
    assert [a["log_stream"] for a in summary["attempts"]] == ["train/default/a1", "train/default/a2"]
    assert describe_failure(summary).splitlines()[0] == (
        f"AWS Batch job train-mnp ({job['jobId']}) FAILED: Essential container in task exited; "
        "exit code 2 (main node 1)"
    )


def test_a_node_of_a_multi_node_job_reports_itself(aws_endpoint: Endpoint) -> None:
    job = described(
        aws_endpoint,
        "SUCCEEDED",
        jobId="4c7e#2",
        nodeDetails={"nodeIndex": 2, "isMainNode": False},
        nodeProperties={"numNodes": 4, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:3"}]},
        container={"exitCode": 0, "logStreamName": "train/default/n2", "logConfiguration": awslogs("/ml/nodes")},
    )

    summary = summarize_job(job)

    assert (summary["node_index"], summary["exit_code"], summary["log_group"]) == (2, 0, "/ml/nodes")
    assert "exit code 0 (node 2)" in describe_failure(summary), "not the main node: not called one"


def test_a_multi_node_job_of_ecs_tasks_reports_the_main_nodes_essential_container(aws_endpoint: Endpoint) -> None:
    trainer = {"name": "trainer", "image": "train:3", "logConfiguration": awslogs("/ml/trainer")}
    agent = {"name": "agent", "image": "agent:1", "essential": False}
    job = described(
        aws_endpoint,
        "SUCCEEDED",
        nodeProperties={
            "numNodes": 2,
            "mainNode": 0,
            "nodeRangeProperties": [
                {"targetNodes": "0:1", "ecsProperties": {"taskProperties": [{"containers": [agent, trainer]}]}}
            ],
        },
        attempts=[
            {
                "taskProperties": [
                    {
                        "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/batch/0a1b",
                        "containers": [
                            {"name": "agent", "exitCode": 143, "logStreamName": "train/agent/0a1b"},
                            {"name": "trainer", "exitCode": 0, "logStreamName": "train/trainer/0a1b"},
                        ],
                    }
                ]
            }
        ],
    )

    summary = summarize_job(job)

    assert (summary["node_index"], summary["container_name"], summary["exit_code"]) == (0, "trainer", 0)
    assert (summary["log_group"], summary["log_stream"]) == ("/ml/trainer", "train/trainer/0a1b")


def test_an_ecs_properties_job_reports_the_essential_container_that_failed(aws_endpoint: Endpoint) -> None:
    containers = [
        {"name": "proxy", "image": "envoy:1", "essential": False, "exitCode": 1, "logStreamName": "f/proxy/9f"},
        {"name": "uploader", "image": "up:1", "exitCode": 0, "logStreamName": "f/uploader/9f"},
        {
            "name": "model",
            "image": "forecast:7",
            "exitCode": 3,
            "reason": "OutOfMemoryError: Container killed due to memory usage",
            "logStreamName": "f/model/9f",
            "logConfiguration": awslogs("/ml/models"),
        },
    ]
    job = described(
        aws_endpoint,
        "FAILED",
        jobName="model-4",
        statusReason="Essential container in task exited",
        ecsProperties={"taskProperties": [{"containers": containers}]},
        attempts=[
            {
                "taskProperties": [
                    {"containers": [{"name": c["name"], "exitCode": c["exitCode"]} for c in containers]}
                ],
                "startedAt": 1_000,
                "stoppedAt": 2_000,
            }
        ],
    )

    summary = summarize_job(job)

    assert (summary["job_kind"], summary["container_name"], summary["exit_code"]) == ("ecs", "model", 3)
    assert (summary["log_group"], summary["log_stream"]) == ("/ml/models", "f/model/9f")
    assert summary["attempts"][0]["exit_code"] == 3, "a non-essential container's exit code decides nothing"
    assert describe_failure(summary).splitlines() == [
        f"AWS Batch job model-4 ({job['jobId']}) FAILED: Essential container in task exited; "
        "exit code 3 (container model)",
        "  attempt 1: exit code 3, no reason",
        "  log: /ml/models f/model/9f",
    ]


def test_an_eks_job_reports_its_exit_code_and_pod_and_no_log_stream(aws_endpoint: Endpoint) -> None:
    cluster = "arn:aws:eks:eu-west-1:123456789012:cluster/ml"
    job = described(
        aws_endpoint,
        "FAILED",
        jobName="model-eks",
        statusReason="Essential container in task exited",
        eksProperties={
            "podProperties": {
                "podName": "aws-batch.b0aca953",
                "nodeName": "ip-192-168-55-175.ec2.internal",
                "containers": [{"name": "model", "image": "forecast:7", "exitCode": 1, "reason": "Error"}],
            }
        },
        eksAttempts=[
            {
                "containers": [{"name": "model", "exitCode": 137, "reason": "OOMKilled"}],
                "podName": "aws-batch.5e6f7a8b",
                "nodeName": "ip-192-168-12-4.ec2.internal",
                "eksClusterArn": cluster,
                "startedAt": 1_000,
                "stoppedAt": 2_000,
            },
            {
                "containers": [{"name": "model", "exitCode": 1, "reason": "Error"}],
                "podName": "aws-batch.b0aca953",
                "nodeName": "ip-192-168-55-175.ec2.internal",
                "eksClusterArn": cluster,
                "startedAt": 3_000,
                "stoppedAt": 4_000,
            },
        ],
    )

    summary = summarize_job(job)
    message = describe_failure(summary).splitlines()

    assert (summary["job_kind"], summary["container_name"], summary["exit_code"]) == ("eks", "model", 1)
    assert (summary["log_group"], summary["log_stream"]) == (None, None), "Batch records no log stream for EKS"
    assert [(a["exit_code"], a["reason"]) for a in summary["attempts"]] == [(137, "OOMKilled"), (1, "Error")]
    assert summary["pod"]["name"] == "aws-batch.b0aca953"
    assert summary["pod"]["cluster_arn"] == cluster
    assert message[-1] == (
        "  pod aws-batch.b0aca953 on node ip-192-168-55-175.ec2.internal "
        "(AWS Batch records no CloudWatch log stream for EKS jobs)"
    )


def test_an_array_parent_reports_its_size_and_children_counts(aws_endpoint: Endpoint) -> None:
    parent = aws_endpoint.batch.add_array_job(5, "PENDING", child_status="RUNNING")
    for index, status in enumerate(["SUCCEEDED", "SUCCEEDED", "FAILED"]):
        aws_endpoint.batch.set_job(f"{parent}:{index}", status=status)
    (job,) = BatchHook(aws_conn_id="aws_fake", region_name="eu-west-1").describe_jobs([parent])

    summary = summarize_job(job)

    assert summary["array_size"] == 5
    assert {k: v for k, v in summary["array_status_summary"].items() if v} == {
        "RUNNING": 2,
        "SUCCEEDED": 2,
        "FAILED": 1,
    }
    assert job_state(job) == "PENDING [5 children: 2 RUNNING, 2 SUCCEEDED, 1 FAILED]"
    assert job_state({**job, "arrayProperties": {"size": 5, "statusSummary": {}}}) == "PENDING"


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, ":9"), (4, "4:5"), (5, "4:5"), (6, ":9"), (9, ":9"), (10, "10")],  # ':9' (0-9) is narrower than '0:'
)
def test_the_narrowest_node_range_configures_a_node(index: int, expected: str) -> None:
    node_properties = {
        "numNodes": 11,
        "nodeRangeProperties": [
            {"targetNodes": "0:"},
            {"targetNodes": ":9"},
            {"targetNodes": "4:5"},
            {"targetNodes": "10"},
            {"targetNodes": "not a range"},
        ],
    }
    assert (node_range_for(node_properties, index) or {}).get("targetNodes") == expected


def test_the_job_a_request_submitted_is_found_by_name_and_every_tag() -> None:
    request = {"jobName": "forecast-7", "tags": {"airflow:run_id": "r1", "airflow:try_number": "2"}}
    ours = {"jobId": "a", "jobName": "forecast-7", "createdAt": 1, "tags": {**request["tags"], "team": "x"}}
    newer = {**ours, "jobId": "b", "createdAt": 2}
    other_try = {**ours, "jobId": "c", "createdAt": 3, "tags": {**request["tags"], "airflow:try_number": "1"}}
    other_name = {**ours, "jobId": "d", "createdAt": 4, "jobName": "forecast-8"}

    assert submitted_job([ours, other_try, other_name], request) == ours
    assert submitted_job([ours, newer, other_try], request) == newer
    assert submitted_job([other_try, other_name], request) is None


def test_a_listed_job_of_the_group_is_found_by_its_name_and_others_are_not() -> None:
    from airflow_ml_batch.jobs.batch import found_job
    from airflow_ml_batch.jobs.groups import FoundJob

    prefix = "forecast-0123456789--"
    summary = {"jobId": "j1", "jobName": f"{prefix}7-m7-t2-a3", "status": "FAILED", "createdAt": 5}

    assert found_job(prefix, summary) == FoundJob("j1", 7, 2, 3, False, 5.0, True)
    assert found_job(prefix, {**summary, "status": "RUNNABLE"}) == FoundJob("j1", 7, 2, 3, True, 5.0, False)
    assert found_job(prefix, {**summary, "jobName": "another-0123456789--7-m7-t2-a3"}) is None


def listed(job_id: str, try_number: int, status: str = "RUNNING", created: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "status": status,
        "createdAt": created,
        "tags": {"airflow:try_number": str(try_number)},
        **extra,
    }


def test_a_trigger_that_submits_waits_for_its_trys_oldest_job_and_stops_the_others() -> None:
    jobs = [listed("old-try", 1, created=1), listed("mine", 2, "SUCCEEDED", 5), listed("dup", 2, created=9)]

    assert start_choice(jobs, own_try=2, reattachable=range(1, 2)) == ("mine", ["dup", "old-try"])


def test_without_a_job_of_its_try_it_reattaches_to_the_newest_live_earlier_one_or_submits() -> None:
    jobs = [
        listed("older", 1, created=1),
        listed("newer", 2, created=5),
        listed("asked-to-stop", 2, created=9, isTerminated=True),
        listed("ended", 2, "FAILED", 7),
    ]

    assert start_choice(jobs, own_try=3, reattachable=range(1, 3)) == ("newer", ["asked-to-stop", "older"])
    assert start_choice(jobs, own_try=3, reattachable=range(1, 1)) == (None, ["asked-to-stop", "newer", "older"])
    assert start_choice([], own_try=1, reattachable=range(1, 1)) == (None, [])


def test_a_later_look_keeps_the_job_waited_for_and_stops_its_trys_other_live_ones() -> None:
    jobs = [
        listed("first", 1, created=1),
        listed("mine", 1, created=2),
        listed("gone", 1, "SUCCEEDED", 0),
        listed("next-try", 2, created=3),
    ]

    assert start_choice(jobs, own_try=1, reattachable=range(1, 1), current="mine") == ("mine", ["first"])
