"""Demo: run example_dags/monthly_demand_forecast.py through a real Airflow against a local AWS-shaped endpoint.

1. Starts moto's server on 127.0.0.1 behind a middleware that counts every AWS API call by operation,
   and creates a Batch job queue and the two job definitions there (``airflow_ml_batch.testing``).
2. Writes a models file of ``--models`` models (``example_dags/forecast_model/make_models.py``).
3. Starts Airflow's api-server, scheduler (LocalExecutor), dag-processor and triggerer, with SQLite and
   ``AIRFLOW_HOME`` in ``.demo/airflow`` (kept for inspection, wiped by the next run).
4. Unpauses and triggers ``monthly_demand_forecast`` through the REST API with that models file: the
   data-prep job, one ``BatchJobOperator`` task per model (each submits its job, defers, and ends from
   the triggerer's shared DescribeJobs poller), then the report (CSV and PNG chart in ``.demo/reports``).
5. Waits for the run (bounded by ``--timeout``) while sampling each component's memory, stops every
   process it started, and prints the report summary and what the tasks and the endpoint saw. Exits
   non-zero if anything failed.

Nothing reaches AWS, and nothing listens beyond 127.0.0.1. Usage: python scripts/demo.py [--models N]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from airflow_ml_batch.report import read_csv, summarize

ROOT = Path(__file__).resolve().parent.parent
MAKE_MODELS = ROOT / "example_dags" / "forecast_model" / "make_models.py"
DAGS_FOLDER = ROOT / "example_dags"
DEMO_DIR = ROOT / ".demo"
AIRFLOW_HOME = DEMO_DIR / "airflow"
REPORTS_DIR = DEMO_DIR / "reports"
MODELS_FILE = DEMO_DIR / "models.json"
DAG_ID = "monthly_demand_forecast"
CONN_ID = "aws_default"  # the example DAG's connection
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: What the scheduler's forkserver imports before it starts the LocalExecutor workers that fork the task runs:
#: the modules a worker forked straight from the scheduler would inherit, what a task run imports to parse
#: the DAG file, and the DAG file's own imports.
FORKSERVER_PRELOAD = (
    "airflow.executors.local_executor",
    "airflow.jobs.scheduler_job_runner",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "airflow.sdk",
    "airflow.providers.standard.decorators.python",
    "airflow_ml_batch.operators.batch",
    "airflow_ml_batch.fleet",
    "airflow_ml_batch.report",
)
#: The calls the summary always shows, even when none was made.
KEY_OPERATIONS = ("batch:SubmitJob", "batch:DescribeJobs", "batch:ListJobs", "batch:TerminateJob")


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# The local AWS endpoint.


class OperationCounter:
    """WSGI middleware counting AWS API calls as ``service:Operation`` before handing them to moto.

    The service comes from the SigV4 credential scope; the operation from ``X-Amz-Target`` (JSON
    protocols), ``Action`` (query protocols) or the request path matched against botocore's service
    model (REST protocols: Batch's ``POST /v1/describejobs`` is ``DescribeJobs``).
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._routes: dict[str, list[tuple[str, re.Pattern[str], str]]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not environ.get("PATH_INFO", "").startswith("/moto-api"):
            operation = self.operation(environ)
            with self._lock:
                self.calls[operation] += 1
        return self.app(environ, start_response)

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.calls)

    def operation(self, environ: dict[str, Any]) -> str:
        scope = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        service = scope.group(1) if scope else "unknown"
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return f"{service}:{target.rpartition('.')[2]}"
        action = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("Action")
        if not action and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
            action = urllib.parse.parse_qs(body.decode()).get("Action")
        if action:
            return f"{service}:{action[0]}"
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        for route_method, pattern, name in self._rest_routes(service):
            if route_method == method and pattern.fullmatch(path):
                return f"{service}:{name}"
        return f"{service}:{method} {path}"

    def _rest_routes(self, service: str) -> list[tuple[str, re.Pattern[str], str]]:
        with self._lock:
            if service not in self._routes:
                self._routes[service] = []
                with contextlib.suppress(Exception):  # an unknown service: counted by method and path
                    import botocore.session

                    model = botocore.session.get_session().get_service_model(service)
                    for name in model.operation_names:
                        http = model.operation_model(name).http
                        uri = re.escape(http["requestUri"].split("?")[0])
                        uri = re.sub(r"\\\{[^}]+?\\\+\\\}", ".+", uri)  # {Key+}
                        uri = re.sub(r"\\\{[^}]+\\\}", "[^/]+", uri)  # {Name}
                        self._routes[service].append((http["method"], re.compile(uri), name))
            return self._routes[service]


@contextlib.contextmanager
def counting_moto_server() -> Iterator[tuple[str, OperationCounter]]:
    """moto's server on a free port of 127.0.0.1, in a thread, behind an :class:`OperationCounter`."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    counter = OperationCounter(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        # AWS Batch without Docker: a submitted job succeeds at once.
        http_json("POST", f"{url}/moto-api/config", {"batch": {"use_docker": False}})
        yield url, counter
    finally:
        server.shutdown()
        thread.join(timeout=10)


def batch_jobs_by_status() -> collections.Counter[str]:
    """The status of every job the local Batch endpoint holds, read from moto's backend."""
    from moto.batch.models import batch_backends

    statuses: collections.Counter[str] = collections.Counter()
    for account in list(batch_backends.keys()):
        for region in list(batch_backends[account].keys()):
            jobs = list(batch_backends[account][region]._jobs.values())
            statuses.update(str(getattr(job.status, "value", job.status)) for job in jobs)
    return statuses


# Processes.


class Processes:
    """Every process the demo starts, each in its own session; :meth:`stop_all` ends them and their children."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        #: the largest resident memory seen per component, bytes (:meth:`sample_memory`)
        self.peak_rss: dict[str, int] = {}

    def start(self, name: str, *args: str) -> None:
        with open(self.log_dir / f"{name}.log", "wb") as output:
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the components in order
            )

    def run(self, *args: str, timeout: float) -> str:
        """Run an ``airflow`` CLI command to its end (bounded); return its stdout, raise if it failed."""
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} exited with {process.returncode}:\n{stderr[-3000:]}")
        return stdout

    def _stats(self) -> Iterator[tuple[str, list[str]]]:
        """``(component, /proc stat fields)`` of every process in a component's process group (Linux)."""
        groups = {process.pid: name for name, process in self.running.items()}
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[2]) in groups:  # process group: the component and what it started
                    yield groups[int(fields[2])], fields

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time of each component with all its processes, live and ended (their children's included)."""
        ticks = os.sysconf("SC_CLK_TCK")
        totals = dict.fromkeys(self.running, 0.0)
        for name, fields in self._stats():
            totals[name] += sum(int(f) for f in fields[11:15]) / ticks
        return totals

    def sample_memory(self) -> None:
        """Record each component's resident memory (all its processes) and keep the peak."""
        page = os.sysconf("SC_PAGE_SIZE")
        now = dict.fromkeys(self.running, 0)
        for name, fields in self._stats():
            now[name] += int(fields[21]) * page
        for name, rss in now.items():
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)

    def exited(self) -> list[str]:
        return [f"{name} (exit code {p.returncode})" for name, p in self.running.items() if p.poll() is not None]

    def stop_all(self, grace: float = 30.0) -> None:
        """SIGTERM each component's process group, SIGKILL what is left after ``grace`` seconds."""
        for process in self.running.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.running.values():
            _signal_group(process.pid, signal.SIGKILL)  # children that outlived their parent, too
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        leftover = self._leftover_pids()
        for pid in leftover:  # a child that left its session (a task process, say)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if leftover:
            log(f"killed {len(leftover)} leftover process(es): {sorted(leftover)}")

    def _leftover_pids(self) -> list[int]:
        """Processes still running with this demo's ``ML_BATCH_DEMO_RUN`` marker in their environment."""
        marker = f"ML_BATCH_DEMO_RUN={self.env['ML_BATCH_DEMO_RUN']}".encode()
        pids = []
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
        return pids

    def tails(self, lines: int = 25) -> str:
        out = []
        for name in self.running:
            path = self.log_dir / f"{name}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text))
        return "\n".join(out)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def wait_for(what: str, check: Callable[[], Any], timeout: float, processes: Processes, every: float = 2.0) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` or if a component exits."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):  # not up yet (URLError and HTTPError are OSErrors)
            result = check()
            if result:
                return result
        if processes.exited():
            raise RuntimeError(f"while waiting for {what}: {', '.join(processes.exited())} exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# Airflow.


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A throw-away Postgres (``initdb`` into ``workdir``, ``pg_ctl`` on a free port); yield its URL, then stop it."""
    data, port = workdir / "pgdata", free_port()
    data.mkdir(mode=0o700, parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(data, "nobody")
        workdir.chmod(0o755)
        as_user = ["runuser", "-u", "nobody", "--"]

    def pg(*args: str, timeout: float = 120) -> None:
        subprocess.run([*as_user, *args], check=True, timeout=timeout, stdout=subprocess.DEVNULL, cwd="/")

    pg("initdb", "-D", str(data), "-U", "airflow", "-A", "trust", "--no-sync")
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=300 -c shared_buffers=256MB"
    pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "start")
    try:
        pg(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "airflow",
            "-d",
            "postgres",
            "-qc",
            "CREATE DATABASE airflow",
        )
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", timeout=60)


def airflow_env(args: argparse.Namespace, endpoint_url: str, api_port: int, db_url: str) -> dict[str, str]:
    from airflow_ml_batch.testing import aws_connection_json

    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "AIRFLOW"))}
    parallelism = str(args.parallelism)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            # Task runs at once. A task holds a slot only while it submits its job: deferred, it holds none.
            "AIRFLOW__CORE__PARALLELISM": parallelism,
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": parallelism,
            # Each task run forks from a LocalExecutor worker. Starting the workers from a forkserver that has
            # imported what a task needs (Airflow 3.3+) spares every run the import of the operator's module.
            "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
            "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": ",".join(FORKSERVER_PRELOAD),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, args.models)),
            "AIRFLOW__TRIGGERER__CAPACITY": str(max(1000, args.models + 1)),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            # Thousands of task starts at once load the api-server; a task should wait, not fail (default 5 s).
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__API__MAXIMUM_PAGE_LIMIT": "1000",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # REST calls need no login
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the demo's run: no month-end run on unpause
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # no periodic re-parse during the demo
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            f"AIRFLOW_CONN_{CONN_ID.upper()}": aws_connection_json(endpoint_url),
            "AWS_EC2_METADATA_DISABLED": "true",  # never look for an instance role
            "FORECAST_POLL_INTERVAL": str(args.poll_interval),
            "ML_BATCH_DEMO_RUN": secrets.token_hex(8),  # finds any process of this run left behind
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class MetadataDB:
    """Read-only queries on Airflow's metadata database, to watch a run without loading the api-server.

    The REST API's ``GET .../dagRuns/{run_id}`` loads the DAG version of every task instance of the run
    (Airflow 3.3): polled every few seconds during a 5000-task run, it took a quarter of the api-server's CPU.
    """

    def __init__(self, db_url: str) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(db_url, pool_size=2)

    def sql(self, query: str, **params: Any) -> list[Any]:
        import sqlalchemy

        with self._engine.connect() as connection:
            return list(connection.execute(sqlalchemy.text(query), params))

    def run_state(self, dag_id: str, run_id: str) -> str:
        rows = self.sql("SELECT state FROM dag_run WHERE dag_id = :dag AND run_id = :run", dag=dag_id, run=run_id)
        return str(rows[0][0]) if rows else "none"

    def task_states(self, dag_id: str, run_id: str) -> collections.Counter[str]:
        """How many task instances of the run are in each state (one ``GROUP BY``)."""
        query = "SELECT state, COUNT(*) FROM task_instance WHERE dag_id = :dag AND run_id = :run GROUP BY state"
        rows = self.sql(query, dag=dag_id, run=run_id)
        return collections.Counter({str(state or "none"): int(n) for state, n in rows})

    def close(self) -> None:
        self._engine.dispose()


def run_demo(
    args: argparse.Namespace,
    processes: Processes,
    api: str,
    db: MetadataDB,
    counter: OperationCounter,
    result: dict[str, Any],
) -> None:
    """Start Airflow, trigger the DAG, and wait for its run, keeping in ``result`` what the summary needs.

    ``result`` is filled as the run goes (run id, state, seconds, task states), so a summary can be printed
    when the demo is interrupted or times out too.
    """
    log("airflow db migrate")
    processes.run("db", "migrate", timeout=300)
    for component in COMPONENTS:
        processes.start(
            component, component, *(("--skip-serve-logs",) if component in {"scheduler", "triggerer"} else ())
        )
    log(f"started {', '.join(COMPONENTS)} (logs in {processes.log_dir}); waiting until healthy")

    def healthy() -> bool:
        health = http_json("GET", f"{api}/api/v2/monitor/health", timeout=5)
        return all(
            health.get(part, {}).get("status") == "healthy" for part in ("scheduler", "triggerer", "dag_processor")
        )

    wait_for("the Airflow components to be healthy", healthy, 240, processes)

    def dag_parsed() -> bool:
        errors = http_json("GET", f"{api}/api/v2/importErrors", timeout=10)["import_errors"]
        if errors:
            raise RuntimeError(
                "DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}" for e in errors)
            )
        return bool(http_json("GET", f"{api}/api/v2/dags/{DAG_ID}", timeout=10)["dag_id"])

    wait_for(f"the dag-processor to parse {DAG_ID}", dag_parsed, 180, processes)
    http_json("PATCH", f"{api}/api/v2/dags/{DAG_ID}", {"is_paused": False})
    conf = {"models_file": str(MODELS_FILE), "report_location": str(REPORTS_DIR)}
    logical_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # the month the data prep job closes
    run = http_json("POST", f"{api}/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": logical_date, "conf": conf})
    run_id, triggered = run["dag_run_id"], time.monotonic()
    log(f"unpaused and triggered {DAG_ID}: run {run_id}, {args.models} models")

    state, last_report = run["state"], 0.0
    result.update(run_id=run_id, state=state, run_seconds=0.0)
    while state not in {"success", "failed"}:
        if time.monotonic() - triggered > args.timeout:
            raise RuntimeError(f"the DAG run did not finish within --timeout {args.timeout:.0f}s")
        if processes.exited():
            raise RuntimeError(f"{', '.join(processes.exited())} exited during the run")
        time.sleep(3)
        processes.sample_memory()
        state = db.run_state(DAG_ID, run_id)
        result.update(state=state, run_seconds=time.monotonic() - triggered)
        if time.monotonic() - last_report >= 15 or state in {"success", "failed"}:
            last_report = time.monotonic()
            result["task_states"] = db.task_states(DAG_ID, run_id)
            tasks = ", ".join(f"{n} {s}" for s, n in sorted(result["task_states"].items()))
            calls = counter.snapshot()
            log(
                f"{time.monotonic() - triggered:5.0f}s  run {state}; tasks: {tasks}; "
                f"SubmitJob {calls['batch:SubmitJob']}, DescribeJobs {calls['batch:DescribeJobs']}"
            )
    log(f"run {run_id} ended {state} after {result['run_seconds']:.1f}s")


def final_checks(processes: Processes, run_id: str) -> tuple[collections.Counter[str], str | None]:
    """Task states from ``airflow tasks states-for-dag-run`` and this package in ``airflow providers list``."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two CLI start-ups at once
        states = pool.submit(processes.run, "tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json", timeout=180)
        providers = pool.submit(processes.run, "providers", "list", "-o", "json", timeout=180)
        tasks = collections.Counter(f"{row['task_id']}:{row['state']}" for row in json.loads(states.result()))
        ours = next((p for p in json.loads(providers.result()) if p.get("package_name") == "airflow-ml-batch"), None)
    return tasks, None if ours is None else f"{ours['package_name']} {ours['version']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100, help="models, one Batch job each (default 100)")
    parser.add_argument("--timeout", type=float, help="seconds the DAG run may take (default: 900, more for >200)")
    parser.add_argument("--poll-interval", type=float, default=5, help="triggerer poll interval, s (default 5)")
    parser.add_argument("--parallelism", type=int, default=8, help="LocalExecutor worker processes (default 8)")
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="metadata database: SQLite (default) or a Postgres started from the system's binaries "
        "(initdb, pg_ctl; needs psycopg2); use postgres for more than about 1000 models",
    )
    args = parser.parse_args()
    if args.models < 1:
        parser.error("--models must be at least 1")
    args.timeout = args.timeout or max(900.0, 4.5 * args.models)

    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on `kill` as on Ctrl-C
    for directory in (AIRFLOW_HOME, REPORTS_DIR, DEMO_DIR / "postgres"):
        shutil.rmtree(directory, ignore_errors=True)
    (AIRFLOW_HOME / "component-logs").mkdir(parents=True)
    subprocess.run(
        [sys.executable, str(MAKE_MODELS), "--count", str(args.models), "--output", str(MODELS_FILE)], check=True
    )
    for name in [n for n in os.environ if n.startswith(("AWS_", "AIRFLOW"))]:  # never touch a real account
        del os.environ[name]
    os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"  # this process only; the components log at INFO

    api_port = free_port()
    result: dict[str, Any] = {}
    error: BaseException | None = None
    cpu: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        endpoint_url, counter = stack.enter_context(counting_moto_server())
        if args.db == "postgres":
            db_url = stack.enter_context(postgres(DEMO_DIR / "postgres"))
        else:
            db_url = f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}"
        env = airflow_env(args, endpoint_url, api_port, db_url)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("AIRFLOW", "AWS_"))})
        processes = Processes(env, AIRFLOW_HOME / "component-logs")
        db = MetadataDB(db_url)
        stack.callback(db.close)
        try:
            from airflow_ml_batch.testing import create_batch_queue

            queue = create_batch_queue(CONN_ID, extra_job_definitions=("forecast-data-prep",))
            log(f"local AWS endpoint {endpoint_url}: queue {queue['job_queue']}; models file {MODELS_FILE}")
            run_demo(args, processes, f"http://127.0.0.1:{api_port}", db, counter, result)
        except (Exception, KeyboardInterrupt, SystemExit) as caught:
            error = caught
            if not isinstance(caught, (KeyboardInterrupt, SystemExit)):
                print(processes.tails(), file=sys.stderr)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave processes behind
                signal.signal(sig, signal.SIG_IGN)
            cpu = processes.cpu_seconds()
            log("stopping the Airflow components")
            processes.stop_all()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        calls = counter.snapshot()
        jobs = batch_jobs_by_status()
        tasks: collections.Counter[str] = collections.Counter()
        provider = None
        if error is None:  # while the metadata database still runs
            try:
                tasks, provider = final_checks(processes, result["run_id"])
            except Exception as caught:
                error = caught
    cpu["endpoint and demo"] = time.process_time()

    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
    if interrupted:
        log("interrupted; every process it started is stopped")
        error = RuntimeError("interrupted")
    succeeded = sum(n for key, n in tasks.items() if key.endswith(":success"))
    failed = sum(n for key, n in tasks.items() if key.endswith((":failed", ":upstream_failed")))
    forecast = sum(n for key, n in tasks.items() if key.startswith("forecast:"))
    other = {key: n for key, n in sorted(tasks.items()) if not key.endswith(":success")}
    submitted = calls["batch:SubmitJob"]
    operations = {op: calls.get(op, 0) for op in KEY_OPERATIONS} | dict(sorted(calls.items()))
    print()
    print("== airflow-ml-batch demo: summary ==")
    if error is not None:
        print(f"error:               {error}")
    if result:
        print(f"DAG run:             {DAG_ID} {result['run_id']} {result['state']} in {result['run_seconds']:.1f}s")
    if tasks:
        print(
            f"tasks succeeded:     {succeeded} of {sum(tasks.values())} "
            f"(prepare_data, plan, {forecast} forecast, report)"
        )
        print(
            f"tasks failed:        {failed}"
            + (f" ({', '.join(f'{n} {key}' for key, n in other.items())})" if other else "")
        )
    elif result.get("task_states"):  # the run did not end: its task states at the last check
        print(
            "task states seen:    "
            + ", ".join(f"{n} {state}" for state, n in sorted(result["task_states"].items()))
            + f" (at {result['run_seconds']:.0f}s)"
        )
    print(f"jobs submitted:      {submitted}")
    print(f"jobs succeeded:      {jobs['SUCCEEDED']}")
    print(f"jobs failed:         {jobs['FAILED']}")
    print(f"DescribeJobs calls:  {calls['batch:DescribeJobs']} (up to 100 jobs per call)")
    print("AWS calls by operation:")
    for operation, count in operations.items():
        print(f"  {operation:32} {count}")
    print(f"wall time:           {time.monotonic() - started:.1f}s in all (Airflow start, run, stop)")
    print("CPU time:            " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in cpu.items()))
    print("peak memory:         " + ", ".join(f"{n} {b / 2**20:.0f} MB" for n, b in processes.peak_rss.items()))
    report_files = sorted(REPORTS_DIR.glob("*/report.*"))
    report_csv = next((path for path in report_files if path.suffix == ".csv"), None)
    outcomes = read_csv(report_csv) if report_csv else []
    print("report:")
    print(textwrap.indent(summarize(outcomes), "  ") if outcomes else "  NOT WRITTEN")
    for path in report_files:
        print(f"  {path.suffix[1:].upper()}: {path}")
    if tasks:  # the final checks ran
        print(f"airflow providers list: {provider or 'airflow-ml-batch NOT FOUND'}")
    print(f"Airflow home, with every component's and task's log: {AIRFLOW_HOME}")
    ok = (
        error is None
        and result.get("state") == "success"
        and forecast == args.models
        and succeeded == sum(tasks.values())
        and submitted == args.models + 1  # and the data-prep job
        and jobs["SUCCEEDED"] == args.models + 1
        and not jobs["FAILED"]
        and len(outcomes) == args.models
        and all(outcome.succeeded for outcome in outcomes)
        and len(report_files) == 2
        and provider is not None
    )
    print("result:              OK" if ok else "result:              FAILED")
    return 130 if interrupted else 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
