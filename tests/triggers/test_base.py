"""What every single-job trigger shares (triggers/base.py): its wait on the poller, cancellation, abandoned jobs."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from helpers import first_event

from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.triggers import base
from airflow_ml_batch.triggers.batch import BatchJobPoller, BatchJobTrigger
from airflow_ml_batch.triggers.poller import Observation, Watch, within


def trigger_for(job_id: str, poll_interval: float = 0.05, **kwargs: Any) -> BatchJobTrigger:
    return BatchJobTrigger(
        job_id=job_id, aws_conn_id=kwargs.pop("aws_conn_id", "aws_fake"), poll_interval=poll_interval, **kwargs
    )


async def test_cancelling_while_a_describe_is_in_flight_ends_the_trigger_and_the_poller(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    trigger = trigger_for(job)
    with aws_endpoint.lock:  # the endpoint answers nothing until released: the first describe hangs
        waiting = asyncio.ensure_future(first_event(trigger))
        await asyncio.sleep(1.0)
        waiting.cancel()
        await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), timeout=5)
        assert BatchJobPoller.of(trigger.hook, None) is None, "the last watcher's leave stops the poller"
    assert waiting.cancelled()
    assert aws_endpoint.calls["TerminateJob"] == 0, "a cancel whose task state is unknown leaves the job running"


async def test_a_poller_warning_goes_to_the_task_log_and_is_no_sign_of_a_missing_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged = mock.Mock()
    monkeypatch.setattr(base, "class_logger", lambda cls: logged)
    trigger = trigger_for("job-1", missing_grace=0.2)
    watch = Watch(BatchJobPoller, trigger.hook, None, 30.0)
    text = "DescribeJobs (batch, ...): could not describe 1 ids for 61s (Throttling: Rate exceeded)"
    watch.put(Observation(None, warning=text, resource="job-1"))

    assert await within(trigger._wait(watch), 0.6) is None, "still waiting: no missing-job clock started"
    logged.warning.assert_called_once_with("%s %s: %s", "AWS Batch job", "job-1", text)


@pytest.mark.parametrize(("setting", "frozen"), [(None, 0), ("False", 0), ("True", 1)])
async def test_the_garbage_collector_is_frozen_only_when_the_deployment_asks(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, frozen: int
) -> None:
    # gc.freeze() acts on the whole triggerer process, other providers' triggers included: opt-in
    freezes: list[None] = []
    monkeypatch.setattr(base.gc, "freeze", lambda: freezes.append(None))
    monkeypatch.setattr(base, "_prepared", False)
    if setting is None:
        monkeypatch.delenv("AIRFLOW__ML_BATCH__FREEZE_GC", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__ML_BATCH__FREEZE_GC", setting)

    await asyncio.gather(*(base.take_turn("batch") for _ in range(3)))
    await base.take_turn("batch")

    assert len(freezes) == frozen
