"""The shared core of the hooks: connection resolution, default retries and the shared async client."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import urllib.request
from datetime import timedelta
from typing import Any

import botocore.loaders
import pytest
from helpers import CONN_ID, REGION, aws_connection_uri

from airflow_ml_batch.hooks import base
from airflow_ml_batch.hooks import base as hooks_base
from airflow_ml_batch.hooks.base import DEFAULT_CONFIG, shared_clients
from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.hooks.ecs import EcsHook


class RecordingFileLoader(botocore.loaders.JSONFileLoader):
    """Reads botocore's JSON model files and records which thread read each one."""

    def __init__(self) -> None:
        self.threads: dict[str, set[int]] = {}

    def load_file(self, file_path: str) -> Any:
        found = super().load_file(file_path)
        if found is not None:
            self.threads.setdefault(file_path, set()).add(threading.get_ident())
        return found


class LoopMonitor:
    """Ticks on the event loop and records the longest gap between ticks: a blocked loop shows here."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - self.interval)
            last = now

    async def __aenter__(self) -> LoopMonitor:
        # A full garbage collection of Airflow's heap alone stalls any loop for 100-200 ms; it would be
        # measured here too and say nothing about the code under test.
        gc.disable()
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        gc.enable()
        assert self._task is not None
        self._task.cancel()


def test_connection_resolves_like_the_amazon_provider(aws_conn_id: str, moto: str) -> None:
    hook = BatchHook(aws_conn_id=aws_conn_id)

    assert hook.region_name == REGION
    assert hook.conn.meta.endpoint_url == moto
    # the connection's config_kwargs win over our default retries
    assert hook.config.retries == {"mode": "standard", "total_max_attempts": 1}


def test_default_retries_apply_unless_overridden() -> None:
    assert BatchHook(aws_conn_id=None, region_name=REGION).config.retries == DEFAULT_CONFIG.retries
    adaptive = {"mode": "adaptive", "total_max_attempts": 8}
    assert BatchHook(aws_conn_id=None, region_name=REGION, config={"retries": adaptive}).config.retries == (adaptive)


class ForecastOperator:
    """Stands for an operator whose ``execute`` builds a client, as ours and a custom task's do."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    def execute(self) -> Any:
        return BatchHook(aws_conn_id=self.conn_id).conn


def test_the_user_agent_names_the_operator_whose_execute_built_the_client(aws_conn_id: str) -> None:
    client = ForecastOperator(aws_conn_id).execute()

    assert "Caller/ForecastOperator " in client.meta.config.user_agent_extra
    assert "Caller/Unknown " in BatchHook(aws_conn_id=aws_conn_id).conn.meta.config.user_agent_extra


def test_region_argument_wins_over_the_connection(aws_conn_id: str) -> None:
    hook = EcsHook(aws_conn_id=aws_conn_id, region_name="us-west-2")

    assert hook.conn.meta.region_name == "us-west-2"


async def test_thousand_concurrent_users_share_one_client_without_blocking_the_loop(
    aws_conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = RecordingFileLoader()
    # a cold loader: every model file the client needs is read from disk during this test
    monkeypatch.setattr(base, "_LOADER", botocore.loaders.Loader(file_loader=loader))
    loop_thread = threading.get_ident()
    clients: list[Any] = []
    all_holding, release = asyncio.Event(), asyncio.Event()

    async def user() -> None:
        async with BatchHook(aws_conn_id=aws_conn_id).async_client() as client:
            clients.append(client)
            if len(clients) == 1000:
                all_holding.set()
            await release.wait()

    async with LoopMonitor() as monitor:
        users = [asyncio.ensure_future(user()) for _ in range(1000)]
        await all_holding.wait()
    assert (await clients[0].describe_jobs(jobs=[]))["jobs"] == []
    release.set()
    await asyncio.gather(*users)

    assert len(clients) == 1000
    assert len({id(client) for client in clients}) == 1, (
        "every user of the same connection/region/service gets one client"
    )
    assert loader.threads, "botocore's models were loaded through the shared loader"
    on_loop = sorted(name for name, threads in loader.threads.items() if loop_thread in threads)
    assert not on_loop, f"botocore's models must load off the event loop: {on_loop}"
    # Coarse on purpose (a shared 2-core machine deschedules threads): creating a client on the loop
    # with a cold loader blocks it for about half a second; the reads above prove the blocking work moved off it.
    assert monitor.longest < 0.3, f"the event loop was blocked for {monitor.longest:.3f}s"
    assert await closed_when_idle() == 0, "the client is closed once idle"


@pytest.fixture(autouse=True)
def _short_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks_base, "IDLE_SECONDS", 0.05)


async def closed_when_idle() -> int:
    """The shared clients still open once an idle one had time to close (a few of :data:`IDLE_SECONDS`)."""
    for _ in range(200):
        if shared_clients.count() == 0:
            break
        await asyncio.sleep(0.05)
    return shared_clients.count()


async def test_clients_are_shared_per_connection_region_and_service(aws_conn_id: str) -> None:
    async with (
        BatchHook(aws_conn_id=aws_conn_id).async_client() as batch_a,
        BatchHook(aws_conn_id=aws_conn_id).async_client() as batch_b,
        BatchHook(aws_conn_id=aws_conn_id, region_name="us-west-2").async_client() as batch_other_region,
        EcsHook(aws_conn_id=aws_conn_id).async_client() as ecs,
    ):
        assert batch_a is batch_b
        assert len({id(batch_a), id(batch_other_region), id(ecs)}) == 3
        assert shared_clients.count() == 3
        assert batch_other_region.meta.region_name == "us-west-2"
        assert ecs.meta.service_model.service_name == "ecs"
    assert await closed_when_idle() == 0


async def test_a_client_serves_the_next_user_while_idle_and_is_closed_after(
    aws_conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # calls paced one after the other reuse one client; an idle one is closed, and a new one made after
    monkeypatch.setattr(hooks_base, "IDLE_SECONDS", 0.3)
    hook = BatchHook(aws_conn_id=aws_conn_id)
    async with hook.async_client() as first:
        pass
    async with hook.async_client() as again:
        pass
    assert shared_clients.count() == 1
    assert await closed_when_idle() == 0
    async with hook.async_client() as second:
        assert (await second.describe_jobs(jobs=[]))["jobs"] == []
    assert again is first
    assert second is not first


async def test_a_failed_creation_reaches_every_waiter_and_is_not_cached(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_BAD_REGION", aws_connection_uri(moto, region_name="not a region!"))

    async def user() -> None:
        async with BatchHook(aws_conn_id="aws_bad_region").async_client():
            pass

    results = await asyncio.gather(*(user() for _ in range(20)), return_exceptions=True)

    assert all(isinstance(r, Exception) and "not a region!" in str(r) for r in results), results
    assert shared_clients.count() == 0, "a client never created is not kept"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_BAD_REGION", aws_connection_uri(moto))
    async with BatchHook(aws_conn_id="aws_bad_region").async_client() as client:
        assert (await client.describe_jobs(jobs=[]))["jobs"] == []


async def test_a_user_cancelled_during_creation_does_not_break_the_others(aws_conn_id: str) -> None:
    hook = BatchHook(aws_conn_id=aws_conn_id)

    async def user() -> list[Any]:
        async with hook.async_client() as client:
            return (await client.describe_jobs(jobs=[]))["jobs"]

    impatient = asyncio.ensure_future(user())
    patient = asyncio.ensure_future(user())
    await asyncio.sleep(0)
    impatient.cancel()

    assert await patient == []
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert await closed_when_idle() == 0


def assumed_roles(moto: str) -> int:
    with urllib.request.urlopen(f"{moto}/moto-api/data.json") as response:
        return len(json.load(response).get("sts", {}).get("AssumedRole", []))


async def test_assume_role_credentials_refresh_without_failing_a_waiting_user(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = "arn:aws:iam::123456789012:role/model-runner"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        aws_connection_uri(
            moto,
            role_arn=role,
            assume_role_kwargs={"DurationSeconds": 900},
            service_config={"sts": {"endpoint_url": moto}},  # the Amazon provider's key for STS
        ),
    )
    # Every use now finds the credentials inside botocore's mandatory refresh window, as a trigger
    # that has waited for hours would.
    monkeypatch.setattr(base, "_RECHECK", timedelta(minutes=-10))

    async with LoopMonitor() as monitor, BatchHook(aws_conn_id=CONN_ID).async_client() as client:
        before = assumed_roles(moto)
        for _ in range(3):
            assert (await client.describe_jobs(jobs=[]))["jobs"] == []
        after = assumed_roles(moto)

    assert before >= 1, "the connection's role was assumed"
    assert after - before >= 3, "expired credentials were refreshed by assuming the role again"
    assert monitor.longest < 0.3, f"the event loop was blocked for {monitor.longest:.3f}s"
