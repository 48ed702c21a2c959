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


def test_names_of_a_task_instance_stay_what_earlier_releases_gave_so_retries_find_their_jobs() -> None:
    from airflow_ml_batch.jobs.batch import job_name_for
    from airflow_ml_batch.jobs.ecs import started_by_for
    from airflow_ml_batch.jobs.groups import group_key

    # the values 0.4.0 gave: a retry after an upgrade lists the jobs of the try before it by these
    assert job_name_for("d", "t", "r", 3) == "d-t-3-27d3fab2cc"
    assert group_key("d", "t", "r", 3) == "27d3fab2cc"
    assert started_by_for("d", "t", "r", 3) == "airflow-62f2c735a0e40f238b858d193ac7d88d4b79ee4d"
