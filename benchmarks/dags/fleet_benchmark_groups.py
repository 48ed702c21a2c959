"""The fleet benchmark in group mode: the same N models as ``fleet_benchmark.py``, in groups of ``BatchFleetOperator``.

``fleet_benchmark_groups`` maps this package's ``BatchFleetOperator`` over ``groups()`` of the same N models
(``FLEET_BENCH_GROUP_SIZE`` each, default 100): one task instance per group, the jobs submitted from the
triggerer within ``FLEET_BENCH_SUBMIT_RATE`` per second if set (``benchmarks/airflow_fleet.py --submit-rate``),
else at the operator's default (AWS Batch's published 50 per second, halved on throttling). Same settings
as ``fleet_benchmark.py`` (``fleet_settings.py``), in its own file. Set by hand: ``FLEET_BENCH_PLAN=1`` takes
the groups from a ``plan`` task's return value, ``FLEET_BENCH_PLAN=push`` from the XComs a ``plan`` task
pushes (``fleet.push_groups``), ``FLEET_BENCH_END_FROM_TRIGGER=1`` ends each successful group on the triggerer.
"""

from __future__ import annotations

from typing import Any

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
from fleet_settings import (
    COMMON,
    END_FROM_TRIGGER,
    EXECUTION_TIMEOUT,
    GROUP_SIZE,
    MODELS,
    PLAN,
    POLL_INTERVAL,
    START,
    SUBMIT_RATE,
    environment,
)

from airflow_ml_batch.fleet import groups, push_groups
from airflow_ml_batch.operators.batch import BatchFleetOperator


def entries() -> list[dict[str, Any]]:
    """Each model's entry: its job name and environment."""
    return [{"job_name": model, "environment": environment(model)} for model in MODELS]


def model_groups() -> list[list[dict[str, Any]]]:
    """The N models in groups of ``GROUP_SIZE``."""
    return groups(entries(), GROUP_SIZE)


def pushed_groups(ti: Any = None) -> list[dict[str, str]]:
    """The N models in groups of ``GROUP_SIZE``, each pushed to an XCom of its own; a reference to each."""
    return push_groups(entries(), ti, GROUP_SIZE)


with DAG(dag_id="fleet_benchmark_groups", schedule=None, start_date=START, catchup=False):
    # FLEET_BENCH_PLAN: the groups from a plan task (its return value, or the XComs it pushes), or a literal
    models = task(task_id="plan")({"1": model_groups, "push": pushed_groups}[PLAN])() if PLAN else model_groups()
    BatchFleetOperator.partial(
        poll_interval=POLL_INTERVAL,
        execution_timeout=EXECUTION_TIMEOUT,
        vcpus=1,
        memory=2048,
        submit_rate=SUBMIT_RATE,
        end_from_trigger=END_FROM_TRIGGER,
        **COMMON,
    ).expand(models=models)
