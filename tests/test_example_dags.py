"""The example DAGs are documentation and must import cleanly on every supported Airflow."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "example_dags"


@pytest.fixture(scope="module")
def dag_bag() -> object:
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    try:
        # Airflow's examples are in the bag by default (load_examples) up to 3.2
        return DagBag(dag_folder=str(EXAMPLES), include_examples=False)
    except TypeError:  # Airflow 3.3+: the argument is gone, and the examples never included
        return DagBag(dag_folder=str(EXAMPLES))


def test_every_example_dag_imports_without_errors(dag_bag: object) -> None:
    assert dag_bag.import_errors == {}  # type: ignore[attr-defined]
    files = {Path(dag.fileloc).name for dag in dag_bag.dags.values()}  # type: ignore[attr-defined]
    assert files == {path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("_")}


def test_the_month_end_forecast_maps_one_batch_job_per_model_after_data_prep(dag_bag: object) -> None:
    dag = dag_bag.dags["monthly_demand_forecast"]  # type: ignore[attr-defined]

    forecast = dag.task_dict["forecast"]
    assert type(forecast).__name__ == "MappedOperator"
    assert {"prepare_data", "plan"} <= forecast.upstream_task_ids
    assert dag.task_dict["report"].upstream_task_ids == {"forecast", "plan"}
    assert dag.task_dict["report"].trigger_rule == "all_done"


def test_the_grouped_forecast_maps_one_fleet_task_per_group_of_models(dag_bag: object) -> None:
    dag = dag_bag.dags["monthly_demand_forecast_groups"]  # type: ignore[attr-defined]

    forecast = dag.task_dict["forecast"]
    assert type(forecast).__name__ == "MappedOperator"
    assert forecast.operator_name == "BatchFleetOperator"
    assert {"prepare_data", "split"} <= forecast.upstream_task_ids
    assert dag.task_dict["report"].trigger_rule == "all_done"
