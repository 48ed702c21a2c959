"""The Airflow 2/3 layer: the running Airflow is the one the test run asked for, and features are detected."""

from __future__ import annotations

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
