"""The example DAGs are documentation and must import cleanly on every supported Airflow."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "example_dags"


@pytest.fixture(scope="module")
def dag_bag() -> object:
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+: never includes Airflow's examples
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

        return DagBag(dag_folder=str(EXAMPLES), include_examples=False)
    return DagBag(dag_folder=str(EXAMPLES))


def test_every_example_dag_imports_without_errors(dag_bag: object) -> None:
    assert dag_bag.import_errors == {}  # type: ignore[attr-defined]
    files = {Path(dag.fileloc).name for dag in dag_bag.dags.values()}  # type: ignore[attr-defined]
    assert files == {path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("_")}


def test_the_fleet_demo_maps_batch_jobs(dag_bag: object) -> None:
    dag = dag_bag.dags["batch_fleet_demo"]  # type: ignore[attr-defined]

    assert "forecast" in dag.task_dict
    assert type(dag.task_dict["forecast"]).__name__ in {"MappedOperator", "BatchJobOperator"}
