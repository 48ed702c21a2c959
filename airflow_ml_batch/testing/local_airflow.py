"""A real Airflow on this machine against a local endpoint: its processes, database, REST API and settings.

What ``scripts/demo.py`` and the fleet benchmarks share: :func:`airflow_env` (LocalExecutor by default,
or CeleryExecutor with a Redis broker; the api-server on 127.0.0.1, an ``aws`` connection to the endpoint),
:class:`Processes` (every component in its own session, stopped with all its children), :func:`start_airflow`
and :func:`wait_ready`, a throw-away :func:`postgres` and :func:`redis`, and :class:`MetadataDB` to watch a
run without loading the api-server.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Airflow's components, as ``airflow <component>`` starts them.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: What Airflow 2 runs of them (no api-server: the harness reads the database and runs the CLI; the scheduler
#: parses the DAG files itself, as Amazon MWAA's Airflow 2 environments do).
AIRFLOW_2_COMPONENTS = ("scheduler", "triggerer")


def airflow_2() -> bool:
    """Whether the Airflow installed beside this package is an Airflow 2 release."""
    from importlib.metadata import version

    return int(version("apache-airflow").split(".")[0]) < 3


#: The executors :func:`airflow_env` configures: ``local`` (LocalExecutor) or ``celery`` (CeleryExecutor).
EXECUTORS = ("local", "celery")
#: The name of Celery worker ``K`` among the components (``celery-worker-0``, ...).
CELERY_WORKER = "celery-worker-{}"


def airflow_env(
    home: Path,
    dags_folder: Path,
    db_url: str,
    api_port: int,
    *,
    parallelism: int,
    tasks: int,
    preload: Sequence[str],
    connections: Mapping[str, str],
    executor: str = "local",
    broker_url: str = "",
    celery_workers: int = 0,
) -> dict[str, str]:
    """The environment of Airflow's components: this process's, without ``AWS_*``, ``AIRFLOW*`` and
    ``PYTHONDONTWRITEBYTECODE``, plus the executor's settings (:func:`executor_env`), room for ``tasks``
    mapped tasks and deferred triggers, the api-server on 127.0.0.1:``api_port`` (every REST call an
    admin's) and ``connections`` (``conn_id`` -> JSON)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "AIRFLOW"))}
    # Each task run imports its DAG file's modules anew: without cached bytecode (as pip leaves it), every
    # run would compile them from source, a cost no deployment pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    api = f"http://127.0.0.1:{api_port}"
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        **executor_env(
            executor,
            db_url,
            parallelism=parallelism,
            preload=preload,
            broker_url=broker_url,
            celery_workers=celery_workers,
        ),
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, tasks)),
        "AIRFLOW__TRIGGERER__CAPACITY": str(max(1000, tasks + 1)),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__MAXIMUM_PAGE_LIMIT": "1000",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # REST calls need no login
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never look for an instance role
        "ML_BATCH_DEMO_RUN": secrets.token_hex(8),  # Processes finds any process of this run left behind
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"AIRFLOW_CONN_{conn_id.upper()}": uri for conn_id, uri in connections.items()}
    return env


def executor_env(
    executor: str,
    db_url: str,
    *,
    parallelism: int,
    preload: Sequence[str],
    broker_url: str = "",
    celery_workers: int = 0,
) -> dict[str, str]:
    """The settings of each executor, and of the metadata database they go with.

    ``local``: a LocalExecutor of ``parallelism`` workers forked from a forkserver that imported ``preload``.
    ``celery``: a CeleryExecutor whose broker is ``broker_url`` (Redis, :func:`redis`) and result backend the
    metadata database; ``celery_workers`` workers (:func:`start_celery_workers`) of ``parallelism`` task runs
    each, so ``[core] parallelism`` is their total. The Celery workers do not use ``preload``.
    """
    if executor == "local":
        return {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            # Each task run forks from a LocalExecutor worker. Starting the workers from a forkserver that has
            # imported what a task needs (Airflow 3.3+) spares every run the import of the operator's module.
            "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
            "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": ",".join(preload),
        }
    if executor == "celery":
        if not broker_url or celery_workers < 1:
            raise ValueError("the CeleryExecutor needs a broker_url and at least one Celery worker")
        if not db_url.startswith("postgresql"):
            raise ValueError(
                f"the CeleryExecutor's result backend is the metadata database, which must be Postgres: {db_url}"
            )
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism * celery_workers),
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(parallelism),
        }
    raise ValueError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")


def check_executor(executor: str) -> None:
    """Raise, saying what to install, if what ``executor`` needs is missing (before anything is started)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if executor != "celery":
        return
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("the Redis server (`redis-server` on PATH; Debian/Ubuntu: apt-get install redis-server)")
    for module, package in (("airflow.providers.celery", "apache-airflow-providers-celery"), ("redis", "redis")):
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(module) is not None:
                continue
        missing.append(f"the Python package {package} (pip install {package})")
    if missing:
        raise RuntimeError("the CeleryExecutor needs " + " and ".join(missing))


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
            print(f"killed {len(leftover)} leftover process(es): {sorted(leftover)}", flush=True)

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

    def pg(program: str, *args: str, timeout: float = 120) -> None:
        command = [*as_user, postgres_program(program), *args]
        subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL, cwd="/")

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


def postgres_program(name: str) -> str:
    """The path of Postgres's ``name`` (``initdb``, ``pg_ctl``, ``psql``): on ``PATH``, or else where Debian and
    Ubuntu install the server (``/usr/lib/postgresql/<version>/bin``, the newest version)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda path: _version_key(path.parent.parent.name)
    )
    if not versions:
        raise RuntimeError(
            f"Postgres's {name} is neither on PATH nor in /usr/lib/postgresql/*/bin "
            "(Debian/Ubuntu: apt-get install postgresql)"
        )
    return str(versions[-1])


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


@contextlib.contextmanager
def redis(workdir: Path, timeout: float = 30) -> Iterator[str]:
    """A throw-away Redis (``redis-server`` in ``workdir``, on a free 127.0.0.1 port, nothing saved to disk);
    yield its URL, then stop it."""
    data, port = workdir / "redis", free_port()
    data.mkdir(parents=True)
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data)]
    command += ["--save", "", "--appendonly", "no", "--logfile", str(data / "redis.log"), "--daemonize", "no"]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _redis_pong(port):
            if server.poll() is not None:
                raise RuntimeError(f"redis-server exited with {server.returncode}; see {data / 'redis.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {port} within {timeout:.0f}s")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _redis_pong(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


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

    def task_states(self, dag_id: str, run_id: str, task_id: str | None = None) -> collections.Counter[str]:
        """How many task instances of the run (of task ``task_id`` only, if given) are in each state."""
        task = {} if task_id is None else {"task": task_id}
        query = "SELECT state, COUNT(*) FROM task_instance WHERE dag_id = :dag AND run_id = :run"
        query += " AND task_id = :task GROUP BY state" if task else " GROUP BY state"
        rows = self.sql(query, dag=dag_id, run=run_id, **task)
        return collections.Counter({str(state or "none"): int(n) for state, n in rows})

    def close(self) -> None:
        self._engine.dispose()


def start_airflow(
    processes: Processes,
    components: Sequence[str] = COMPONENTS,
    migrate_timeout: float = 600,
    *,
    celery_workers: int = 0,
) -> None:
    """``airflow db migrate``, then start ``components`` and ``celery_workers`` Celery workers (the
    CeleryExecutor's: :func:`start_celery_workers`), their logs in ``processes.log_dir``."""
    processes.run("db", "migrate", timeout=migrate_timeout)
    for component in components:
        processes.start(
            component, component, *(("--skip-serve-logs",) if component in {"scheduler", "triggerer"} else ())
        )
    start_celery_workers(processes, celery_workers)


def start_celery_workers(processes: Processes, count: int) -> None:
    """Start ``count`` ``airflow celery worker`` processes, named ``celery-worker-0``, ... among the components.

    Each runs ``[celery] worker_concurrency`` task runs at once, has a hostname of its own and serves no
    logs (the api-server reads the task logs from the shared ``AIRFLOW_HOME``)."""
    if count and processes.env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
        raise ValueError("Celery workers need airflow_env(executor='celery')")
    for number in range(count):
        name = CELERY_WORKER.format(number)
        processes.start(name, "celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs")


def wait_ready(processes: Processes, api: str, dag_id: str, timeout: float = 300) -> None:
    """Wait until the scheduler, triggerer and dag-processor are healthy, every Celery worker is ready to
    take tasks, and ``dag_id`` is parsed."""

    def healthy() -> bool:
        health = http_json("GET", f"{api}/api/v2/monitor/health", timeout=5)
        return all(health.get(p, {}).get("status") == "healthy" for p in ("scheduler", "triggerer", "dag_processor"))

    def parsed() -> bool:
        errors = http_json("GET", f"{api}/api/v2/importErrors", timeout=10)["import_errors"]
        if errors:
            raise RuntimeError(
                "DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stack_trace']}" for e in errors)
            )
        return bool(http_json("GET", f"{api}/api/v2/dags/{dag_id}", timeout=10)["dag_id"])

    def workers_ready() -> bool:
        workers = [name for name in processes.running if name.startswith(CELERY_WORKER.format(""))]
        return all(_celery_worker_ready(processes.log_dir / f"{name}.log") for name in workers)

    wait_for("the Airflow components to be healthy", healthy, timeout, processes)
    wait_for("the Celery workers to be ready", workers_ready, timeout, processes)
    wait_for(f"the dag-processor to parse {dag_id}", parsed, timeout, processes)


def _celery_worker_ready(log: Path) -> bool:
    """Whether a Celery worker has logged ``<hostname> ready.``: connected to the broker, consuming its queue."""
    return re.search(r"@\S+ ready\.", log.read_text(errors="replace")) is not None


def wait_ready_from_db(processes: Processes, db: MetadataDB, dag_id: str, timeout: float = 300) -> None:
    """Airflow 2, with no api-server: wait until a scheduler and a triggerer heartbeat in the metadata database
    and ``dag_id`` is serialized there (any import error fails)."""

    def healthy() -> bool:
        query = "SELECT DISTINCT job_type FROM job WHERE state = 'running' AND latest_heartbeat > :since"
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=60)
        return {"SchedulerJob", "TriggererJob"} <= {str(row[0]) for row in db.sql(query, since=since)}

    def parsed() -> bool:
        errors = db.sql("SELECT filename, stacktrace FROM import_error")
        if errors:
            raise RuntimeError("DAG import errors:\n" + "\n".join(f"{name}: {trace}" for name, trace in errors))
        return bool(db.sql("SELECT dag_id FROM serialized_dag WHERE dag_id = :dag", dag=dag_id))

    wait_for("the scheduler and the triggerer to heartbeat", healthy, timeout, processes)
    wait_for(f"the scheduler to parse {dag_id}", parsed, timeout, processes)


def trigger_dag_with_cli(processes: Processes, dag_id: str, run_id: str) -> None:
    """Airflow 2, with no api-server: unpause ``dag_id`` and trigger run ``run_id`` with Airflow's CLI."""
    processes.run("dags", "unpause", dag_id, timeout=300)
    processes.run("dags", "trigger", dag_id, "--run-id", run_id, timeout=300)


def trigger_dag(api: str, dag_id: str, logical_date: str | None = None, conf: dict[str, Any] | None = None) -> Any:
    """Unpause ``dag_id`` and trigger a run through the REST API; the new DAG run."""
    http_json("PATCH", f"{api}/api/v2/dags/{dag_id}", {"is_paused": False})
    return http_json("POST", f"{api}/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf or {}})
