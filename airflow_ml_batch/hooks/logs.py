"""CloudWatch Logs: the last lines of a job's log stream, for failure messages and metrics."""

from __future__ import annotations

import logging
from typing import Any

from airflow_ml_batch.hooks.base import AwsServiceHook

log = logging.getLogger(__name__)


class CloudWatchLogsHook(AwsServiceHook):
    """CloudWatch Logs through an Airflow ``aws`` connection.

    Takes the arguments of :class:`~airflow_ml_batch.hooks.base.AwsServiceHook`.
    """

    service = "logs"
    hook_name = "CloudWatch Logs (airflow-ml-batch)"

    async def tail(self, log_group: str, log_stream: str | None, lines: int = 50) -> list[str]:
        """The last ``lines`` messages of a stream, in one GetLogEvents call; ``[]`` if there are none.

        Never raises: a missing stream or a throttled call only means the failure message has no tail.
        """
        if not log_stream or lines <= 0:
            return []
        try:
            async with self.async_client() as client:
                response: dict[str, Any] = await client.get_log_events(
                    logGroupName=log_group,
                    logStreamName=log_stream,
                    limit=min(lines, 10_000),
                    startFromHead=False,
                )
        except Exception as error:
            log.warning("Could not read log stream %s %s: %s", log_group, log_stream, error)
            return []
        return [event["message"].rstrip("\n") for event in response.get("events", [])]
