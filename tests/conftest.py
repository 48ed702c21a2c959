"""Shared fixtures: a real moto server, an Airflow ``aws`` connection to it, and a clean environment."""

from __future__ import annotations

import functools
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

# Airflow reads its home and config at import: give the test session its own, before anything imports it.
# Everything else is Airflow's default configuration, as a new user has it: examples on, and with them
# Airflow's example listener plugin (tests/test_deployments.py covers other set-ups).
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-ml-batch-tests-"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", os.path.join(os.environ["AIRFLOW_HOME"], "dags"))
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], exist_ok=True)

from helpers import CONN_ID, aws_connection_uri  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_execution_api_per_process() -> Iterator[None]:
    """``dag.test()`` builds Airflow's execution API once per process, as Airflow 3.3 does.

    Airflow 3.0 to 3.2 build the whole API (a FastAPI app of every API version) again for each task that
    ``dag.test()`` runs, seconds of CPU a task; 3.3 caches it (apache/airflow#65235). The same cache here, so
    that a DAG's tasks run under every 3.x as under 3.3, and the older versions' suites take minutes less.
    """
    try:
        from airflow.sdk.execution_time import supervisor
    except ImportError:  # Airflow 2: dag.test() runs each task without an execution API
        yield
        return
    build = supervisor.in_process_api_server
    if not hasattr(build, "cache_clear"):
        supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(build)
    yield
    supervisor.in_process_api_server = build


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's AWS profile, keys or region must never leak into a test."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free port: real AWS request/response shapes for boto3 and aiobotocore."""
    from airflow_ml_batch.testing import local_aws

    with local_aws() as url:
        yield url


@pytest.fixture
def moto(moto_server: str) -> Iterator[str]:
    """The moto server's URL, with every resource created by the test removed afterwards."""
    yield moto_server
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()


@pytest.fixture
def aws_conn_id(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow ``aws`` connection to the moto server, defined the way users define one."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", aws_connection_uri(moto))
    return CONN_ID


@pytest.fixture
def batch_queue(aws_conn_id: str) -> dict[str, str]:
    """A Batch compute environment, job queue and job definition on the moto server."""
    from airflow_ml_batch.testing import create_batch_queue

    return create_batch_queue(aws_conn_id)


@pytest.fixture
def ecs_cluster(aws_conn_id: str) -> dict[str, Any]:
    """An ECS cluster, a Fargate task definition and an ``awsvpc`` network on the moto server."""
    from airflow_ml_batch.testing import create_ecs_cluster

    return create_ecs_cluster(aws_conn_id)


@pytest.fixture
def aws_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The scripted AWS endpoint (Batch, ECS, Logs, STS), with the ``aws_fake`` connection pointing at it."""
    from airflow_ml_batch.testing.endpoint import Endpoint

    with Endpoint() as endpoint:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_FAKE", aws_connection_uri(endpoint.url))
        yield endpoint


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata database (SQLite in the test session's AIRFLOW_HOME), for ``dag.test()``."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
    )
