"""The endpoint as its own process (``python -m airflow_ml_batch.testing.endpoint``), and a client for it."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .core import CREATING_OPERATIONS, WallClockRunner
from .server import Endpoint


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_ml_batch.testing.endpoint",
        description="An AWS-shaped endpoint (Batch, ECS, CloudWatch Logs, STS) on 127.0.0.1 whose jobs and "
        "tasks run on the wall clock. Prints its port, then serves until killed or --max-seconds.",
    )
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--duration", type=float, default=20.0, help="mean job (task) duration, seconds")
    p.add_argument("--spread", type=float, default=0.25, help="durations vary by +- this fraction")
    p.add_argument("--fail-fraction", type=float, default=0.05, help="fraction of jobs and tasks that fail")
    p.add_argument("--long-fraction", type=float, default=0.0, help="fraction of jobs (tasks) in a long tail (0: none)")
    p.add_argument("--long-factor", type=float, default=10.0, help="a long-tail job lasts this many times the duration")
    p.add_argument("--long-env", help="a job whose container environment sets this variable to 1 is long (no draw)")
    p.add_argument("--batch-rate", type=float, default=50.0, help="Batch requests/s before 429 (0: no limit)")
    p.add_argument("--batch-burst", type=float, default=0.0, help="Batch token bucket size (default: the rate)")
    p.add_argument("--ecs-rate", type=float, default=20.0, help="ECS requests/s before ThrottlingException (0: none)")
    p.add_argument("--ecs-burst", type=float, default=0.0, help="ECS token bucket size (default: the rate)")
    p.add_argument("--logs-rate", type=float, default=0.0, help="GetLogEvents/s before ThrottlingException (0: none)")
    p.add_argument("--logs-burst", type=float, default=0.0, help="Logs token bucket size (default: the rate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=7200.0, help="exit after this long")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    runner = WallClockRunner(
        args.duration, args.spread, args.fail_fraction, args.seed, args.long_fraction, args.long_factor, args.long_env
    )
    endpoint = Endpoint(runner, keep_requests=False)
    limits = (
        ("batch", args.batch_rate, args.batch_burst),
        ("ecs", args.ecs_rate, args.ecs_burst),
        ("logs", args.logs_rate, args.logs_burst),
    )
    for service, rate, burst in limits:
        if rate:
            endpoint.limit(service, rate, burst)
    asyncio.run(endpoint.serve(args.port, lambda port: print(port, flush=True), args.max_seconds))


@contextmanager
def running(*options: str) -> Iterator[EndpointClient]:
    """The endpoint in a subprocess with command-line ``options`` (see ``--help``); yield a client, then stop it."""
    command = [sys.executable, "-m", "airflow_ml_batch.testing.endpoint", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        if not port:
            raise RuntimeError(f"the endpoint exited with {process.wait(10)} before listening")
        yield EndpointClient(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)


class EndpointClient:
    """The control routes of an endpoint at ``url`` (``/_endpoint/...``), from another process."""

    def __init__(self, url: str) -> None:
        self.url = url

    def control(self, name: str, body: Any = None) -> Any:
        """GET (or POST ``body`` to) ``/_endpoint/<name>``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_endpoint/{name}", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def start_jobs(self, count: int, name_prefix: str = "job") -> list[str]:
        """Create ``count`` jobs starting now, as SubmitJob would; their ids."""
        ids: list[str] = self.control("jobs", {"count": count, "name_prefix": name_prefix})["ids"]
        return ids

    def start_tasks(self, count: int, name_prefix: str = "task") -> list[str]:
        """Start ``count`` ECS tasks now, as RunTask would; their ARNs."""
        arns: list[str] = self.control("tasks", {"count": count, "name_prefix": name_prefix})["ids"]
        return arns

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job's name, timeline (epoch seconds) and outcome."""
        jobs: dict[str, dict[str, Any]] = self.control("jobs")
        return jobs

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Every task's ``startedBy``, timeline and outcome."""
        tasks: dict[str, dict[str, Any]] = self.control("tasks")
        return tasks

    def stats(self) -> dict[str, Any]:
        """The counters (:meth:`~airflow_ml_batch.testing.endpoint.server.Endpoint.stats`)."""
        stats: dict[str, Any] = self.control("stats")
        return stats

    def faults(self, **switches: Any) -> None:
        """Switch faults on (:meth:`~airflow_ml_batch.testing.endpoint.core.Faults.update`):
        ``throttle_seconds=60``, ``credential_ttl=4``, ``fail_job_names=r"-t1-a1$"``, ``list_lag_seconds=5``, ..."""
        self.control("faults", switches)

    def fail_next(
        self, operation: str, times: int = 1, status: int = 429, code: str = "TooManyRequestsException"
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` with an error."""
        self.control("fail-next", {"operation": operation, "times": times, "status": status, "code": code})

    def lose_answers(
        self,
        operations: Sequence[str] = CREATING_OPERATIONS,
        fraction: float = 0.0,
        next: int = 0,
        mode: str = "500",
        seed: int = 0,
    ) -> None:
        """Lose the answers of calls that were done
        (:meth:`~airflow_ml_batch.testing.endpoint.server.Endpoint.lose_answers`)."""
        names = [operations] if isinstance(operations, str) else list(operations)
        settings = {"operations": names, "fraction": fraction, "next": next, "mode": mode, "seed": seed}
        self.faults(lose_answers=settings)
