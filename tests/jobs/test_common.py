"""The pure functions of :mod:`airflow_ml_batch.jobs.common`: the metrics a job logs."""

from __future__ import annotations

import pytest

from airflow_ml_batch.jobs.common import job_abandoned, metrics_from_log


def test_the_metrics_are_the_last_json_line_with_a_metrics_mapping() -> None:
    lines = [
        '{"metrics": {"mape": 0.5}}',
        "training",
        '  {"metrics": {"mape": 0.25, "rows": 36}}  ',
        '{"metrics": "not a mapping"}',
        '["metrics"]',
        '{"metrics": {"mape": 0.1}',  # cut off: not JSON
        "done",
    ]

    assert metrics_from_log(lines) == {"mape": 0.25, "rows": 36}
    assert metrics_from_log(["training", "done"]) is None
    assert metrics_from_log([]) is None


@pytest.mark.parametrize(
    ("state", "abandoned"),
    [("deferred", False), ("<unknown>", False), (None, True), ("scheduled", True), ("success", True), ("failed", True)],
)
def test_which_task_states_leave_a_cancelled_triggers_job_to_nobody(state: str | None, abandoned: bool) -> None:
    assert job_abandoned(state) is abandoned
    assert job_abandoned(state, try_number=2, own_try=2) is abandoned, "the same try: the state decides"


@pytest.mark.parametrize(
    ("state", "try_number", "own_try", "abandoned"),
    [
        ("deferred", 3, 2, True),  # the next try deferred again before the cancelled trigger read the state
        ("running", 3, 2, True),
        ("deferred", None, 2, False),  # Airflow 3's triggerer reads no try number: the state decides
        ("deferred", 3, None, False),
        ("<unknown>", 3, 2, False),  # a doubt never terminates
    ],
)
def test_a_task_on_another_try_than_the_jobs_abandons_it_whatever_its_state(
    state: str, try_number: int | None, own_try: int | None, abandoned: bool
) -> None:
    assert job_abandoned(state, try_number, own_try) is abandoned
