"""Helpers the tests share: the test region and connections to the moto server."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

from airflow_ml_batch.testing import DEFAULT_REGION as REGION
from airflow_ml_batch.testing import aws_connection_json

CONN_ID = "aws_moto"

__all__ = [
    "CONN_ID",
    "REGION",
    "aws_connection_uri",
    "execute_error",
    "expected_tags",
    "first_event",
    "run_dag",
    "run_dag_file",
    "task_instance",
    "xcom",
]


def aws_connection_uri(endpoint_url: str, **extra: Any) -> str:
    """The test connection: everything at ``endpoint_url``, and no botocore retries.

    A test sees moto's first answer: retries would only hide errors and slow the suite.
    """
    extra.setdefault("config_kwargs", {"retries": {"mode": "standard", "total_max_attempts": 1}})
    return aws_connection_json(endpoint_url, **extra)


def run_dag(tasks: str, imports: str = "") -> Any:
    """Write a DAG file whose body is ``tasks`` (Python source) into the DAGs folder, and ``dag.test()`` it.

    Airflow 3 tests DAGs the way it runs them: from a file of a DAG bundle.
    """
    dag_id = f"test_{uuid.uuid4().hex[:10]}"
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id}.py"
    path.write_text(
        "import datetime\n"
        "from airflow import DAG\n"
        "from airflow_ml_batch.operators.batch import BatchFleetOperator, BatchJobOperator\n"
        "from airflow_ml_batch.operators.ecs import EcsTaskOperator\n"
        f"{imports}"
        f"with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:\n"
        + textwrap.indent(textwrap.dedent(tasks), "    ")
    )
    try:
        return run_dag_file(path, "dag")
    finally:
        path.unlink()


def run_dag_file(path: Path, name: str, overrides: dict[str, Any] | None = None, **test_kwargs: Any) -> Any:
    """Import the DAG file at ``path`` (in the DAGs folder) and ``dag.test(**test_kwargs)`` its DAG ``name``.

    ``overrides`` sets operator arguments on every task that has them, e.g. ``retries`` (``dag.test()``
    would wait out each retry delay).
    """
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = getattr(module, name)
    for task in dag.tasks:
        for argument, value in (overrides or {}).items():
            if hasattr(task, "partial_kwargs"):  # a mapped task
                task.partial_kwargs[argument] = value
            elif hasattr(task, argument):
                setattr(task, argument, value)
    return dag.test(**test_kwargs)


def task_instance(dag_run: Any, task_id: str) -> Any:
    (ti,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == task_id]
    return ti


def xcom(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    """An XCom value as stored in the metadata database."""
    from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS

    if not AIRFLOW_V_3_0_PLUS:
        from airflow.models.xcom import XCom

        return XCom.get_one(run_id=dag_run.run_id, dag_id=dag_run.dag_id, task_id=task_id, key=key)

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def execute_error(operator: str, arguments: dict[str, Any]) -> str:
    """Run ``operator(**arguments).execute()`` inside a real task; return the error it raised, as text."""
    dag_run = run_dag(
        f"""
        @task
        def run(**context):
            try:
                {operator}(task_id="inner", **{arguments!r}).execute(context)
            except Exception as error:
                return f"{{type(error).__name__}}: {{error}}"

        run()
        """,
        imports="from airflow.decorators import task\n",
    )
    return str(xcom(dag_run, "run"))


def clear_while_submitting(trigger: str, submitting: str, imports: str, before_its_turn: bool = False) -> Any:
    """Run a DAG whose task clears the task instance ``cleared`` while the trigger built by ``trigger`` (Python,
    with ``cleared``'s task instance as its own) has a submission on its way (``submitting``, Python on
    ``trigger``, turns true), then ends the trigger the way this Airflow ends it (``on_kill`` on 3.3+, a plain
    cancel before); the DAG run. ``before_its_turn``: the trigger waits for its turn to start all along, as
    behind thousands of triggers that a triggerer took on at once."""
    return run_dag(
        f"""
        @task
        def cleared() -> None:
            pass

        @task
        def end_trigger(run_id=None, dag=None) -> None:
            def set_state(state):
                with create_session() as session:
                    session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=run_id, task_id="cleared").update(
                        {{"state": state}}, synchronize_session=False
                    )

            async def clear_while_submitting() -> None:
                trigger = {trigger}
                trigger.task_instance = SimpleNamespace(
                    dag_id=dag.dag_id, task_id="cleared", run_id=run_id, map_index=-1
                )
                if {before_its_turn}:  # a turn ahead of the trigger's own that is never given
                    loop = asyncio.get_running_loop()
                    trigger_base._turns[loop] = collections.deque([loop.create_future()])
                waiting = asyncio.ensure_future(trigger.run().__anext__())
                for _ in range(600):  # until the submission is on its way (a busy machine takes seconds)
                    await asyncio.sleep(0.05)
                    if {submitting}:
                        break
                await asyncio.sleep(0.2)
                set_state(None)
                if _compat.TRIGGER_HAS_ON_KILL:
                    waiting.cancel("__airflow_user_action__")
                    await asyncio.gather(waiting, return_exceptions=True)
                    await trigger.on_kill()
                else:
                    waiting.cancel()
                    await asyncio.gather(waiting, return_exceptions=True)

            try:
                asyncio.run(clear_while_submitting())
            finally:  # dag.test() runs until every task instance is done
                set_state("success")

        cleared() >> end_trigger()
        """,
        imports="import asyncio\nimport collections\nfrom types import SimpleNamespace\n"
        "from airflow.decorators import task\nfrom airflow.models.taskinstance import TaskInstance\n"
        "from airflow.utils.session import create_session\n"
        "from airflow_ml_batch import _compat\nfrom airflow_ml_batch.triggers import base as trigger_base\n" + imports,
    )


def clear_before_its_turn(trigger: str) -> Any:
    """:func:`clear_while_submitting` for a Batch trigger (``trigger``, Python) that waits for its turn to start
    all along, as behind thousands of triggers that a triggerer took on at once; the DAG run."""
    return clear_while_submitting(
        trigger,
        submitting="True",
        imports="from airflow_ml_batch.triggers.batch import BatchFleetTrigger, BatchJobTrigger\n",
        before_its_turn=True,
    )


async def first_event(trigger: Any, timeout: float = 30) -> Any:
    """What the triggerer does with a trigger: run it and take its first event."""

    async def run() -> Any:
        async for event in trigger.run():
            return event
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(run(), timeout)


def expected_tags(dag_run: Any, task_id: str = "forecast", **extra: str) -> dict[str, str]:
    """The cost-attribution tags a first try of ``task_id`` in ``dag_run`` puts on its job, plus ``extra``."""
    return {
        **extra,
        "airflow:dag_id": dag_run.dag_id,
        "airflow:task_id": task_id,
        "airflow:run_id": dag_run.run_id,
        "airflow:map_index": "-1",
        "airflow:try_number": "1",
    }


def rendered_links(dag_run: Any, operator: Any) -> dict[str, str | None]:
    """The URLs the UI shows for ``operator``'s task in ``dag_run``, by link name: from the DAG as the
    webserver (Airflow 2) or the API server (Airflow 3) loads it, serialized."""
    from airflow.serialization import serialized_objects

    try:
        from airflow.sdk import DAG
    except ImportError:  # Airflow 2
        from airflow import DAG

    with DAG(dag_run.dag_id, schedule=None) as dag:
        dag.add_task(operator)
    serializer = getattr(serialized_objects, "DagSerialization", None) or serialized_objects.SerializedDAG
    task = serializer.from_dict(serializer.to_dict(dag)).get_task(operator.task_id)
    ti = task_instance(dag_run, operator.task_id)
    return {name: task.get_extra_links(ti, name) for name in task.extra_links}


def dag_bag(folder: Path) -> Any:
    """The DAGs of the files in ``folder``, as Airflow's DagBag loads them, without Airflow's examples."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    try:  # Airflow's examples are in the bag by default (load_examples) up to 3.2
        return DagBag(dag_folder=str(folder), include_examples=False)
    except TypeError:  # Airflow 3.3+: the argument is gone, and the examples never included
        return DagBag(dag_folder=str(folder))
