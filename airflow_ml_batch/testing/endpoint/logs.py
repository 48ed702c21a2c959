"""CloudWatch Logs (JSON 1.1): GetLogEvents, from scripted streams or from what the runs printed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .core import AwsError, Call, Run, ms


class Logs:
    """Log streams: scripted ones (:attr:`streams`), then those of runs (``sources``)."""

    def __init__(self, sources: list[Callable[[str], Run | None]]) -> None:
        #: ``(log group, log stream) -> lines``
        self.streams: dict[tuple[str, str], list[str]] = {}
        self.sources = sources

    def lines(self, group: str, stream: str) -> list[str] | None:
        if (group, stream) in self.streams:
            return self.streams[(group, stream)]
        for source in self.sources:
            run = source(stream)
            if run is not None:
                return run.log_lines()
        return None

    def operations(self) -> dict[str, Callable[[Call], dict[str, Any]]]:
        return {"GetLogEvents": self.get_log_events}

    def get_log_events(self, call: Call) -> dict[str, Any]:
        lines = self.lines(call.body.get("logGroupName", ""), call.body.get("logStreamName", ""))
        if lines is None:
            raise AwsError(400, "ResourceNotFoundException", "The specified log stream does not exist.")
        stamp = ms(time.time())
        tail = lines[-int(call.body.get("limit", 10000)) :]
        events = [{"timestamp": stamp, "message": line, "ingestionTime": stamp} for line in tail]
        return {"events": events, "nextForwardToken": "f/1", "nextBackwardToken": "b/1"}
