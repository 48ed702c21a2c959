"""CloudWatch Logs: the last events of a job's log stream, to copy into the task log and to read metrics from.

GetLogEvents has a quota of 10 to 25 calls per second per account and Region, which cannot be raised. Each
read here is one call sent once (botocore's retries off): the caller paces the calls and retries a
throttled one itself, so that it slows down for every read rather than each read retrying on its own.
:meth:`CloudWatchLogsHook.read_last_events` does so on a worker; a triggerer's reads go through
:mod:`airflow_ml_batch.triggers.logs`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from airflow_ml_batch.hooks.base import AwsServiceHook
from airflow_ml_batch.jobs.errors import backoff, error_text, is_throttling, is_transient
from airflow_ml_batch.jobs.pacing import AdaptiveRate

log = logging.getLogger(__name__)

#: GetLogEvents calls a read gets before it gives up (throttled or failed transiently each time).
READ_ATTEMPTS = 6
#: GetLogEvents calls per second of one worker process: a group's worker copying 100 logs stays below
#: this, leaving the account's quota (10 to 25 per second) to the others; halved on throttling.
WORKER_CALLS_PER_SECOND = 5.0

_worker_rate = AdaptiveRate(WORKER_CALLS_PER_SECOND, WORKER_CALLS_PER_SECOND)
_worker_lock = threading.Lock()


class LogNotRead(Exception):
    """A log stream could not be read (after the retries a throttled or transient failure gets): why."""


def _request(log_group: str, log_stream: str, limit: int) -> dict[str, Any]:
    return {"logGroupName": log_group, "logStreamName": log_stream, "limit": limit, "startFromHead": False}


def _events(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"timestamp": e.get("timestamp"), "message": e.get("message", "")} for e in response.get("events", [])]


class CloudWatchLogsHook(AwsServiceHook):
    """CloudWatch Logs through an Airflow ``aws`` connection.

    Takes the arguments of :class:`~airflow_ml_batch.hooks.base.AwsServiceHook`.
    """

    service = "logs"
    hook_name = "CloudWatch Logs (airflow-ml-batch)"

    def last_events(self, log_group: str, log_stream: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` events of a stream, oldest first, each ``{"timestamp": epoch ms, "message"}``:
        one GetLogEvents call, sent once. Raises what the call raised."""
        return _events(self.send_once_conn.get_log_events(**_request(log_group, log_stream, limit)))

    async def async_last_events(self, log_group: str, log_stream: str, limit: int) -> list[dict[str, Any]]:
        """:meth:`last_events` with the shared async client, for a triggerer."""
        async with self.async_client(send_once=True) as client:
            return _events(await client.get_log_events(**_request(log_group, log_stream, limit)))

    def read_last_events(self, log_group: str, log_stream: str, limit: int) -> list[dict[str, Any]]:
        """:meth:`last_events`, paced at :data:`WORKER_CALLS_PER_SECOND` for the worker process (halved on
        throttling) and tried again after a throttled or transient failure, :data:`READ_ATTEMPTS` calls in all.

        :raises LogNotRead: the stream could not be read; why.
        """
        for attempt in range(1, READ_ATTEMPTS + 1):
            with _worker_lock:
                wait = _worker_rate.reserve()
            time.sleep(wait)
            try:
                return self.last_events(log_group, log_stream, limit)
            except Exception as error:
                if is_throttling(error):
                    with _worker_lock:
                        _worker_rate.throttled()
                if not is_transient(error) or attempt == READ_ATTEMPTS:
                    raise LogNotRead(f"{error_text(error)} (after {attempt} calls)") from error
                time.sleep(backoff(attempt, first=1.0))
        raise AssertionError("unreachable")
