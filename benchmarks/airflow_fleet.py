"""Fleet benchmark through a real Airflow: N mapped Batch tasks against the local AWS-shaped endpoint.

Starts the endpoint (``python -m airflow_ml_batch.testing.endpoint``, its own process), a metadata
database (Postgres from the system binaries in a temporary directory on a free 127.0.0.1 port, or
``--db sqlite``), and Airflow's api-server, scheduler (LocalExecutor; ``--executor celery``: CeleryExecutor
with a Redis broker and ``--celery-workers`` Celery workers, as Amazon MWAA runs it), dag-processor and
triggerer(s) with ``benchmarks/dags``. Triggers ``fleet_benchmark`` (N mapped ``BatchJobOperator`` tasks) through
the REST API (``--dag fleet_benchmark_groups``: the same models in groups of ``BatchFleetOperator``;
``fleet_benchmark_official``: the Amazon provider's ``BatchOperator``; ``fleet_benchmark_floor``: tasks
that only defer, what Airflow costs per task instance),
samples while it runs, stops everything it started (also on errors and Ctrl-C) and
prints what it measured. Under Airflow 2 (the ``python`` of an Airflow 2 virtualenv) it starts the scheduler,
which parses the DAG files itself, and the triggerer(s), reads readiness from the metadata database and
triggers the run with Airflow's CLI::

    python benchmarks/airflow_fleet.py --jobs 5000
    python benchmarks/airflow_fleet.py --jobs 5000 --executor celery --celery-workers 2

:class:`Fleet` is the harness ``chaos.py`` drives its fault scenarios with.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from airflow_ml_batch.testing.endpoint import ACCOUNT, REGION, EndpointClient, running
from airflow_ml_batch.testing.local_airflow import (
    AIRFLOW_2_COMPONENTS,
    COMPONENTS,
    EXECUTORS,
    MetadataDB,
    Processes,
    airflow_2,
    airflow_env,
    check_executor,
    free_port,
    postgres,
    redis,
    start_airflow,
    trigger_dag,
    trigger_dag_with_cli,
    wait_ready,
    wait_ready_from_db,
)

HERE = Path(__file__).resolve().parent
#: the harness runs Airflow 2 without an api-server (the scheduler parses the DAG files, the CLI triggers)
AIRFLOW_2 = airflow_2()

CONN_ID = "aws_bench"
#: the container environment variable that marks a long model (--longest-first; set by dags/fleet_settings.py)
LONG_ENV = "BENCH_LONG"
TASK_ID = "model"
#: What the scheduler's forkserver imports before it starts the LocalExecutor workers that fork the task runs
#: (the CeleryExecutor's workers do not use it).
FORKSERVER_PRELOAD = ",".join(
    (
        "airflow.executors.local_executor",
        "airflow.sdk.execution_time.task_runner",
        "airflow_ml_batch.operators.batch",
        "airflow.providers.amazon.aws.operators.batch",
    )
)
#: The Batch operations every report lists, even when none was made.
OPERATIONS = ("SubmitJob", "DescribeJobs", "ListJobs", "TerminateJob", "GetLogEvents", "AssumeRole")


def log(message: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of a fleet run; ``chaos.py`` adds its own."""
    p = argparse.ArgumentParser(description=description or __doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=100, help="models, one Batch job each (a task each, or in groups)")
    p.add_argument("--dag", default="fleet_benchmark", help="fleet_benchmark (ours), _official, _groups or _floor")
    p.add_argument("--group-size", type=int, default=100, help="models per group (fleet_benchmark_groups)")
    p.add_argument("--submit-rate", type=float, default=0.0, help="groups' SubmitJob/s (default: the operator's)")
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--duration", type=float, default=60.0, help="mean job duration at the endpoint, s")
    p.add_argument("--spread", type=float, default=0.25, help="durations vary by +- this fraction")
    p.add_argument("--fail-fraction", type=float, default=0.0, help="jobs that fail at the endpoint")
    p.add_argument("--long-fraction", type=float, default=0.0, help="fraction of jobs in a long tail (0: none)")
    p.add_argument("--long-factor", type=float, default=10.0, help="a long-tail job lasts this many x --duration")
    p.add_argument(
        "--longest-first",
        action="store_true",
        help="the DAG knows its long models (--long-fraction of them, seeded) and runs them first, as a user who "
        "orders models by expected duration (fleet.longest_first); the endpoint makes exactly those long",
    )
    p.add_argument("--rate", type=float, default=50.0, help="Batch API requests/s before 429 (SubmitJob included)")
    p.add_argument("--poll-interval", type=float, default=10.0, help="triggerer poll interval, s")
    p.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="local: LocalExecutor; celery: CeleryExecutor"
    )
    p.add_argument("--celery-workers", type=int, default=2, help="Celery worker processes (--executor celery)")
    p.add_argument(
        "--parallelism",
        type=int,
        default=8,
        help="LocalExecutor worker processes; with --executor celery, each Celery worker's concurrency",
    )
    p.add_argument("--triggerers", type=int, default=1, help="triggerer processes (Airflow HA)")
    p.add_argument("--retries", type=int, default=1, help="task retries")
    p.add_argument(
        "--execution-timeout",
        type=float,
        default=0.0,
        help="the tasks' execution_timeout, s (0: none; fleet_benchmark and fleet_benchmark_groups)",
    )
    p.add_argument("--health-threshold", type=float, default=30.0, help="[triggerer] triggerer_health_check_threshold")
    p.add_argument("--role", action="store_true", help="the connection assumes a role (STS at the endpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--timeout", type=float, default=0.0, help="seconds the DAG run may take (default from N)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    return p


def check_options(args: argparse.Namespace) -> None:
    """Raise if the options cannot run, or what they need is not installed (before anything starts)."""
    check_executor(args.executor)
    if args.executor == "celery" and args.db != "postgres":
        raise RuntimeError("--executor celery needs --db postgres (the Celery result backend)")
    if args.executor == "celery" and args.celery_workers < 1:
        raise RuntimeError("--executor celery needs --celery-workers 1 or more")
    if args.longest_first and (not args.long_fraction or args.dag not in ("fleet_benchmark", "fleet_benchmark_groups")):
        raise RuntimeError("--longest-first needs --long-fraction and --dag fleet_benchmark or fleet_benchmark_groups")


# The harness.


class Fleet:
    """Endpoint, database and Airflow for one fleet run: a context manager that stops all of it at exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="airflow-fleet-"))
        self.stack = contextlib.ExitStack()
        self.endpoint = ""
        self.control: EndpointClient
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.run_id = ""
        self.samples: list[dict[str, Any]] = []
        self.triggered_at = 0.0
        self.ended_at = 0.0
        self.processes: Processes
        self.db: MetadataDB
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.cpu: dict[str, float] = collections.defaultdict(float)  # of processes that were killed mid-run
        self.cpu_at_trigger: dict[str, float] = {}  # each component's CPU seconds just before the trigger
        self.cpu_at_end: dict[str, float] = {}  # ... and when the DAG run ended
        self.endpoint_pid = 0  # the endpoint's process: its CPU is reported apart from Airflow's
        self.endpoint_cpu_at_trigger = 0.0
        self.endpoint_cpu_at_end = 0.0

    # -- start and stop ---------------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave processes behind
            signal.signal(sig, signal.SIG_IGN)
        try:
            self._stop_sampling.set()
            if self._sampler:
                self._sampler.join(30)
            if hasattr(self, "processes"):
                for name, seconds in self.processes.cpu_seconds().items():
                    self.cpu[name] += seconds
                if exc and exc[0] is not None:
                    print(self.processes.tails(15), file=sys.stderr)
                self.processes.stop_all()
            if hasattr(self, "db"):
                self.db.close()
            self.stack.close()
            if not self.args.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                log(f"kept {self.workdir}")
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _start(self) -> None:
        args = self.args
        check_options(args)
        options = ["--batch-rate", str(args.rate), "--duration", str(args.duration), "--spread", str(args.spread)]
        options += ["--fail-fraction", str(args.fail_fraction), "--seed", str(args.seed), "--max-seconds", "14400"]
        options += ["--long-fraction", str(args.long_fraction), "--long-factor", str(args.long_factor)]
        if args.longest_first:
            options += ["--long-env", LONG_ENV]
        self.control = self.stack.enter_context(running(*options))
        self.endpoint = self.control.url
        self.endpoint_pid = _child_running("airflow_ml_batch.testing.endpoint")
        if args.db == "postgres":
            db_url = self.stack.enter_context(postgres(self.workdir))
        else:
            db_url = f"sqlite:///{self.workdir / 'airflow.db'}"
        broker_url = self.stack.enter_context(redis(self.workdir)) if args.executor == "celery" else ""
        env = self.airflow_env(db_url, broker_url)
        (self.workdir / "logs").mkdir()
        self.processes = Processes(env, self.workdir / "logs")
        self.db = MetadataDB(db_url)
        log(
            f"endpoint {self.endpoint}, database {args.db}, {self.executor_label}"
            + (f" (broker {broker_url})" if broker_url else "")
            + f", Airflow home {self.workdir}; airflow db migrate"
        )
        workers = args.celery_workers if args.executor == "celery" else 0
        components = AIRFLOW_2_COMPONENTS if AIRFLOW_2 else COMPONENTS
        start_airflow(self.processes, [c for c in components if c != "triggerer"], celery_workers=workers)
        for number in range(args.triggerers):
            self.start_triggerer(number)
        if AIRFLOW_2:
            wait_ready_from_db(self.processes, self.db, args.dag)
        else:
            wait_ready(self.processes, self.api, args.dag)

    @property
    def executor_label(self) -> str:
        """The executor, as the log and the report name it."""
        if self.args.executor == "celery":
            return f"CeleryExecutor ({self.args.celery_workers} workers x {self.args.parallelism})"
        return f"LocalExecutor ({self.args.parallelism} workers)"

    def airflow_env(self, db_url: str, broker_url: str = "") -> dict[str, str]:
        celery = self.args.executor == "celery"
        env = airflow_env(
            self.workdir,
            HERE / "dags",
            db_url,
            self.api_port,
            parallelism=self.args.parallelism,
            tasks=self.args.jobs,
            preload=FORKSERVER_PRELOAD,
            connections={CONN_ID: self.connection(self.endpoint)},
            executor=self.args.executor,
            broker_url=broker_url,
            celery_workers=self.args.celery_workers if celery else 0,
        )
        env |= {
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(self.args.jobs, 16)),
            "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "256",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": f"{self.args.health_threshold:g}",  # 2: an int
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": f"{min(5.0, self.args.health_threshold / 6):g}",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "3600",  # Airflow 2's name
            "AIRFLOW__TRIGGERER__DEFAULT_CAPACITY": str(max(1000, self.args.jobs + 1)),  # Airflow 2's name
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "FLEET_BENCH_JOBS": str(self.args.jobs),
            "FLEET_BENCH_POLL_INTERVAL": str(self.args.poll_interval),
            "FLEET_BENCH_DURATION": str(self.args.duration),
            "FLEET_BENCH_RETRIES": str(self.args.retries),
            "FLEET_BENCH_EXECUTION_TIMEOUT": str(self.args.execution_timeout),
            "FLEET_BENCH_CONN_ID": CONN_ID,
            "FLEET_BENCH_GROUP_SIZE": str(self.args.group_size),
            "FLEET_BENCH_SUBMIT_RATE": str(self.args.submit_rate or ""),
            "FLEET_BENCH_LONG_FIRST": str(self.args.long_fraction if self.args.longest_first else 0),
            "FLEET_BENCH_SEED": str(self.args.seed),
        }
        return env

    def connection(self, endpoint_url: str) -> str:
        extra: dict[str, Any] = {"region_name": REGION, "endpoint_url": endpoint_url}
        if self.args.role:
            extra |= {
                "role_arn": f"arn:aws:iam::{ACCOUNT}:role/bench",
                "service_config": {"sts": {"endpoint_url": self.endpoint}},
            }
        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra})

    def start_triggerer(self, number: int) -> None:
        """Start triggerer ``number``; its AWS calls reach the endpoint under the path ``/triggerer-<number>``."""
        env = self.processes.env
        self.processes.env = env | {
            f"AIRFLOW_CONN_{CONN_ID.upper()}": self.connection(f"{self.endpoint}/{self.caller(number)}")
        }
        try:
            self.processes.start(self.caller(number), "triggerer", "--skip-serve-logs")
        finally:
            self.processes.env = env

    @staticmethod
    def caller(number: int) -> str:
        return f"triggerer-{number}"

    def cpu_totals(self) -> dict[str, float]:
        """CPU seconds of each Airflow component so far: its processes now, and those killed before."""
        totals = dict(self.cpu)
        for name, seconds in self.processes.cpu_seconds().items():
            totals[name] = totals.get(name, 0.0) + seconds
        return totals

    def endpoint_cpu(self) -> float:
        """CPU seconds of the endpoint's process so far (0 if it is not found)."""
        return _process_cpu_seconds(self.endpoint_pid) if self.endpoint_pid else 0.0

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a component's whole process group, wait for it, and keep the CPU it used."""
        self.cpu[name] += self.processes.cpu_seconds().get(name, 0.0)
        process = self.processes.running.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what outlived a SIGTERM

    # -- the run ----------------------------------------------------------------------------------------

    def trigger(self) -> None:
        """Unpause and trigger the DAG; start sampling."""
        dag = self.args.dag
        self.cpu_at_trigger = self.cpu_totals()
        self.endpoint_cpu_at_trigger = self.endpoint_cpu()
        self.triggered_at = time.time()
        if AIRFLOW_2:
            self.run_id = f"fleet__{time.strftime('%Y%m%dT%H%M%S')}"
            trigger_dag_with_cli(self.processes, dag, self.run_id)
        else:
            self.run_id = trigger_dag(self.api, dag)["dag_run_id"]
        log(f"triggered {dag}: run {self.run_id}, {self.task_count} tasks, {self.args.jobs} models")
        self._sampler = threading.Thread(target=self._sample_loop, name="sampler", daemon=True)
        self._sampler.start()

    def wait(
        self, until: Any = None, timeout: float | None = None, what: str = "the DAG run to end", every: float = 1.0
    ) -> str:
        """Wait (bounded) until ``until()`` is true, or the DAG run ended; return the run's state.

        ``until()`` and the run's state are read every ``every`` seconds."""
        longest = self.args.duration * (self.args.long_factor if self.args.long_fraction else 1.0)
        timeout = timeout or self.args.timeout or max(900.0, 600 + 1.0 * self.args.jobs + 2 * longest)
        deadline, last = time.monotonic() + timeout, 0.0
        while True:
            state = self.run_state()
            if until is None and state in ("success", "failed"):
                if not self.ended_at:
                    self.ended_at, self.cpu_at_end = time.time(), self.cpu_totals()
                    self.endpoint_cpu_at_end = self.endpoint_cpu()
                return state
            if until is not None and until():
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            if self.processes.exited():
                raise RuntimeError(f"{', '.join(self.processes.exited())} exited while waiting for {what}")
            if time.monotonic() - last > 30:
                last = time.monotonic()
                states = ", ".join(f"{n} {s}" for s, n in sorted(self.task_states().items()))
                log(f"{time.time() - self.triggered_at:5.0f}s run {state}; tasks: {states}")
            time.sleep(every)

    def run_state(self) -> str:
        return self.db.run_state(self.args.dag, self.run_id)

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Rows of a read-only query on the metadata database (``:dag`` and ``:run`` are bound for you)."""
        return self.db.sql(query, dag=self.args.dag, run=self.run_id, **params)

    def task_states(self) -> collections.Counter[str]:
        """How many of the run's model (group) task instances are in each state (a ``plan`` task is not one)."""
        return self.db.task_states(self.args.dag, self.run_id, TASK_ID)

    def map_indexes(self, state: str) -> list[int]:
        query = (
            "SELECT map_index FROM task_instance"
            " WHERE dag_id = :dag AND run_id = :run AND task_id = :task AND state = :state"
        )
        return [int(row[0]) for row in self.sql(query, task=TASK_ID, state=state)]

    def bench(self, path: str, body: Any = None) -> Any:
        """GET (or POST ``body`` to) one of the endpoint's control routes (``jobs``, ``stats``, ``faults``, ...)."""
        return self.control.control(path, body)

    def job_name(self, map_index: int) -> str:
        """The Batch job name of a mapped task: ours derives it from the task instance, the official DAG sets it."""
        from airflow_ml_batch.jobs.batch import job_name_for

        if self.args.dag == "fleet_benchmark_official":
            return f"model-{map_index:05d}"
        return job_name_for(self.args.dag, TASK_ID, self.run_id, map_index)

    @property
    def grouped(self) -> bool:
        """Whether the run maps ``BatchFleetOperator`` over groups of models (one task instance, many jobs)."""
        return bool(self.args.dag == "fleet_benchmark_groups")

    @property
    def task_count(self) -> int:
        """Task instances of the run: one per model, or one per group of ``--group-size`` models."""
        if self.grouped:
            return -(-self.args.jobs // self.args.group_size)
        return int(self.args.jobs)

    def group_prefix(self, map_index: int) -> str:
        """The start of every job name of group ``map_index`` (``BatchFleetOperator``'s naming)."""
        from airflow_ml_batch.jobs.groups import group_key, group_prefix

        return group_prefix(TASK_ID, group_key(self.args.dag, TASK_ID, self.run_id, map_index))

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(self.args.sample_every):
            with contextlib.suppress(Exception):  # a sample lost to a busy database or endpoint is skipped
                self.samples.append(self._sample())

    def _sample(self) -> dict[str, Any]:
        """Triggerer RSS, the tasks in ``running`` state whose job is RUNNING at the endpoint, and how many
        task instances are deferred or finished."""
        running_tis = self.map_indexes("running")
        states = self.task_states()
        now = time.time()
        jobs = self.bench("jobs")
        running_jobs = {j["name"] for j in jobs.values() if j["started"] <= now < j["ends"]}
        if self.grouped:  # a group's task instance holds a slot while any job of the group runs
            running_groups = {name.partition("--")[0] + "--" for name in running_jobs}
            held = [i for i in running_tis if self.group_prefix(i) in running_groups]
        else:
            held = [i for i in running_tis if self.job_name(i) in running_jobs]
        triggerers = [p.pid for name, p in self.processes.running.items() if name.startswith("triggerer")]
        return {
            "t": now,
            "running_tis": len(running_tis),
            "slots_held_while_job_runs": len(held),
            "jobs_running": len(running_jobs),
            "triggerer_rss_mb": sum(_group_rss_mb(pid) for pid in triggerers),
            "deferred_or_done": sum(states[state] for state in ("deferred", "success", "failed", "skipped")),
        }

    # -- results ----------------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """What the report prints, from the endpoint, the database and the samples."""
        jobs = self.bench("jobs")
        stats = self.bench("stats")
        # fleet_benchmark_floor has no job: each task waits --duration
        longest = max((j["ends"] - j["created"] for j in jobs.values()), default=self.args.duration)
        ideal = max(longest, self.args.jobs / self.args.rate)
        calls = collections.Counter(stats["calls"])
        cpu = self.cpu_totals()
        at_end = self.cpu_at_end or cpu  # a run that did not end: until now
        during = {name: seconds - self.cpu_at_trigger.get(name, 0.0) for name, seconds in at_end.items()}
        by_model = jobs_by_model(jobs.values())
        created = [j["created"] - self.triggered_at for j in jobs.values()]
        endpoint_cpu = self.endpoint_cpu()
        return {
            "dag": self.args.dag,
            "executor": self.executor_label,
            "jobs": self.args.jobs,
            "wall": (self.ended_at or time.time()) - self.triggered_at,
            "ideal": ideal,
            "longest_job": longest,
            "peak_jobs_running": _peak_overlap(jobs.values()),
            "samples": len(self.samples),
            "max_slots_held": max((s["slots_held_while_job_runs"] for s in self.samples), default=0),
            "max_running_tis": max((s["running_tis"] for s in self.samples), default=0),
            "peak_triggerer_rss_mb": max((s["triggerer_rss_mb"] for s in self.samples), default=0.0),
            "calls": {op: calls.get(op, 0) for op in OPERATIONS} | dict(calls),
            "throttled": stats["throttled"],
            "submits": stats["submits"],
            "duplicate_submits": sum(1 for n in stats["submits"].values() if n > 1),
            "job_count": len(jobs),
            "models_with_a_job": len(by_model),
            "models_with_more_than_one_job": sum(1 for same in by_model.values() if len(same) > 1),
            "second_jobs_while_one_lived": second_jobs_while_one_lived(by_model),
            "terminated": stats["terminated"],
            "tasks": dict(self.task_states()),
            # The Airflow components' processes (not the endpoint, nor Postgres, nor Redis), from their start ...
            "cpu": cpu,
            "airflow_cpu": sum(cpu.values()),
            # ... and from just before the DAG run was triggered to its end.
            "cpu_during_run": during,
            "airflow_cpu_during_run": sum(during.values()),
            # the endpoint's process: the AWS side, to show it is not what bounds the run
            "endpoint_cpu": endpoint_cpu,
            "endpoint_cpu_during_run": (self.endpoint_cpu_at_end or endpoint_cpu) - self.endpoint_cpu_at_trigger,
            # when every task instance had deferred (or ended), from the trigger, as sampled; and the submissions
            "all_deferred_after": next(
                (s["t"] - self.triggered_at for s in self.samples if s["deferred_or_done"] >= self.task_count), None
            ),
            "first_job_created_after": min(created, default=None),
            "last_job_created_after": max(created, default=None),
            "state": self.run_state(),
        }


def jobs_by_model(jobs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The endpoint's jobs (name and timeline) by the model they are for (:func:`model_of`)."""
    by_model: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for job in jobs:
        by_model[model_of(job["name"])].append(job)
    return by_model


def second_jobs_while_one_lived(by_model: dict[str, list[dict[str, Any]]]) -> int:
    """Jobs started for a model while an earlier job of that model was still queued or running, or had
    succeeded: the duplicates a retry must never make. A job after an earlier one failed is a retry."""
    duplicates = 0
    for same in by_model.values():
        timeline = sorted(same, key=lambda job: job["created"])
        for k, job in enumerate(timeline[1:], start=1):
            duplicates += any(not e["fails"] or e["ends"] > job["created"] for e in timeline[:k])
    return duplicates


def model_of(job_name: str) -> str:
    """The model a job is for: a group's job names carry ``<prefix>--<index>-<label>-t<try>-a<attempt>``."""
    from airflow_ml_batch.jobs.groups import parse_job_name

    prefix = job_name.partition("--")[0] + "--"
    parsed = parse_job_name(prefix, job_name) if "--" in job_name else None
    return job_name if parsed is None else f"{prefix}{parsed[0]}"


def _peak_overlap(jobs: Any) -> int:
    """Most jobs RUNNING at once, from their start and end times."""
    events = sorted(e for j in jobs if j["started"] < j["ends"] for e in ((j["started"], 1), (j["ends"], -1)))
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _child_running(module: str) -> int:
    """The process id of this process's child running ``python -m module`` (Linux ``/proc``), or 0."""
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) != os.getpid():
                continue
            if module in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0"):
                return int(entry.name)
    return 0


def _process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` and its waited-for children (Linux ``/proc``), or 0."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid`` (Linux ``/proc``), MiB."""
    total = 0
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rpartition(")")[2].split()[2]) == pgid:
                total += int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def _exit_on_sigterm(*_: object) -> None:
    sys.exit(143)


def report(r: dict[str, Any]) -> None:
    """Print a fleet run's figures."""
    grouped = r.get("dag") == "fleet_benchmark_groups"
    executor = f", {r['executor']}" if r.get("executor") else ""
    print(f"\n== fleet: {r['jobs']} {'models in groups' if grouped else 'mapped tasks'} ({r.get('dag')}{executor}) ==")
    print(
        f"DAG run:                      {r['state']} in {r['wall']:.0f}s; ideal {r['ideal']:.0f}s "
        f"(longest job {r['longest_job']:.0f}s) -> {r['wall'] / r['ideal']:.2f}x ideal"
    )
    print("tasks by final state:         " + ", ".join(f"{s} {n}" for s, n in sorted(r["tasks"].items())))
    print(f"peak jobs running at once:    {r['peak_jobs_running']}")
    print(
        f"worker slots held while jobs run: max {r['max_slots_held']} over {r['samples']} samples "
        f"(task instances running at most: {r['max_running_tis']})"
    )
    print(f"jobs submitted twice:         {r['duplicate_submits']} (SubmitJob per job name > 1)")
    print(
        f"jobs at the endpoint:         {r['job_count']} for {r['jobs']} models; models with a job "
        f"{r['models_with_a_job']}, with more than one {r['models_with_more_than_one_job']}"
    )
    print(
        f"duplicate jobs:               {r['second_jobs_while_one_lived']} "
        "(a model's job started while an earlier one was queued, running or succeeded)"
    )
    print("API calls answered:           " + ", ".join(f"{op} {n}" for op, n in r["calls"].items()))
    print("throttled (429):              " + (", ".join(f"{op} {n}" for op, n in r["throttled"].items()) or "0"))
    print(f"triggerer peak RSS:           {r['peak_triggerer_rss_mb']:.0f} MiB (process tree, sampled)")
    models = max(r["jobs"], 1)
    print("CPU seconds, whole lifetime:  " + ", ".join(f"{n} {s:.1f}" for n, s in sorted(r["cpu"].items())))
    print(
        f"Airflow CPU, whole lifetime:  {r['airflow_cpu']:.1f} CPU-s, {r['airflow_cpu'] / models:.3f} per model "
        "(from each component's start)"
    )
    if "cpu_during_run" in r:
        during = r["cpu_during_run"]
        print("CPU seconds during the run:   " + ", ".join(f"{n} {s:.1f}" for n, s in sorted(during.items())))
        print(
            f"Airflow CPU during the run:   {r['airflow_cpu_during_run']:.1f} CPU-s, "
            f"{r['airflow_cpu_during_run'] / models:.3f} per model (from the trigger to the run's end)"
        )
    if r.get("endpoint_cpu"):
        print(
            f"endpoint CPU (not Airflow's): {r['endpoint_cpu']:.1f} CPU-s whole lifetime, "
            f"{r['endpoint_cpu_during_run']:.1f} during the run "
            f"({r['endpoint_cpu_during_run'] / max(r['wall'], 1e-9):.0%} of one core)"
        )
    if r.get("last_job_created_after") is not None:
        deferred = r.get("all_deferred_after")
        print(
            "queueing:                     "
            + (f"every task instance deferred {deferred:.0f}s after the trigger (sampled); " if deferred else "")
            + f"jobs submitted from {r['first_job_created_after']:.0f}s to {r['last_job_created_after']:.0f}s"
        )


class StopEarly(Exception):
    """SIGTERM or Ctrl-C while the DAG run is under way: stop, and report what was measured."""


def _stop_early(*_: object) -> None:
    raise StopEarly("stopped by a signal")


def main() -> int:
    options = parser()
    args = options.parse_args()
    try:
        check_options(args)
    except RuntimeError as error:
        options.error(str(error))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with Fleet(args) as fleet:
        fleet.trigger()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop_early)
        try:
            fleet.wait()
        except (RuntimeError, StopEarly) as error:  # a run that did not end still reports what it measured
            log(f"stopping early: {error}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        results = fleet.results()
    report(results)
    (Path.cwd() / f"fleet-{args.jobs}-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(results, indent=1))
    # a job after the model's earlier one failed is a retry; a job beside one that lived is a duplicate
    ok = results["state"] == "success" and results["max_slots_held"] == 0
    ok = ok and not results["second_jobs_while_one_lived"]
    print("result:                       " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
