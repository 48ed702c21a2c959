"""The Airflow 2/3 layer: the running Airflow is the one the test run asked for, and features are detected."""

from __future__ import annotations

import inspect
import os

import airflow
import pytest
from helpers import run_dag, xcom
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from airflow_ml_batch import _compat


def test_the_installed_airflow_is_the_one_this_run_asked_for() -> None:
    expected = os.environ.get("EXPECTED_AIRFLOW_VERSION")  # "2.10.3", or ">=3.3.2" for the newest leg
    if not expected:
        pytest.skip("EXPECTED_AIRFLOW_VERSION is set by the test command for each compatibility leg")
    specifier = SpecifierSet(expected if expected[0] in "<>=!~" else f"=={expected}")
    assert airflow.__version__ in specifier


def test_version_flags_match_the_running_airflow() -> None:
    running = Version(Version(airflow.__version__).base_version)

    assert running == _compat.AIRFLOW_VERSION
    assert _compat.AIRFLOW_V_3_0_PLUS is (running.major >= 3)


def test_trigger_on_kill_is_detected() -> None:
    from airflow.triggers.base import BaseTrigger

    # Airflow 3.3 added BaseTrigger.on_kill; the flag must follow the class, not a version table.
    assert _compat.TRIGGER_HAS_ON_KILL is callable(vars(BaseTrigger).get("on_kill"))
    assert _compat.TRIGGER_HAS_ON_KILL is (Version("3.3") <= _compat.AIRFLOW_VERSION)


def test_operator_base_classes_come_from_the_running_airflow() -> None:
    module = _compat.BaseOperator.__module__
    assert module.startswith("airflow.sdk") if _compat.AIRFLOW_V_3_0_PLUS else module.startswith("airflow.models")
    assert issubclass(
        type("Link", (_compat.BaseOperatorLink,), {"name": "x", "get_link": lambda *a, **k: ""}),
        _compat.BaseOperatorLink,
    )


@pytest.mark.usefixtures("airflow_db")
def test_task_instance_state_reads_another_task_of_the_run() -> None:
    # What a trigger on Airflow < 3.3 asks before terminating a job: is the task still deferred?
    dag_run = run_dag(
        """
        @task
        def first() -> str:
            return "done"

        @task
        def state_of_first(run_id=None, dag=None) -> Any:
            return _compat.task_instance_state(
                SimpleNamespace(dag_id=dag.dag_id, task_id="first", run_id=run_id, map_index=-1)
            )

        first() >> state_of_first()
        """,
        imports="from types import SimpleNamespace\nfrom typing import Any\n"
        "from airflow.decorators import task\nfrom airflow_ml_batch import _compat\n",
    )

    assert xcom(dag_run, "state_of_first") == "success"


@pytest.mark.usefixtures("airflow_db")
def test_airflows_clear_raises_max_tries_so_a_cleared_try_is_not_reattachable() -> None:
    # Airflow's own clear on a finished try: the next try's earlier tries exclude the cleared one, while a
    # retry (max_tries untouched) may re-attach to every earlier try's job.
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.utils.session import create_session

    dag_run = run_dag(
        """
        @task(retries=2)
        def model() -> None:
            pass

        model()
        """,
        imports="from airflow.decorators import task\n",
    )
    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
        assert (ti.try_number, ti.max_tries) == (1, 2)
        assert list(_compat.tries_since_last_clear(ti.try_number + 1, ti.max_tries, 2)) == [1], "a retry"

        if "dag" in inspect.signature(clear_task_instances).parameters:  # Airflow 2: the UI and API pass it
            clear_task_instances([ti], session, dag=dag_run.dag)
        else:  # Airflow 3 reads the serialized DAG, which the DAG processor writes
            from airflow.models.serialized_dag import SerializedDagModel

            if session.query(SerializedDagModel).filter_by(dag_id=dag_run.dag_id).first() is None:
                pytest.skip("this Airflow's dag.test() writes no serialized DAG for clear to read")
            clear_task_instances([ti], session)
        session.flush()
        ti = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
        next_try = ti.try_number + 1  # the scheduler counts the try up when it schedules it

        assert ti.max_tries == 3
        assert list(_compat.tries_since_last_clear(next_try, ti.max_tries, 2)) == []
        assert list(_compat.tries_since_last_clear(next_try + 1, ti.max_tries, 2)) == [2], "its retry, later"
