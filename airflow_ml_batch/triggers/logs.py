"""Reading job logs on the triggerer: one pacer of GetLogEvents calls for the whole process, and the copy.

CloudWatch Logs allows 10 to 25 GetLogEvents calls per second per account and Region, and that quota cannot be raised.
Every read of a triggerer process (a log copied into a task's log, the tail ``collect_metrics`` reads) waits for its
turn at :class:`LogReadPacer`, which releases them at an adaptive rate
(:class:`~airflow_ml_batch.jobs.pacing.AdaptiveRate`): 10 per second at first, halved when calls are throttled (once per
burst sent at the old pace), rising back to 25 after quiet spells. Reads waiting never block the event loop; a read
throttled or failed transiently is tried again first in line, :data:`~airflow_ml_batch.hooks.logs.READ_ATTEMPTS` calls
in all; a log still unread then (or after :data:`COPY_PATIENCE` seconds of waiting) leaves one warning line with the
reason and where the log is, and the task goes on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_ml_batch.hooks.logs import READ_ATTEMPTS, CloudWatchLogsHook, LogNotRead
from airflow_ml_batch.jobs.errors import backoff, error_text, is_throttling, is_transient
from airflow_ml_batch.jobs.logs import LogSource, copied_log, job_title, log_sources, not_copied
from airflow_ml_batch.jobs.pacing import AdaptiveRate
from airflow_ml_batch.links.logs import log_stream_url

log = logging.getLogger(__name__)

#: GetLogEvents calls per second of a triggerer process at first (the quota of most Regions).
INITIAL_CALLS_PER_SECOND = 10.0
#: The most GetLogEvents calls per second it rises to (the quota of the largest Regions).
MOST_CALLS_PER_SECOND = 25.0
#: Seconds without a throttled call after which the rate rises by :data:`RISE_PER_QUIET_SPELL`.
QUIET_SPELL = 5.0
#: GetLogEvents calls per second added after each :data:`QUIET_SPELL`.
RISE_PER_QUIET_SPELL = 2.5
#: Seconds a job's log copy may take in all (its turns included) before the rest is given up with a warning.
COPY_PATIENCE = 900.0


class LogReadPacer:
    """The GetLogEvents turns of one event loop (the triggerer's: its process), released at ``rate``
    (an :class:`~airflow_ml_batch.jobs.pacing.AdaptiveRate`).

    Counters: ``calls`` (turns given), ``throttled`` (calls AWS throttled), ``not_copied`` (streams given up).
    """

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LogReadPacer] = weakref.WeakKeyDictionary()

    def __init__(self, rate: AdaptiveRate | None = None) -> None:
        self.rate = rate or AdaptiveRate(
            INITIAL_CALLS_PER_SECOND, MOST_CALLS_PER_SECOND, quiet_seconds=QUIET_SPELL, step=RISE_PER_QUIET_SPELL
        )
        self.calls = 0
        self.throttled = 0
        self.not_copied = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    def of_loop(cls) -> LogReadPacer:
        """The pacer of the running event loop, made at its first use."""
        loop = asyncio.get_running_loop()
        pacer = cls._of_loop.get(loop)
        if pacer is None:
            pacer = cls._of_loop[loop] = cls()
        return pacer

    async def turn(self, *, first: bool = False) -> None:
        """Wait until this read may send its call (``first``: before every other waiting read, for a retry)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if first:
            self._waiting.appendleft(turn)
        else:
            self._waiting.append(turn)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._release())
        await turn
        self.calls += 1

    async def _release(self) -> None:
        while self._waiting:
            wait = self.rate.reserve()
            if wait > 0:
                await asyncio.sleep(wait)
            while self._waiting:
                turn = self._waiting.popleft()
                if not turn.done():  # its read gave up waiting
                    turn.set_result(None)
                    break

    async def read(self, hook: CloudWatchLogsHook, log_group: str, log_stream: str, limit: int, until: float) -> Any:
        """The last ``limit`` events of a stream, in turn; retried first in line after a throttled or transient
        failure, :data:`~airflow_ml_batch.hooks.logs.READ_ATTEMPTS` calls in all, never past ``until`` (epoch s).

        :raises LogNotRead: why the stream was not read.
        """
        # Held while waiting: the shared client stays open from one read to the next, instead of being closed
        # by each read and built again (its creation costs far more CPU than a call).
        async with hook.async_client(send_once=True):
            for attempt in range(1, READ_ATTEMPTS + 1):
                left = until - time.time()
                try:
                    await asyncio.wait_for(self.turn(first=attempt > 1), max(left, 0.0))
                except (asyncio.TimeoutError, TimeoutError):
                    waited = f"no turn to read it within {COPY_PATIENCE:.0f}s (or the task's deadline)"
                    raise LogNotRead(waited) from None
                try:
                    return await hook.async_last_events(log_group, log_stream, limit)
                except Exception as error:
                    if is_throttling(error):
                        self.throttled += 1
                        self.rate.throttled()
                    if not is_transient(error) or attempt == READ_ATTEMPTS:
                        raise LogNotRead(f"{error_text(error)} (after {attempt} calls)") from error
                    await asyncio.sleep(min(backoff(attempt, first=1.0), max(until - time.time(), 0.0)))
            raise AssertionError("unreachable")


def _hook(hook_kwargs: Mapping[str, Any], source: LogSource) -> CloudWatchLogsHook:
    """The hook reading ``source``: the job's connection, in the log's region when it has its own."""
    return CloudWatchLogsHook(**{**hook_kwargs, "region_name": source.log_region or hook_kwargs.get("region_name")})


def console_link(log_link: Mapping[str, Any] | None, source: LogSource) -> str | None:
    """The console link of ``source``, from a trigger's ``log_link`` settings (``region_name``, ``aws_domain``)."""
    if not log_link:
        return None
    return log_stream_url(
        aws_domain=log_link.get("aws_domain"),
        region_name=log_link.get("region_name"),
        log_group=source.log_group,
        log_stream=source.log_stream,
        log_region=source.log_region,
    )


async def copy_job_logs(
    logger: Any,
    hook_kwargs: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    lines: int,
    *,
    log_link: Mapping[str, Any] | None = None,
    heading: Callable[[Mapping[str, Any]], str] | None = None,
    deadline: float | None = None,
) -> int:
    """Copy the logs of the jobs' ``results`` into ``logger`` (a trigger's ``self.log``): each stream's last
    ``lines`` events under ``heading(result)`` (default: the job's id) and its attempt heading, in turn at
    the process's :class:`LogReadPacer`; how many streams were copied.

    A stream that cannot be read gives one warning line (why, and its link) and nothing else: this never
    raises and never waits past ``deadline`` (epoch seconds) nor :data:`COPY_PATIENCE` seconds from now.

    :param hook_kwargs: the arguments of the jobs' hooks (``aws_conn_id``, ``region_name``, ``verify``,
        ``config``): the log is read with the job's connection.
    :param log_link: ``region_name`` and ``aws_domain`` of the console links (a trigger's ``log_link``).
    """
    pacer = LogReadPacer.of_loop()
    until = min(time.time() + COPY_PATIENCE, deadline or float("inf"))
    copied = 0
    for result in results:
        title = heading(result) if heading else job_title(result)
        for source in log_sources(result):
            link = console_link(log_link, source)
            if not source.log_stream:
                logger.info("%s", copied_log(source, [], lines, link, title).splitlines()[0])
                continue
            try:
                events = await pacer.read(
                    _hook(hook_kwargs, source), source.log_group, source.log_stream, lines + 1, until
                )
            except LogNotRead as error:
                pacer.not_copied += 1
                logger.warning("%s", not_copied(source, str(error), link, title))
                continue
            except Exception as error:  # never fail the task for its log
                pacer.not_copied += 1
                logger.warning("%s", not_copied(source, error_text(error), link, title))
                continue
            logger.info("%s", copied_log(source, events, lines, link, title))
            copied += 1
    return copied


async def log_tail(hook_kwargs: Mapping[str, Any], result: Mapping[str, Any], lines: int) -> list[str]:
    """The last ``lines`` messages of a job's log (its current stream), in turn at the process's pacer;
    ``[]`` if it has none or it cannot be read (for ``collect_metrics``)."""
    stream, group = result.get("log_stream"), result.get("log_group")
    if not stream or not group or lines <= 0:
        return []
    source = LogSource("", str(group), str(stream), result.get("log_region"))
    pacer = LogReadPacer.of_loop()
    try:
        events = await pacer.read(
            _hook(hook_kwargs, source), source.log_group, str(stream), lines, time.time() + COPY_PATIENCE
        )
    except Exception as error:
        log.warning("Could not read log stream %s %s: %s", source.log_group, stream, error)
        return []
    return [str(event["message"]).rstrip("\n") for event in events]
