"""The table of every model of a group (jobs/outcomes.py), from Batch and ECS result entries."""

from __future__ import annotations

from typing import Any

from airflow_ml_batch.jobs.outcomes import COLUMNS, model_exit_code, model_reason, model_status, outcome_table

BATCH_FAILED = {
    "model": "m1",
    "index": 1,
    "status": "FAILED",
    "status_reason": "Essential container in task exited",
    "exit_code": 2,
    "duration_seconds": 61.4,
    "succeeded": False,
    "tries": 2,
    "log_group": "/aws/batch/job",
    "log_stream": "forecast/default/abc",
}
ECS_SUCCEEDED = {
    "model": "m0",
    "index": 0,
    "outcome": "success",
    "containers": [{"name": "sidecar", "exit_code": 1}, {"name": "model", "exit_code": 0}],
    "essential_containers": ["model"],
    "duration_seconds": 5,
    "succeeded": True,
    "tries": 1,
}


def no_link(entry: Any) -> None:
    return None


def test_status_exit_code_and_reason_read_batch_and_ecs_entries_alike() -> None:
    assert [model_status(e) for e in (BATCH_FAILED, ECS_SUCCEEDED)] == ["FAILED", "SUCCEEDED"]
    assert model_status({"outcome": "container_failed"}) == "CONTAINER_FAILED"
    assert [model_exit_code(e) for e in (BATCH_FAILED, ECS_SUCCEEDED)] == [2, 0]  # the essential container's
    assert model_exit_code({"containers": [{"name": "a", "exit_code": 0}, {"name": "b", "exit_code": 137}]}) == 137
    assert model_reason(BATCH_FAILED) == "Essential container in task exited"
    assert model_reason({"succeeded": False, "message": "AWS Batch rejected job 'x':\n  queue"}) == (
        "AWS Batch rejected job 'x':"
    )
    assert model_reason(ECS_SUCCEEDED) == ""
    assert model_reason({"succeeded": True, "status_reason": "Essential container in task exited"}) == ""


def test_the_table_has_a_header_failed_models_first_and_each_log_link() -> None:
    table = outcome_table([ECS_SUCCEEDED, BATCH_FAILED], lambda e: "https://log/" + e["model"]).splitlines()

    assert table[0].split() == [word for column in COLUMNS for word in column.split()]
    assert set(table[1].replace(" ", "")) == {"-"}
    assert table[2].split() == [
        "m1",
        "FAILED",
        "1m01s",
        "2",
        "2",
        "Essential",
        "container",
        "in",
        "task",
        "exited",
        "https://log/m1",
    ]
    assert table[3].split() == ["m0", "SUCCEEDED", "5s", "1", "0", "-", "https://log/m0"]
    assert table[2].index("FAILED") == table[3].index("SUCCEEDED")  # columns line up


def test_a_long_reason_is_cut_and_a_missing_value_shows_a_dash() -> None:
    entry = {"model": "m", "index": 0, "status": "FAILED", "status_reason": "x" * 500, "succeeded": False}

    (row,) = outcome_table([entry], no_link).splitlines()[2:]

    assert row.split()[2:5] == ["-", "1", "-"]
    assert "x" * 57 + "..." in row
    assert "x" * 58 not in row
    assert row.endswith("-")
