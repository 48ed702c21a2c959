"""Job logs copied on the triggerer: one pacer of GetLogEvents for the process, throttling absorbed, a log that
cannot be read reduced to one warning line; against the scripted endpoint."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent
from helpers import first_event

from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.triggers import logs as logs_module
from airflow_ml_batch.triggers.batch import BatchJobTrigger
from airflow_ml_batch.triggers.logs import LogReadPacer, copy_job_logs

GROUP = "/aws/batch/job"
HOOK = {"aws_conn_id": "aws_fake", "region_name": "eu-west-1"}
LINK = {"region_name": "eu-west-1", "aws_domain": "aws.amazon.com"}
logger = logging.getLogger("tests.triggers.job_logs")


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_module, "backoff", lambda attempt, first: 0.05)


def results(endpoint: Endpoint, count: int) -> list[dict[str, Any]]:
    """``count`` job results, each with a log stream of three lines on the endpoint."""
    made = []
    for n in range(count):
        endpoint.logs.streams[(GROUP, f"f/default/{n}")] = [f"job {n} line {i}" for i in range(3)]
        made.append({"job_id": f"job-{n}", "log_group": GROUP, "log_stream": f"f/default/{n}"})
    return made


async def test_throttled_reads_slow_the_pacer_and_every_log_is_copied(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    aws_endpoint.limit("logs", rate=6, burst=3)  # below the pacer's first rate: it is throttled, and slows down

    copied = await copy_job_logs(logger, HOOK, results(aws_endpoint, 40), 2)

    pacer = LogReadPacer.of_loop()
    assert copied == 40
    assert pacer.not_copied == 0
    assert aws_endpoint.throttled["GetLogEvents"] > 0
    assert pacer.throttled == aws_endpoint.throttled["GetLogEvents"]
    assert pacer.rate.rate < logs_module.INITIAL_CALLS_PER_SECOND
    assert aws_endpoint.calls["GetLogEvents"] == 40
    for n in range(40):
        assert f"Job job-{n}: log stream f/default/{n} in {GROUP}" in caplog.text
        assert f"job {n} line 2" in caplog.text
    assert "job 0 line 0" not in caplog.text, "only the last 2 lines"
    assert caplog.text.count("earlier lines left out: the last 2 are copied here") == 40
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING and record.name == logger.name]


async def test_a_log_that_cannot_be_read_is_one_warning_with_the_reason_and_the_link(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    result = {"job_id": "job-1", "log_group": GROUP, "log_stream": "f/default/gone"}

    copied = await copy_job_logs(logger, HOOK, [result], 200, log_link=LINK)

    assert copied == 0
    (record,) = [record for record in caplog.records if record.name == logger.name]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"Could not copy the log (Job job-1: log stream f/default/gone in {GROUP}): ResourceNotFoundException: "
        "The specified log stream does not exist. (after 1 calls); read it at https://console.aws.amazon.com/"
        "cloudwatch/home?region=eu-west-1#logsV2:log-groups/log-group/%2Faws%2Fbatch%2Fjob/log-events/"
        "f%2Fdefault%2Fgone"
    )


async def test_reads_throttled_beyond_their_attempts_or_their_deadline_give_up_with_a_warning(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    made = results(aws_endpoint, 2)
    aws_endpoint.fail_next("GetLogEvents", times=1000, status=400, code="ThrottlingException")

    copied = await copy_job_logs(logger, HOOK, made, 200, deadline=time.time() + 1.0)

    assert copied == 0
    assert LogReadPacer.of_loop().not_copied == 2
    warnings = [record.getMessage() for record in caplog.records if record.name == logger.name]
    assert len(warnings) == 2
    assert all(w.startswith("Could not copy the log (Job job-") for w in warnings)
    assert all("ThrottlingException" in w or "no turn to read it" in w for w in warnings)


def batch_trigger(job_id: str, **kwargs: Any) -> BatchJobTrigger:
    return BatchJobTrigger(job_id=job_id, aws_conn_id="aws_fake", poll_interval=0.05, end_from_trigger=True, **kwargs)


async def test_a_success_ended_on_the_triggerer_copies_each_attempts_log_despite_throttling(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    aws_endpoint.logs.streams[(GROUP, "f/default/a1")] = [(1_767_225_600_000, "attempt one: Killed")]
    aws_endpoint.logs.streams[(GROUP, "f/default/a2")] = [(1_767_225_660_000, "attempt two: done")]
    job = aws_endpoint.batch.add_job(
        "SUCCEEDED",
        container={"exitCode": 0, "logStreamName": "f/default/a2"},
        attempts=[
            {"container": {"exitCode": 137, "logStreamName": "f/default/a1"}},
            {"container": {"exitCode": 0, "logStreamName": "f/default/a2"}},
        ],
    )
    aws_endpoint.fail_next("GetLogEvents", times=2, status=400, code="ThrottlingException")

    event = await first_event(batch_trigger(job, job_logs="always"))

    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms is not None
    assert [a["log_stream"] for a in event.xcoms["return_value"]["attempts"]] == ["f/default/a1", "f/default/a2"]
    assert "Killed" not in repr(event.xcoms), "results carry stream names, no line"
    # Airflow 2 logs through the standard library, Airflow 3 through structlog to stdout.
    logged = caplog.text + capsys.readouterr().out
    first = logged.index(f"AWS Batch job {job}: attempt 1 of 2: log stream f/default/a1 in {GROUP}")
    second = logged.index(f"AWS Batch job {job}: attempt 2 of 2: log stream f/default/a2 in {GROUP}")
    assert first < logged.index("2026-01-01T00:00:00.000Z attempt one: Killed") < second
    assert second < logged.index("2026-01-01T00:01:00.000Z attempt two: done")
    assert aws_endpoint.calls["GetLogEvents"] == 4  # two throttled, then one per attempt


@pytest.mark.parametrize("job_logs", ["on_failure", "never"])
async def test_a_success_reads_no_log_unless_always(aws_endpoint: Endpoint, job_logs: str) -> None:
    aws_endpoint.logs.streams[(GROUP, "f/default/a2")] = ["done"]
    job = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0, "logStreamName": "f/default/a2"})

    event = await first_event(batch_trigger(job, job_logs=job_logs))

    assert isinstance(event, TaskSuccessEvent)
    assert aws_endpoint.calls["GetLogEvents"] == 0


async def test_collect_metrics_reads_through_the_pacer(aws_endpoint: Endpoint) -> None:
    aws_endpoint.logs.streams[(GROUP, "f/default/m")] = ['{"metrics": {"mape": 0.1}}']
    job = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0, "logStreamName": "f/default/m"})
    aws_endpoint.fail_next("GetLogEvents", times=1, status=400, code="ThrottlingException")

    event = await first_event(batch_trigger(job, collect_metrics=True))

    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms is not None
    assert event.xcoms["return_value"]["metrics"] == {"mape": 0.1}
    assert LogReadPacer.of_loop().throttled == 1
