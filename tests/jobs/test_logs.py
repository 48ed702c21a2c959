"""What a copied job log looks like in the task log: streams, headings, times, caps and notes."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_ml_batch.jobs.logs import (
    MAX_LINE_CHARACTERS,
    LogSource,
    check_job_logs,
    copied_log,
    copies_log,
    event_line,
    log_sources,
    not_copied,
)

GROUP = "/aws/batch/job"


def test_one_run_is_copied_from_its_stream() -> None:
    result = {"log_group": GROUP, "log_stream": "f/default/a2", "attempts": [{"log_stream": "f/default/a2"}]}

    assert log_sources(result) == [LogSource("log stream f/default/a2 in /aws/batch/job", GROUP, "f/default/a2")]


def test_each_attempt_of_a_retried_job_is_copied_under_its_heading() -> None:
    result = {
        "log_group": GROUP,
        "log_stream": "f/default/a3",
        "attempts": [{"log_stream": None}, {"log_stream": "f/default/a2"}, {"log_stream": "f/default/a3"}],
    }

    assert [(s.heading, s.log_stream) for s in log_sources(result)] == [
        ("attempt 1 of 3: no log stream (its container never started)", None),
        ("attempt 2 of 3: log stream f/default/a2 in /aws/batch/job", "f/default/a2"),
        ("attempt 3 of 3: log stream f/default/a3 in /aws/batch/job", "f/default/a3"),
    ]


@pytest.mark.parametrize(
    "result",
    [
        {"log_group": None, "log_stream": None},  # EKS: no CloudWatch log
        {"log_group": GROUP, "log_stream": None},  # never started
        {},
    ],
)
def test_a_job_without_a_log_has_nothing_to_copy(result: dict[str, Any]) -> None:
    assert log_sources(result) == []


def test_an_ecs_log_is_read_in_its_own_region() -> None:
    result = {"log_group": "/ecs/model", "log_stream": "ecs/model/1", "log_region": "us-east-2"}

    (source,) = log_sources(result)

    assert source.log_region == "us-east-2"


def test_a_line_shows_its_event_time_in_utc_and_is_capped() -> None:
    long = "x" * (MAX_LINE_CHARACTERS + 345)

    assert event_line({"timestamp": 1_767_225_600_123, "message": "epoch 3\n"}) == "2026-01-01T00:00:00.123Z epoch 3"
    assert event_line({"timestamp": 0, "message": long}) == (
        f"1970-01-01T00:00:00.000Z {'x' * MAX_LINE_CHARACTERS}... (345 more characters)"
    )


def test_the_copy_keeps_order_and_says_when_earlier_lines_were_left_out() -> None:
    source = LogSource("log stream s in g", "g", "s")
    events = [{"timestamp": 1_767_225_600_000 + n, "message": f"line {n}"} for n in range(4)]  # 3 asked, 1 more read

    text = copied_log(source, events, 3, "https://console/link", "AWS Batch job abc")

    assert text.splitlines() == [
        "AWS Batch job abc: log stream s in g",
        "(earlier lines left out: the last 3 are copied here; the whole log: https://console/link)",
        "2026-01-01T00:00:00.001Z line 1",
        "2026-01-01T00:00:00.002Z line 2",
        "2026-01-01T00:00:00.003Z line 3",
    ]


def test_a_whole_log_has_no_note_and_an_empty_one_says_so() -> None:
    source = LogSource("log stream s in g", "g", "s")

    assert copied_log(source, [{"timestamp": 0, "message": "only"}], 3, None).splitlines() == [
        "log stream s in g",
        "1970-01-01T00:00:00.000Z only",
    ]
    assert copied_log(source, [], 3, None).splitlines() == ["log stream s in g", "(no log lines)"]


def test_a_log_not_read_is_one_line_with_the_reason_and_the_link() -> None:
    source = LogSource("log stream s in g", "g", "s")

    line = not_copied(source, "ThrottlingException: Rate exceeded (after 6 calls)", "https://console/link", "Job a")

    assert line == (
        "Could not copy the log (Job a: log stream s in g): ThrottlingException: Rate exceeded (after 6 calls); "
        "read it at https://console/link"
    )


@pytest.mark.parametrize(
    ("job_logs", "succeeded", "copied"),
    [
        ("never", False, False),
        ("on_failure", False, True),
        ("on_failure", True, False),
        ("always", True, True),
        ("always", False, True),
    ],
)
def test_when_a_log_is_copied(job_logs: str, succeeded: bool, copied: bool) -> None:
    assert copies_log(job_logs, succeeded) is copied


@pytest.mark.parametrize(
    ("job_logs", "job_log_lines", "error"),
    [
        ("sometimes", 200, "job_logs must be one of 'never', 'on_failure', 'always', not 'sometimes'"),
        (True, 200, "job_logs must be one of .*, not True"),
        ("always", 0, "job_log_lines must be a whole number from 1 to 9999, not 0"),
        ("always", 10_000, "job_log_lines must be a whole number from 1 to 9999, not 10000"),
        ("always", "200", "job_log_lines must be a whole number from 1 to 9999, not '200'"),
    ],
)
def test_bad_settings_are_named(job_logs: Any, job_log_lines: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_job_logs(job_logs, job_log_lines)
