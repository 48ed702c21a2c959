"""Airflow 2/3 differences, in one place. Features are detected, never inferred from a version number."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from airflow.triggers.base import BaseTrigger
from packaging.version import Version

AIRFLOW_VERSION = Version(Version(version("apache-airflow")).base_version)
AIRFLOW_V_3_0_PLUS = Version("3.0.0") <= AIRFLOW_VERSION

try:  # Airflow 3: the Task SDK
    from airflow.sdk import BaseOperator, BaseOperatorLink, Context
except ImportError:  # Airflow 2
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef]
    from airflow.models.baseoperatorlink import BaseOperatorLink  # type: ignore[no-redef]
    from airflow.utils.context import Context  # type: ignore[no-redef,attr-defined]

try:  # Airflow 3.1+ (airflow.exceptions warns on it from 3.3)
    from airflow.sdk.exceptions import AirflowTaskTimeout
except ImportError:  # Airflow 2 to 3.0
    from airflow.exceptions import AirflowTaskTimeout  # type: ignore[no-redef,attr-defined]

#: ``BaseTrigger.on_kill()`` (Airflow 3.3+): the triggerer calls it when a user clears or marks a
#: deferred task, and never on a triggerer restart. Older versions need the task state checked.
TRIGGER_HAS_ON_KILL = "on_kill" in vars(BaseTrigger)


def listeners_registered() -> list[str]:
    """The listeners plugins registered in this process (OpenLineage's, Airflow's example one, yours).

    Airflow runs no listener for a task that a trigger ends, and refuses ``end_from_trigger=True`` at
    parse time while any is registered.
    """
    try:  # Airflow 3.1+: the Task SDK's manager, the one a task run notifies
        from airflow.sdk.listener import get_listener_manager
    except ImportError:  # Airflow 2 to 3.0
        from airflow.listeners.listener import get_listener_manager  # type: ignore[no-redef,assignment]

    manager = get_listener_manager()
    if not manager.has_listeners:
        return []
    plugins = manager.pm.get_plugins()
    return sorted(getattr(plugin, "__name__", type(plugin).__name__) for plugin in plugins)


@dataclass(frozen=True)
class TaskInstanceNow:
    """What Airflow says of a task instance now: its state, and its try number where this Airflow tells.

    ``state`` ``None``: cleared, its next try not scheduled yet. ``try_number`` ``None``: this Airflow's
    triggerer cannot read it (Airflow 3: the Task SDK's ``GetTaskStates``, the only task-instance read of
    the triggerer's supervisor that is keyed by run, returns states only).
    """

    state: str | None
    try_number: int | None = None


def task_instances_now(
    dag_id: str, run_id: str, task_id: str, map_indexes: Collection[int]
) -> dict[int, TaskInstanceNow]:
    """The state (and try number, on Airflow 2) of task instances of one task in one run, in one read.

    Blocking: call it in a thread. ``map_indexes`` are ``-1`` for an unmapped task; a task instance that
    Airflow does not have (its run was deleted, say) is left out of the answer.
    """
    wanted = sorted(set(map_indexes))
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(
            dag_id=dag_id,
            task_ids=[task_id],
            run_ids=[run_id],
            map_index=wanted[0] if len(wanted) == 1 else None,  # None: every map index of the task
        )
        of_run = states.get(run_id, {})
        found: dict[int, TaskInstanceNow] = {}
        for map_index in wanted:
            # A mapped task instance's state is keyed "<task_id>_<map_index>".
            key = f"{task_id}_{map_index}" if map_index >= 0 else task_id
            if key in of_run:
                found[map_index] = TaskInstanceNow(_state_text(of_run[key]))
        return found
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance.map_index, TaskInstance.state, TaskInstance.try_number)
            .filter(
                TaskInstance.dag_id == dag_id,
                TaskInstance.task_id == task_id,
                TaskInstance.run_id == run_id,
                TaskInstance.map_index.in_(wanted),
            )
            .all()
        )
    return {int(map_index): TaskInstanceNow(_state_text(state), int(tries)) for map_index, state, tries in rows}


def task_instance_now(task_instance: Any) -> TaskInstanceNow:
    """:func:`task_instances_now` of one task instance (blocking: call it in a thread).

    :raises LookupError: Airflow has no such task instance (its run was deleted, say).
    """
    map_index = -1 if task_instance.map_index is None else int(task_instance.map_index)
    found = task_instances_now(task_instance.dag_id, task_instance.run_id, task_instance.task_id, [map_index])
    if map_index not in found:
        raise LookupError(
            f"no task instance {task_instance.task_id} (map index {map_index}) in run {task_instance.run_id} "
            f"of {task_instance.dag_id}"
        )
    return found[map_index]


def task_instance_state(task_instance: Any) -> str | None:
    """The current state of a trigger's task instance, read from Airflow (blocking: call in a thread).

    ``None`` is a task instance without a state: cleared, its next try not scheduled yet.

    :raises LookupError: Airflow has no such task instance (its run was deleted, say).
    """
    return task_instance_now(task_instance).state


def _state_text(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def tries_since_last_clear(try_number: int, max_tries: int, retries: int) -> range:
    """The earlier tries of a task instance that no user cleared since: their jobs may be re-attached to.

    Airflow (2.10 through 3.3) counts ``try_number`` up when it schedules a try, and a clear sets
    ``max_tries`` to ``try_number + retries`` of the cleared try, while a retry leaves ``max_tries`` as it
    is. So the first try after the last clear is ``max_tries - retries + 1`` (Airflow's own
    ``get_first_reschedule_date`` counts so), and 1 if the task was never cleared. A task cleared while
    RUNNING (not deferred) is retried without ``max_tries`` changing, so its try counts as a retry.
    """
    return range(max(1, max_tries - retries + 1), try_number)


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_0_PLUS",
    "TRIGGER_HAS_ON_KILL",
    "AirflowTaskTimeout",
    "BaseOperator",
    "BaseOperatorLink",
    "Context",
    "TaskInstanceNow",
    "listeners_registered",
    "task_instance_now",
    "task_instance_state",
    "task_instances_now",
    "tries_since_last_clear",
]
