"""The example DAGs are documentation and must import cleanly on every supported Airflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import dag_bag

EXAMPLES = Path(__file__).parent.parent / "example_dags"


@pytest.fixture(scope="module")
def examples() -> object:
    return dag_bag(EXAMPLES)


def test_every_example_dag_imports_without_errors(examples: object) -> None:
    assert examples.import_errors == {}  # type: ignore[attr-defined]
    files = {Path(dag.fileloc).name for dag in examples.dags.values()}  # type: ignore[attr-defined]
    assert files == {path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("_")}


def test_the_month_end_forecast_maps_one_batch_job_per_model_after_data_prep(examples: object) -> None:
    dag = examples.dags["monthly_demand_forecast"]  # type: ignore[attr-defined]

    forecast = dag.task_dict["forecast"]
    assert type(forecast).__name__ == "MappedOperator"
    assert {"prepare_data", "plan"} <= forecast.upstream_task_ids
    assert dag.task_dict["report"].upstream_task_ids == {"forecast", "plan"}
    assert dag.task_dict["report"].trigger_rule == "all_done"


def test_the_grouped_forecast_maps_one_fleet_task_per_group_of_models(examples: object) -> None:
    dag = examples.dags["monthly_demand_forecast_groups"]  # type: ignore[attr-defined]

    forecast = dag.task_dict["forecast"]
    assert type(forecast).__name__ == "MappedOperator"
    assert forecast.operator_name == "BatchFleetOperator"
    assert {"prepare_data", "split"} <= forecast.upstream_task_ids
    assert dag.task_dict["report"].trigger_rule == "all_done"
