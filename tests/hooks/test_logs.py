"""CloudWatchLogsHook: the last events of a stream, against moto (AWS's answers) and the scripted endpoint
(throttling)."""

from __future__ import annotations

import time

import pytest

from airflow_ml_batch.hooks import logs as logs_module
from airflow_ml_batch.hooks.logs import CloudWatchLogsHook, LogNotRead
from airflow_ml_batch.jobs.pacing import AdaptiveRate
from airflow_ml_batch.testing.endpoint import Endpoint

GROUP, STREAM = "/aws/batch/job", "forecast/default/abc"


@pytest.fixture(autouse=True)
def _own_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test paces its reads afresh: a throttled test slows nobody else's."""
    rate = logs_module.WORKER_CALLS_PER_SECOND
    monkeypatch.setattr(logs_module, "_worker_rate", AdaptiveRate(rate, rate))


@pytest.fixture
def stream(aws_conn_id: str) -> list[int]:
    """A log stream of 30 events on moto; their timestamps."""
    client = CloudWatchLogsHook(aws_conn_id=aws_conn_id).conn
    client.create_log_group(logGroupName=GROUP)
    client.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    start = int(time.time() * 1000) - 60_000
    stamps = [start + n for n in range(30)]
    events = [{"timestamp": stamp, "message": f"line {n}"} for n, stamp in enumerate(stamps)]
    client.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=events)
    return stamps


def test_the_last_events_oldest_first_with_their_times(aws_conn_id: str, stream: list[int]) -> None:
    events = CloudWatchLogsHook(aws_conn_id=aws_conn_id).last_events(GROUP, STREAM, 3)

    assert events == [{"timestamp": stream[n], "message": f"line {n}"} for n in (27, 28, 29)]


async def test_the_async_read_gives_the_same(aws_conn_id: str, stream: list[int]) -> None:
    hook = CloudWatchLogsHook(aws_conn_id=aws_conn_id)

    assert await hook.async_last_events(GROUP, STREAM, 5) == hook.last_events(GROUP, STREAM, 5)


def test_a_missing_stream_is_not_read_and_says_why(aws_conn_id: str, stream: list[int]) -> None:
    with pytest.raises(LogNotRead, match=r"ResourceNotFoundException: .* \(after 1 calls\)"):
        CloudWatchLogsHook(aws_conn_id=aws_conn_id).read_last_events(GROUP, "no/such/stream", 5)


def test_a_throttled_read_is_tried_again(aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_module, "backoff", lambda attempt, first: 0.01)
    aws_endpoint.logs.streams[(GROUP, STREAM)] = ["done"]
    aws_endpoint.fail_next("GetLogEvents", times=2, status=400, code="ThrottlingException")

    events = CloudWatchLogsHook(aws_conn_id="aws_fake").read_last_events(GROUP, STREAM, 5)

    assert [event["message"] for event in events] == ["done"]
    assert aws_endpoint.calls["GetLogEvents"] == 3


def test_a_read_throttled_every_time_gives_up_after_its_attempts(
    aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs_module, "backoff", lambda attempt, first: 0.01)
    aws_endpoint.logs.streams[(GROUP, STREAM)] = ["done"]
    aws_endpoint.fail_next("GetLogEvents", times=100, status=400, code="ThrottlingException")

    with pytest.raises(LogNotRead, match=r"ThrottlingException: .* \(after 6 calls\)"):
        CloudWatchLogsHook(aws_conn_id="aws_fake").read_last_events(GROUP, STREAM, 5)
    assert aws_endpoint.calls["GetLogEvents"] == logs_module.READ_ATTEMPTS
    assert logs_module._worker_rate.rate == logs_module._worker_rate.floor, "each throttle halved the pace"
