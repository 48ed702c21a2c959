"""The CeleryExecutor, as Amazon MWAA runs it: real Airflow processes (api-server, scheduler, dag-processor,
triggerer and one Celery worker) with Postgres as the metadata database and Celery's result backend, Redis as
the broker, and the jobs at the AWS-shaped endpoint (``python -m airflow_ml_batch.testing.endpoint``).

Three DAG runs at once: a fleet of one mapped ``BatchJobOperator`` per model, the same models in groups of
``BatchFleetOperator``, and the README's first DAG (its scheduled run). The worker runs two tasks at a time;
more jobs than that run together only if the tasks deferred, leaving their worker slot while their job ran.
Airflow's default configuration otherwise (examples and their listener plugin included).

The celery leg of ``scripts/test.sh`` runs these (``pytest -m celery``): it installs Redis, Postgres and Airflow
with the Celery provider under MWAA's pins. Elsewhere they skip when Redis, Postgres or the Celery provider is
missing, unless ``EXPECTED_CELERY`` is set.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_deployments import readme_dag

from airflow_ml_batch.jobs.batch import job_name_for
from airflow_ml_batch.jobs.groups import group_key, group_prefix, parse_job_name

pytestmark = [pytest.mark.celery, pytest.mark.timeout(1200)]

BENCHMARK_DAGS = Path(__file__).resolve().parents[1] / "benchmarks" / "dags"
#: Task runs the Celery worker takes at once (``[celery] worker_concurrency``; ``[core] parallelism`` too).
WORKER_SLOTS = 2
MODELS = 20
GROUP_SIZE = 10
#: Seconds each job runs at the endpoint (+- 10 %): long enough for every task to have submitted and deferred.
JOB_SECONDS = 60
PER_MODEL, GROUPS, README_DAG = "fleet_benchmark", "fleet_benchmark_groups", "demand_forecast"
TASK_ID = "model"  # the fleet DAGs' task (benchmarks/dags/fleet_settings.py)
#: How long a DAG run may take on a busy 2-core machine.
RUN_TIMEOUT = 900


@dataclass
class CeleryAirflow:
    """The running Airflow, its endpoint and its database; the three DAG runs, and what was seen of them."""

    api: str
    processes: Any  # local_airflow.Processes
    db: Any  # local_airflow.MetadataDB
    endpoint: Any  # EndpointClient
    run_ids: dict[str, str] = field(default_factory=dict)
    #: the most task instances seen deferred at once, per DAG
    most_deferred: collections.Counter[str] = field(default_factory=collections.Counter)

    def wait_for_run(self, dag_id: str) -> str:
        """Wait for the DAG's run to end; its state."""
        from airflow_ml_batch.testing.local_airflow import wait_for

        run_id = self.run_ids[dag_id]
        try:
            return str(
                wait_for(
                    f"the run of {dag_id} to end",
                    lambda: (state := self.db.run_state(dag_id, run_id)) in ("success", "failed") and state,
                    RUN_TIMEOUT,
                    self.processes,
                )
            )
        except RuntimeError as error:
            raise AssertionError(f"{error}\n{self.processes.tails(40)}") from error

    def task_states(self, dag_id: str) -> dict[str, int]:
        return dict(self.db.task_states(dag_id, self.run_ids[dag_id]))

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.endpoint.jobs().values())


def _missing() -> str:
    """What this machine lacks to run the CeleryExecutor here ('' if nothing)."""
    from airflow_ml_batch.testing.local_airflow import check_executor, postgres_program

    try:
        check_executor("celery")
        for program in ("initdb", "pg_ctl", "psql"):
            postgres_program(program)
    except (RuntimeError, ImportError) as error:
        return str(error)
    return ""


@pytest.fixture(scope="module")
def celery_airflow() -> Iterator[CeleryAirflow]:
    """Airflow under the CeleryExecutor with the three DAG runs triggered; everything stopped afterwards."""
    missing = _missing()
    if missing:
        if os.environ.get("EXPECTED_CELERY"):
            pytest.fail(missing)
        pytest.skip(missing)
    from airflow_ml_batch.testing.endpoint import REGION, running
    from airflow_ml_batch.testing.local_airflow import (
        COMPONENTS,
        MetadataDB,
        Processes,
        airflow_env,
        free_port,
        http_json,
        postgres,
        redis,
        start_airflow,
        trigger_dag,
        wait_for,
        wait_ready,
    )

    # Not pytest's tmp_path: Postgres runs as another user when the tests run as root, and needs to reach it.
    workdir = Path(tempfile.mkdtemp(prefix="airflow-celery-"))
    dags = workdir / "dags"
    dags.mkdir()
    for name in ("fleet_settings.py", f"{PER_MODEL}.py", f"{GROUPS}.py"):
        shutil.copy(BENCHMARK_DAGS / name, dags)
    (dags / f"{README_DAG}.py").write_text(readme_dag())
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        endpoint = stack.enter_context(
            running("--duration", str(JOB_SECONDS), "--spread", "0.1", "--fail-fraction", "0", "--max-seconds", "3600")
        )
        db_url = stack.enter_context(postgres(workdir))
        broker_url = stack.enter_context(redis(workdir))
        extra = {"region_name": REGION, "endpoint_url": endpoint.url}
        connection = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra})
        api_port = free_port()
        env = airflow_env(
            workdir,
            dags,
            db_url,
            api_port,
            parallelism=WORKER_SLOTS,
            tasks=MODELS,
            preload=(),
            connections={"aws_default": connection},  # the README's DAG and the fleets' (below) use it
            executor="celery",
            broker_url=broker_url,
            celery_workers=1,
        )
        env |= {
            "FLEET_BENCH_CONN_ID": "aws_default",
            "FLEET_BENCH_JOBS": str(MODELS),
            "FLEET_BENCH_GROUP_SIZE": str(GROUP_SIZE),
            "FLEET_BENCH_POLL_INTERVAL": "5",
        }
        (workdir / "logs").mkdir()
        processes = Processes(env, workdir / "logs")
        db = MetadataDB(db_url)
        stack.callback(db.close)
        stack.callback(processes.stop_all)
        api = f"http://127.0.0.1:{api_port}"
        try:
            start_airflow(processes, COMPONENTS, celery_workers=1)
            wait_ready(processes, api, PER_MODEL)
            for dag_id in (GROUPS, README_DAG):
                wait_for(
                    f"{dag_id} to be parsed",
                    lambda d=dag_id: http_json("GET", f"{api}/api/v2/dags/{d}"),
                    300,
                    processes,
                )
        except RuntimeError as error:
            raise AssertionError(f"{error}\n{processes.tails(40)}") from error
        airflow = CeleryAirflow(api, processes, db, endpoint)
        for dag_id in (PER_MODEL, GROUPS):
            airflow.run_ids[dag_id] = trigger_dag(api, dag_id)["dag_run_id"]
        # The README's DAG runs on its schedule (@monthly, no catchup): unpaused, it gets its latest interval's run.
        http_json("PATCH", f"{api}/api/v2/dags/{README_DAG}", {"is_paused": False})
        runs = wait_for(
            f"the scheduled run of {README_DAG}",
            lambda: http_json("GET", f"{api}/api/v2/dags/{README_DAG}/dagRuns")["dag_runs"],
            300,
            processes,
        )
        airflow.run_ids[README_DAG] = runs[0]["dag_run_id"]
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_deferred, args=(airflow, stop), daemon=True)
        watcher.start()
        stack.callback(watcher.join, 30)
        stack.callback(stop.set)
        yield airflow


def _watch_deferred(airflow: CeleryAirflow, stop: threading.Event) -> None:
    """Record the most task instances of each run seen deferred at once, every second until ``stop``."""
    while not stop.wait(1.0):
        for dag_id, run_id in airflow.run_ids.items():
            with contextlib.suppress(Exception):  # a read lost to a busy database is skipped
                deferred = airflow.db.task_states(dag_id, run_id)["deferred"]
                airflow.most_deferred[dag_id] = max(airflow.most_deferred[dag_id], deferred)


def most_running_at_once(jobs: list[dict[str, Any]]) -> int:
    """The most of ``jobs`` running at the same time (from their start and end times at the endpoint)."""
    events = sorted(e for job in jobs for e in ((job["started"], 1), (job["ends"], -1)) if job["started"] < job["ends"])
    return max(itertools.accumulate(step for _, step in events), default=0)


def test_a_fleet_of_one_task_per_model(celery_airflow: CeleryAirflow) -> None:
    state = celery_airflow.wait_for_run(PER_MODEL)

    run_id = celery_airflow.run_ids[PER_MODEL]
    assert state == "success"
    assert celery_airflow.task_states(PER_MODEL) == {"success": MODELS}
    names = {job_name_for(PER_MODEL, TASK_ID, run_id, index) for index in range(MODELS)}
    jobs = [job for job in celery_airflow.jobs() if job["name"] in names]
    assert sorted(job["name"] for job in jobs) == sorted(names)  # exactly one job per model
    # Two worker slots, more jobs running at once: each task left its slot while its job ran.
    assert most_running_at_once(jobs) > WORKER_SLOTS
    assert celery_airflow.most_deferred[PER_MODEL] > WORKER_SLOTS


def test_the_same_models_in_groups(celery_airflow: CeleryAirflow) -> None:
    state = celery_airflow.wait_for_run(GROUPS)

    run_id = celery_airflow.run_ids[GROUPS]
    groups = MODELS // GROUP_SIZE
    assert state == "success"
    assert celery_airflow.task_states(GROUPS) == {"success": groups}
    prefixes = {group_prefix(TASK_ID, group_key(GROUPS, TASK_ID, run_id, index)): index for index in range(groups)}
    jobs_per_model: collections.Counter[tuple[int, int]] = collections.Counter()
    for job in celery_airflow.jobs():
        for prefix, group in prefixes.items():
            parsed = parse_job_name(prefix, job["name"])
            if parsed is not None:
                jobs_per_model[group, parsed[0]] += 1
    assert jobs_per_model == {(group, model): 1 for group in range(groups) for model in range(GROUP_SIZE)}
    assert celery_airflow.most_deferred[GROUPS] == groups  # both groups waited on the triggerer at once


def test_the_readme_dag(celery_airflow: CeleryAirflow) -> None:
    state = celery_airflow.wait_for_run(README_DAG)

    run_id = celery_airflow.run_ids[README_DAG]
    assert state == "success"
    assert celery_airflow.task_states(README_DAG) == {"success": 1}
    name = job_name_for(README_DAG, "train_widgets", run_id)
    assert [job["name"] for job in celery_airflow.jobs() if job["name"] == name] == [name]
    assert celery_airflow.most_deferred[README_DAG] == 1
