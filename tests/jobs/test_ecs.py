"""The pure functions of :mod:`airflow_ml_batch.jobs.ecs` that build RunTask requests and read stopped tasks."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import pytest

from airflow_ml_batch.jobs.ecs import (
    classify_stopped_task,
    client_token_for,
    describe_task_failure,
    failures_text,
    listed_task,
    log_location,
    no_capacity,
    run_task_request,
    start_choice,
    summarize_task,
)
from airflow_ml_batch.operators.ecs import EcsTaskOperator

TASK = {"taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/models/abc123"}


def awslogs(group: str, region: str | None = None) -> dict[str, Any]:
    options = {"awslogs-group": group, "awslogs-stream-prefix": "ecs"}
    if region:
        options["awslogs-region"] = region
    return {"logDriver": "awslogs", "options": options}


@pytest.mark.parametrize(
    ("stop_code", "exit_code", "outcome"),
    [
        ("UserInitiated", 143, "stopped"),  # StopTask: SIGTERM, the container exits
        ("UserInitiated", 137, "stopped"),  # StopTask: SIGKILL 30 seconds later
        ("UserInitiated", 0, "stopped"),
        ("ServiceSchedulerInitiated", 143, "stopped"),
        ("InfrastructureHealth", 137, "stopped"),
        ("SpotInterruption", 143, "spot_interruption"),
        ("TerminationNotice", 143, "spot_interruption"),
        ("TaskFailedToStart", None, "failed_to_start"),
        ("EssentialContainerExited", 137, "container_failed"),
        ("EssentialContainerExited", 0, "success"),
        (None, 0, "success"),
    ],
)
def test_every_stop_code_is_classified(stop_code: str | None, exit_code: int | None, outcome: str) -> None:
    task = {**TASK, "stopCode": stop_code, "containers": [{"name": "model", "exitCode": exit_code}]}

    assert classify_stopped_task(task, {"model"}) == outcome


def test_a_stop_by_a_user_says_so_with_the_reason() -> None:
    task = {
        **TASK,
        "stopCode": "UserInitiated",
        "stoppedReason": "Task stopped by user",
        "containers": [{"name": "model", "exitCode": 137}],
    }

    summary = summarize_task(task, classify_stopped_task(task, {"model"}), None, None)

    assert describe_task_failure(summary).splitlines()[0] == (
        f"ECS task {TASK['taskArn']} was stopped by a user (StopTask): Task stopped by user (stop code UserInitiated)"
    )


def test_the_log_is_the_essential_containers_not_the_first_listed() -> None:
    definition = {
        "containerDefinitions": [
            {"name": "log-router", "essential": False, "logConfiguration": awslogs("/ecs/router")},
            {"name": "model", "logConfiguration": awslogs("/ecs/forecast", "us-east-2")},  # essential by default
        ]
    }

    assert log_location(TASK, definition) == ("/ecs/forecast", "ecs/model/abc123", "us-east-2")
    assert log_location(TASK, definition, "log-router") == ("/ecs/router", "ecs/log-router/abc123", None)
    assert log_location(TASK, definition, "no-such-container") == (None, None, None)
    assert log_location(TASK, None) == (None, None, None)


@pytest.mark.parametrize(
    ("propagate_tags", "expected"), [("TASK_DEFINITION", "TASK_DEFINITION"), ("NONE", "NONE"), (None, "omitted")]
)
def test_propagate_tags_is_passed_or_omitted(propagate_tags: str | None, expected: str) -> None:
    values = {"cluster": "models", "task_definition": "forecast", "propagate_tags": propagate_tags}
    request = run_task_request(EcsTaskOperator.request_fields, values, started_by="a", client_token="b", tags={})

    assert request.get("propagateTags", "omitted") == expected


@pytest.mark.parametrize(
    ("reasons", "capacity"),
    [
        (["RESOURCE:MEMORY"], True),
        (["AGENT"], True),
        (["Capacity is unavailable at this time. Please try again later or in a different availability zone"], True),
        (["RESOURCE:CPU", "RESOURCE:MEMORY"], True),
        # a configuration to fix, however often it is tried: never "capacity" by a word in it
        (["No Container Instances were found in your capacity provider"], False),
        (["ATTRIBUTE"], False),
        (["RESOURCE:CPU", "ATTRIBUTE"], False),
        ([], False),
    ],
)
def test_only_documented_capacity_failures_are_tried_again(reasons: list[str], capacity: bool) -> None:
    assert no_capacity([{"arn": "arn:instance", "reason": reason} for reason in reasons]) is capacity


def test_failures_read_as_arn_reason_and_detail() -> None:
    failures = [{"arn": "arn:instance", "reason": "ATTRIBUTE", "detail": "arm64"}, {"reason": "AGENT"}]

    assert failures_text(failures) == "arn:instance ATTRIBUTE arm64; AGENT"


def test_a_new_placement_gets_a_token_of_its_own_and_the_first_keeps_the_earlier_releases_token() -> None:
    first = client_token_for("airflow-abc", 2)

    assert first == client_token_for("airflow-abc", 2, placement=1)
    assert len({first, client_token_for("airflow-abc", 2, placement=2), client_token_for("airflow-abc", 3)}) == 3
    assert len(first) == 64
    # what releases before placements sent for the first placement of a group's model
    assert client_token_for("prefix--", 4, 1, 2) == hashlib.sha256(b"prefix--\n4\n1\n2").hexdigest()


def test_a_described_task_of_the_group_is_found_by_its_tags_and_others_are_not() -> None:
    from airflow_ml_batch.jobs.ecs import found_task
    from airflow_ml_batch.jobs.groups import FoundJob

    numbers = (("model_index", "4"), ("try_number", "1"), ("attempt", "2"))
    tags = [{"key": f"airflow:{key}", "value": value} for key, value in numbers]
    task = {"taskArn": "arn:t", "desiredStatus": "RUNNING", "tags": tags}

    assert found_task(task) == FoundJob("arn:t", 4, 1, 2, True)
    assert found_task({**task, "desiredStatus": "STOPPED"}) == FoundJob("arn:t", 4, 1, 2, False)
    assert found_task({**task, "tags": tags[:2]}) is None


def listed(
    arn: str, try_number: int, last: str = "RUNNING", desired: str = "RUNNING", created: int = 0
) -> dict[str, Any]:
    """A task of a task instance as DescribeTasks (with tags) gives it, read by ``listed_task``."""
    return listed_task(
        {
            "taskArn": arn,
            "lastStatus": last,
            "desiredStatus": desired,
            "createdAt": datetime.datetime.fromtimestamp(created, datetime.timezone.utc),
            "tags": [{"key": "airflow:try_number", "value": str(try_number)}],
        }
    )


def test_a_listed_task_reads_as_the_shared_choice_reads_a_job() -> None:
    task = listed("arn:t", 2, created=5)

    assert task == {
        "jobId": "arn:t",
        "createdAt": 5.0,
        "tags": {"airflow:try_number": "2"},
        "lastStatus": "RUNNING",
        "desiredStatus": "RUNNING",
    }


def test_a_trigger_that_runs_its_task_reattaches_to_none_asked_to_stop_and_stops_every_other_live_one() -> None:
    tasks = [
        listed("older", 1, created=1),
        listed("newer", 2, created=5),
        listed("asked-to-stop", 2, desired="STOPPED", created=9),
        listed("ended", 2, "STOPPED", "STOPPED", created=7),
    ]

    assert start_choice(tasks, own_try=3, reattachable=range(1, 3)) == ("newer", ["asked-to-stop", "older"])
    assert start_choice(tasks, own_try=3, reattachable=range(1, 1)) == (None, ["asked-to-stop", "newer", "older"])
    assert start_choice(tasks, own_try=2, reattachable=range(1, 2)) == ("newer", ["asked-to-stop", "older"])
