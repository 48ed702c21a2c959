"""What a cancelled trigger asks Airflow: its task instance's state and try now, read in batches.

A trigger cancelled by the triggerer stops its job only if the task no longer waits for it
(:func:`~airflow_ml_batch.jobs.common.job_abandoned`); thousands cancelled together (a mapped task cleared)
read their states through :class:`TaskStateReads`, a few Airflow calls in all.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from asgiref.sync import sync_to_async

from airflow_ml_batch import _compat
from airflow_ml_batch.jobs.common import UNKNOWN_STATE

#: Task-state reads of cancelled triggers run in these threads: thousands at once finish within the
#: triggerer's ``on_kill_timeout`` instead of queueing on one thread.
STATE_READS = 32
#: Seconds a task-state read waits for the reads of other triggers of the same task, to share one call.
READ_GATHER = 0.05
_state_readers: ThreadPoolExecutor | None = None


async def task_now(task_instance: Any, logger: Any) -> _compat.TaskInstanceNow:
    """The state (and, where Airflow tells, try number) of ``task_instance`` (a trigger's) now.

    :data:`~airflow_ml_batch.jobs.common.UNKNOWN_STATE` when it cannot be read (said in ``logger``). The reads
    of triggers cancelled together are batched: one Airflow call per (DAG, run, task) at a time.
    """
    if task_instance is None:
        return _compat.TaskInstanceNow(UNKNOWN_STATE)
    try:
        return await TaskStateReads.of_loop().read(task_instance)
    except Exception:
        logger.warning("Could not read the task's state", exc_info=True)
        return _compat.TaskInstanceNow(UNKNOWN_STATE)


class TaskStateReads:
    """The task-state reads of one event loop's cancelled triggers, batched per (DAG, run, task).

    A read waits :data:`READ_GATHER` for others of the same task, then one call reads them all; reads
    asked for meanwhile go into the next call. Calls run in a pool of :data:`STATE_READS` threads
    (not the one thread ``sync_to_async`` uses by default), through ``sync_to_async`` so that Airflow 3's
    triggerer can answer from its event loop. Clearing 5000 deferred tasks of one mapped task costs a
    few reads, not 5000, and finishes well within the triggerer's ``on_kill_timeout``.
    """

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TaskStateReads]]
    _of_loop = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.calls = 0
        self._waiting: dict[tuple[str, str, str], dict[int, list[asyncio.Future[_compat.TaskInstanceNow]]]] = {}
        self._draining: set[tuple[str, str, str]] = set()
        self._drains: set[asyncio.Future[None]] = set()

    @classmethod
    def of_loop(cls) -> TaskStateReads:
        loop = asyncio.get_running_loop()
        reads = cls._of_loop.get(loop)
        if reads is None:
            reads = cls._of_loop[loop] = cls()
        return reads

    async def read(self, task_instance: Any) -> _compat.TaskInstanceNow:
        key = (str(task_instance.dag_id), str(task_instance.run_id), str(task_instance.task_id))
        map_index = -1 if task_instance.map_index is None else int(task_instance.map_index)
        answer: asyncio.Future[_compat.TaskInstanceNow] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, {}).setdefault(map_index, []).append(answer)
        if key not in self._draining:
            self._draining.add(key)
            drain = asyncio.ensure_future(self._drain(key))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await answer

    async def _drain(self, key: tuple[str, str, str]) -> None:
        global _state_readers
        if _state_readers is None:
            _state_readers = ThreadPoolExecutor(STATE_READS, thread_name_prefix="task-state")
        read = sync_to_async(_compat.task_instances_now, thread_sensitive=False, executor=_state_readers)
        try:
            await asyncio.sleep(READ_GATHER)
            while waiting := self._waiting.pop(key, None):
                found: dict[int, _compat.TaskInstanceNow] = {}
                try:
                    self.calls += 1
                    found = await read(*key, list(waiting))
                    dag_id, run_id, task_id = key
                    otherwise: BaseException = LookupError(f"no task instance {task_id} in run {run_id} of {dag_id}")
                except Exception as error:
                    otherwise = error
                self._answer(waiting, found, otherwise)
        finally:
            self._draining.discard(key)

    @staticmethod
    def _answer(
        waiting: dict[int, list[asyncio.Future[_compat.TaskInstanceNow]]],
        found: dict[int, _compat.TaskInstanceNow],
        otherwise: BaseException,
    ) -> None:
        for map_index, futures in waiting.items():
            for future in futures:
                if future.done():  # its trigger gave up waiting (on_kill_timeout)
                    continue
                if map_index in found:
                    future.set_result(found[map_index])
                else:
                    future.set_exception(otherwise)
