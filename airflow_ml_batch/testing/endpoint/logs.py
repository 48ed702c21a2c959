"""CloudWatch Logs (JSON 1.1): GetLogEvents, from scripted streams or from what the runs printed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .core import AwsError, Call, Run, ms


class Logs:
    """Log streams: scripted ones (:attr:`streams`), then those of runs (``sources``).

    GetLogEvents answers the first or last ``limit`` events (``startFromHead``), oldest first. A scripted line
    is a message, or ``(epoch milliseconds, message)``; a message alone gets a time one millisecond after the
    line before it, the last line at the time of the call. Calls and throttled calls are counted by the
    endpoint (``calls``, ``throttled``); ``Endpoint.limit("logs", rate)`` throttles them beyond a rate.
    """

    def __init__(self, sources: list[Callable[[str], Run | None]]) -> None:
        #: ``(log group, log stream) -> lines``: messages, or ``(epoch ms, message)``
        self.streams: dict[tuple[str, str], list[str | tuple[int, str]]] = {}
        self.sources = sources

    def lines(self, group: str, stream: str) -> list[str | tuple[int, str]] | None:
        if (group, stream) in self.streams:
            return self.streams[(group, stream)]
        for source in self.sources:
            run = source(stream)
            if run is not None:
                return list(run.log_lines())
        return None

    def operations(self) -> dict[str, Callable[[Call], dict[str, Any]]]:
        return {"GetLogEvents": self.get_log_events}

    def get_log_events(self, call: Call) -> dict[str, Any]:
        lines = self.lines(call.body.get("logGroupName", ""), call.body.get("logStreamName", ""))
        if lines is None:
            raise AwsError(400, "ResourceNotFoundException", "The specified log stream does not exist.")
        limit = int(call.body.get("limit", 10000))
        if not 1 <= limit <= 10000:
            raise AwsError(400, "InvalidParameterException", f"limit must be between 1 and 10000, not {limit}")
        now = ms(time.time())
        events = []
        for index, line in enumerate(lines):
            stamp, message = line if isinstance(line, tuple) else (now - (len(lines) - 1 - index), line)
            events.append({"timestamp": stamp, "message": message, "ingestionTime": now})
        chosen = events[:limit] if call.body.get("startFromHead") else events[-limit:]
        return {"events": chosen, "nextForwardToken": "f/1", "nextBackwardToken": "b/1"}
