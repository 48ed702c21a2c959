"""Demo: run example_dags/monthly_demand_forecast.py through a real Airflow against the local AWS endpoint.

1. Writes a models file of ``--models`` models (``example_dags/forecast_model/make_models.py``) and each
   model's sales history (``.demo/history``): a few models get bad history (empty or malformed), a few
   lose their first attempt's Spot instance.
2. Starts the package's AWS-shaped endpoint on 127.0.0.1 (``airflow_ml_batch.testing.endpoint``), whose
   Batch jobs are local processes (``ContainerRunner``): each model job runs the reference model
   (``example_dags/forecast_model/model.py``) with the job's environment, ``--slots`` at once (the rest wait
   RUNNABLE), its output the job's CloudWatch log, its exit code the outcome; a job stays RUNNING for its
   ``expected_minutes`` compressed (``--minute-seconds``). Batch's API rate limit is on, every call counted.
3. Starts Airflow's api-server, scheduler (LocalExecutor), dag-processor and triggerer, with SQLite and
   ``AIRFLOW_HOME`` in ``.demo/airflow`` (kept for inspection, wiped by the next run).
4. Prints the Airflow UI's address (no login: every visitor is an admin), unpauses and triggers
   ``monthly_demand_forecast`` through the REST API with that models file: the data-prep job, one
   ``BatchJobOperator`` task per model (each submits its job, defers, and ends from the triggerer's shared
   DescribeJobs poller; a model that fails is retried by Airflow, a reclaimed one by Batch), then the
   report (``FleetReportOperator``: CSV, PNG chart and HTML page in ``.demo/reports``, from the tasks'
   results; it fails the run, as the bad models failed).
5. Waits for the run (bounded by ``--timeout``) while sampling each component's memory, stops every
   process it started, and prints the report summary and what the tasks and the endpoint saw. Exits
   non-zero unless exactly the models meant to fail failed, the HTML page has one row per model and each
   successful model's own log lines are in its task's log (``job_logs="always"``).

``--mode group`` runs ``monthly_demand_forecast_groups`` instead: one ``BatchFleetOperator`` task per group
of 100 models, whose trigger submits, watches and retries the group's jobs (a failed model runs once more
within the try, then again in each of the task's retries); the report and the checks are the same, and
each map index must be labelled ``"<first id> .. <last id> (<n> models)"`` and each failed model named in its
group's table of models in the task log.

Nothing reaches AWS, and nothing listens beyond 127.0.0.1.
Usage: python scripts/demo.py [--models N] [--mode model|group]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import html.parser
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_ml_batch.fleet import batch_kwargs, groups, load_models
from airflow_ml_batch.jobs.outcomes import COLUMNS
from airflow_ml_batch.report import model_ids, read_csv, summarize
from airflow_ml_batch.testing import aws_connection_json, local_airflow
from airflow_ml_batch.testing.endpoint import ACCOUNT, REGION, ContainerRunner, Endpoint, Image
from airflow_ml_batch.testing.local_airflow import MetadataDB, Processes
from airflow_ml_batch.testing.sales import DEFECTS, write_history

ROOT = Path(__file__).resolve().parent.parent
MAKE_MODELS = ROOT / "example_dags" / "forecast_model" / "make_models.py"
MODEL = ROOT / "example_dags" / "forecast_model" / "model.py"
DAGS_FOLDER = ROOT / "example_dags"
DEMO_DIR = ROOT / ".demo"
AIRFLOW_HOME = DEMO_DIR / "airflow"
REPORTS_DIR = DEMO_DIR / "reports"
MODELS_FILE = DEMO_DIR / "models.json"
HISTORY_DIR = DEMO_DIR / "history"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
#: What each job definition's container runs here: the model on the history the demo wrote, and a data-prep
#: stand-in that prints its command (the history is already there).
IMAGES = {
    "forecast": Image(f"{REGISTRY}/forecast:2026.12", (sys.executable, str(MODEL))),
    "forecast-data-prep": Image(
        f"{REGISTRY}/forecast-data-prep:2026.12",
        (sys.executable, "-c", "import sys; print('data prep:', *sys.argv[1:])"),
    ),
}
#: Of every 100 models (by a hash of the id), how many get bad history and how many a Spot reclaim.
BAD_HISTORY_PER_100, RECLAIMED_PER_100 = 3, 2
#: The example file's two DAGs: one ``forecast`` task per model, or one per group of models.
DAG_IDS = {"model": "monthly_demand_forecast", "group": "monthly_demand_forecast_groups"}
#: What the group DAG sets: models per group and ``model_retries`` (extra jobs a failed model gets in a try).
GROUP_SIZE, MODEL_RETRIES = 100, 1
CONN_ID = "aws_default"  # the example DAG's connection
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
    "airflow_ml_batch.operators.report",
)
#: The calls the summary always shows, even when none was made.
KEY_OPERATIONS = ("SubmitJob", "DescribeJobs", "ListJobs", "TerminateJob")


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Fleet:
    """The demo's models: each one's hold (s), and the ones meant to fail or to lose a Spot instance."""

    holds: dict[str, float]
    bad: dict[str, str]  # model id -> defect
    reclaimed: frozenset[str]
    minute_seconds: float


def write_fleet(count: int, minute_seconds: float | None, slots: int) -> Fleet:
    """The models file (datasets in :data:`HISTORY_DIR`) and every model's history.

    Without ``minute_seconds``, an expected minute lasts what fits the jobs into about 150 s of ``slots``.
    Each model's hold is its expected duration so compressed, varied by a factor drawn from its id.
    """
    subprocess.run([sys.executable, str(MAKE_MODELS), "--count", str(count), "--output", str(MODELS_FILE)], check=True)
    document = json.loads(MODELS_FILE.read_text())
    document["defaults"]["dataset"] = f"{HISTORY_DIR}/{{id}}.csv"
    MODELS_FILE.write_text(json.dumps(document, indent=1))
    expected = {
        m["id"]: float(m.get("expected_minutes", document["defaults"]["expected_minutes"])) for m in document["models"]
    }
    scale = minute_seconds or min(0.5, 150.0 * slots / sum(expected.values()))
    bad: dict[str, str] = {}
    reclaimed = set()
    for model_id in expected:
        draw = int(hashlib.sha256(f"{model_id}/demo".encode()).hexdigest()[:8], 16) % 100
        if draw < BAD_HISTORY_PER_100:
            bad[model_id] = DEFECTS[len(bad) % len(DEFECTS)]
        elif draw < BAD_HISTORY_PER_100 + RECLAIMED_PER_100:
            reclaimed.add(model_id)
        write_history(HISTORY_DIR / f"{model_id}.csv", model_id, bad.get(model_id))
    # A model's duration varies around its expected one (x0.5 to x2, most near x1), as real runs do.
    holds = {k: v * scale * min(2.0, max(0.5, random.Random(k).lognormvariate(0, 0.3))) for k, v in expected.items()}
    return Fleet(holds, bad, frozenset(reclaimed), scale)


def forecast_tasks(mode: str, bad: Iterable[str]) -> tuple[int, int]:
    """How many ``forecast`` tasks the run maps, and how many of them hold a model meant to fail: one task per
    model, or one per group as the group DAG splits the models file (longest expected job first)."""
    entries, failing = batch_kwargs(load_models(MODELS_FILE)), set(bad)
    if mode == "model":
        return len(entries), len(failing)
    split = [set(model_ids(group)) for group in groups(entries, size=GROUP_SIZE)]
    return len(split), sum(1 for group in split if group & failing)


def demo_env(args: argparse.Namespace, endpoint_url: str, api_port: int, db_url: str) -> dict[str, str]:
    """The components' environment: the shared one, plus what this demo sets."""
    env = local_airflow.airflow_env(
        AIRFLOW_HOME,
        DAGS_FOLDER,
        db_url,
        api_port,
        parallelism=args.parallelism,
        tasks=args.models,
        preload=FORKSERVER_PRELOAD,
        connections={CONN_ID: aws_connection_json(endpoint_url)},
    )
    env |= {
        # Task runs at once. A task holds a slot only while it submits its job: deferred, it holds none.
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(args.parallelism),
        # Thousands of task starts at once load the api-server; a task should wait, not fail (default 5 s).
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the demo's run: no month-end run on unpause
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # no periodic re-parse during the demo
        "FORECAST_POLL_INTERVAL": str(args.poll_interval),
        "FORECAST_RETRY_DELAY": "10",  # a failed model's next try after 10 s (the DAG's default: 2 min)
    }
    return env


def run_demo(
    args: argparse.Namespace, processes: Processes, api: str, db: MetadataDB, aws: Endpoint, result: dict[str, Any]
) -> None:
    """Start Airflow, trigger the DAG, and wait for its run, keeping in ``result`` what the summary needs.

    ``result`` is filled as the run goes (run id, state, seconds, task states), so a summary can be printed
    when the demo is interrupted or times out too.
    """
    log("airflow db migrate")
    local_airflow.start_airflow(processes, migrate_timeout=300)
    log(f"started Airflow (logs in {processes.log_dir}); waiting until healthy")
    dag_id = DAG_IDS[args.mode]
    local_airflow.wait_ready(processes, api, dag_id, timeout=240)
    log(f"Airflow UI: {api}/dags/{dag_id} (no login: [core] simple_auth_manager_all_admins makes everyone admin)")
    conf = {"models_file": str(MODELS_FILE), "report_location": str(REPORTS_DIR)}
    logical_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # the month the data prep job closes
    run = local_airflow.trigger_dag(api, dag_id, logical_date, conf)
    run_id, triggered = run["dag_run_id"], time.monotonic()
    log(f"unpaused and triggered {dag_id}: run {run_id}, {args.models} models")

    state, last_report = run["state"], 0.0
    result.update(run_id=run_id, state=state, run_seconds=0.0)
    while state not in {"success", "failed"}:
        if time.monotonic() - triggered > args.timeout:
            raise RuntimeError(f"the DAG run did not finish within --timeout {args.timeout:.0f}s")
        if processes.exited():
            raise RuntimeError(f"{', '.join(processes.exited())} exited during the run")
        time.sleep(3)
        processes.sample_memory()
        state = db.run_state(dag_id, run_id)
        result.update(state=state, run_seconds=time.monotonic() - triggered)
        if time.monotonic() - last_report >= 15 or state in {"success", "failed"}:
            last_report = time.monotonic()
            result["task_states"] = db.task_states(dag_id, run_id)
            tasks = ", ".join(f"{n} {s}" for s, n in sorted(result["task_states"].items()))
            log(
                f"{time.monotonic() - triggered:5.0f}s  run {state}; tasks: {tasks}; "
                f"SubmitJob {aws.calls['SubmitJob']}, DescribeJobs {aws.calls['DescribeJobs']}"
            )
    log(f"run {run_id} ended {state} after {result['run_seconds']:.1f}s")


def final_checks(processes: Processes, dag_id: str, run_id: str) -> tuple[collections.Counter[str], str | None]:
    """Task states from ``airflow tasks states-for-dag-run`` and this package in ``airflow providers list``."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two CLI start-ups at once
        states = pool.submit(processes.run, "tasks", "states-for-dag-run", dag_id, run_id, "-o", "json", timeout=180)
        providers = pool.submit(processes.run, "providers", "list", "-o", "json", timeout=180)
        tasks = collections.Counter(f"{row['task_id']}:{row['state']}" for row in json.loads(states.result()))
        ours = next((p for p in json.loads(providers.result()) if p.get("package_name") == "airflow-ml-batch"), None)
    return tasks, None if ours is None else f"{ours['package_name']} {ours['version']}"


#: The header of the table of every model a group task writes into its log, as words.
TABLE_HEADER = " ".join(COLUMNS).split()
#: A group's map index label: ``"<first id> .. <last id> (<n> models)"``.
GROUP_LABEL = re.compile(r"(?P<first>\S+) \.\. (?P<last>\S+) \((?P<count>\d+) models\)")
#: The lines a model job's log holds that the endpoint adds (an attempt lost to a Spot reclaim), not the model.
ENDPOINT_NOTE = "(attempt "


class _TableRows(html.parser.HTMLParser):
    """Counts the ``<tr>`` rows in the ``<tbody>`` of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.in_body, self.rows = False, 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.in_body = False


def html_rows(path: Path | None) -> int | None:
    """How many data rows (``<tbody>`` rows) the report page's table has; ``None`` without the page."""
    if path is None or not path.is_file():
        return None
    parser = _TableRows()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.rows


def task_log_events(path: Path) -> list[str]:
    """The messages of an Airflow 3 task log file (JSON lines, each record's ``event``; a plain line as is)."""
    events = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        events.append(str(record.get("event", "")) if isinstance(record, dict) else raw)
    return events


def forecast_log_files(dag_id: str, run_id: str) -> dict[int, list[Path]]:
    """Each ``forecast`` map index's log files (every try's, the worker's and the triggerer's), by Airflow 3's
    layout: ``logs/dag_id=.../run_id=.../task_id=forecast/map_index=N/attempt=K.log[.trigger.T.log]``."""
    base = AIRFLOW_HOME / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=forecast"
    files: dict[int, list[Path]] = collections.defaultdict(list)
    for path in sorted(base.glob("map_index=*/attempt=*.log*")):
        with contextlib.suppress(ValueError):
            files[int(path.parent.name.partition("=")[2])].append(path)
    return files


@dataclass
class TaskLogs:
    """What the ``forecast`` tasks' log files hold: each file's lines, the copied models' logs, the tables."""

    lines: dict[Path, list[str]]
    #: "Model <id> (Job <job id>)" heading (group mode) -> the file it is in
    headings: dict[str, Path]
    #: model id -> (its row in a group's table of every model, the file)
    table_rows: dict[str, list[tuple[str, Path]]]

    @classmethod
    def read(cls, files: dict[int, list[Path]]) -> TaskLogs:
        lines: dict[Path, list[str]] = {}
        headings: dict[str, Path] = {}
        table_rows: dict[str, list[tuple[str, Path]]] = collections.defaultdict(list)
        for path in (path for paths in files.values() for path in paths):
            lines[path] = []
            for event in task_log_events(path):
                event_lines = event.splitlines()
                lines[path].extend(line.strip() for line in event_lines)
                for number, line in enumerate(event_lines):
                    if line.startswith("Model ") and " (Job " in line:
                        headings.setdefault(line.split(": ", 1)[0], path)
                    if line.split() == TABLE_HEADER:
                        for row in event_lines[number + 2 :]:  # after the header and its dashes
                            if row.split():
                                table_rows[row.split()[0]].append((row.rstrip(), path))
        return cls(lines, headings, table_rows)

    @staticmethod
    def copied(own: list[str], lines: list[str]) -> bool:
        """Whether each of a job's ``own`` log lines is in ``lines`` (copied as ``<event time> <message>``)."""
        messages = {line.split(" ", 1)[1].strip() for line in lines if " " in line} | set(lines)
        return all(line.strip() in messages for line in own if line.strip())


@dataclass
class LogChecks:
    """The checks of what a user sees of every model in the task logs, and the examples the summary shows."""

    copied: int = 0  # successful models whose own log lines are all in their task's log
    succeeded: int = 0  # successful models with log lines
    example: tuple[str, Path] | None = None
    not_copied: list[str] = dataclasses.field(default_factory=list)
    labels: list[str] = dataclasses.field(default_factory=list)  # group mode: every forecast map index's label
    bad_labels: list[str] = dataclasses.field(default_factory=list)
    named: dict[str, tuple[str, Path]] = dataclasses.field(default_factory=dict)  # failed model -> table row

    def ok(self, mode: str, models: int, bad: Iterable[str]) -> bool:
        logs_ok = self.succeeded > 0 and self.copied == self.succeeded and self.example is not None
        if mode == "model":
            return logs_ok
        counted = sum(int(m["count"]) for m in map(GROUP_LABEL.fullmatch, self.labels) if m)
        return (
            logs_ok and bool(self.labels) and not self.bad_labels and counted == models and set(self.named) == set(bad)
        )


def check_task_logs(
    mode: str, dag_id: str, run_id: str, db: MetadataDB, runs: dict[str, Any], outcomes: list[Any], bad: Iterable[str]
) -> LogChecks:
    """Read the ``forecast`` tasks' logs and labels: each successful model's own log lines in the log of its
    task (per model: its map index's; groups: the group task with the model's heading), every group's label,
    and each failed model's row in its group's table."""
    rows = db.sql(
        "SELECT map_index, rendered_map_index FROM task_instance "
        "WHERE dag_id = :dag AND run_id = :run AND task_id = 'forecast' ORDER BY map_index",
        dag=dag_id,
        run=run_id,
    )
    labels = {int(index): str(label or "") for index, label in rows}
    files = forecast_log_files(dag_id, run_id)
    logs = TaskLogs.read(files)
    checks = LogChecks()
    index_of = {label: index for index, label in labels.items()}  # per model: the label is the model id
    for outcome in outcomes:
        run = runs.get(outcome.job_id or "") if outcome.succeeded else None
        own = [line for line in run.log_lines() if line.strip() and not line.startswith(ENDPOINT_NOTE)] if run else []
        if not own:
            continue
        checks.succeeded += 1
        if mode == "model":
            candidates = files.get(index_of.get(outcome.model_id, -1), [])
        else:
            found = logs.headings.get(f"Model {outcome.model_id} (Job {outcome.job_id})")
            candidates = [found] if found else []
        where = next((path for path in candidates if logs.copied(own, logs.lines[path])), None)
        if where is None:
            checks.not_copied.append(outcome.model_id)
            continue
        checks.copied += 1
        if checks.example is None:
            checks.example = (own[0], where)
    if mode == "group":
        checks.labels = [labels[index] for index in sorted(labels)]
        checks.bad_labels = [
            f"{index}: {label!r}" for index, label in labels.items() if not GROUP_LABEL.fullmatch(label)
        ]
        for model_id in bad:
            row = next(
                (
                    (text, path)
                    for text, path in logs.table_rows.get(model_id, [])
                    if text.split()[1:2] != ["SUCCEEDED"]
                ),
                None,
            )
            if row is not None:
                checks.named[model_id] = row
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100, help="models, one Batch job each (default 100)")
    parser.add_argument("--timeout", type=float, help="seconds the DAG run may take (default: 900, more for >200)")
    parser.add_argument("--poll-interval", type=float, default=5, help="triggerer poll interval, s (default 5)")
    parser.add_argument("--parallelism", type=int, default=8, help="LocalExecutor worker processes (default 8)")
    parser.add_argument("--slots", type=int, default=4, help="model jobs running at once (default 4)")
    parser.add_argument(
        "--minute-seconds",
        type=float,
        help="seconds a model's expected minute lasts (default: what fits the jobs into about 150 s of slots)",
    )
    parser.add_argument(
        "--mode",
        choices=tuple(DAG_IDS),
        default="model",
        help=f"model: {DAG_IDS['model']}, one task per model (default); "
        f"group: {DAG_IDS['group']}, one task per group of {GROUP_SIZE} models",
    )
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
    shutil.rmtree(HISTORY_DIR, ignore_errors=True)
    fleet = write_fleet(args.models, args.minute_seconds, args.slots)
    bad = [f"{m} ({d})" for m, d in fleet.bad.items()]
    log(
        f"{args.models} models, {args.slots} at a time, an expected minute lasting {fleet.minute_seconds:.3f}s; "
        f"bad history: {len(bad)} ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); Spot reclaim on the "
        f"first attempt: {len(fleet.reclaimed)} ({', '.join(sorted(fleet.reclaimed)[:5])}"
        f"{', ...' if len(fleet.reclaimed) > 5 else ''})"
    )
    for name in [n for n in os.environ if n.startswith(("AWS_", "AIRFLOW"))]:  # never touch a real account
        del os.environ[name]
    os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"  # this process only; the components log at INFO

    api_port = local_airflow.free_port()
    result: dict[str, Any] = {}
    error: BaseException | None = None
    cpu: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(
            ContainerRunner(IMAGES, slots=args.slots, holds=fleet.holds, default_hold=1.0, reclaims=fleet.reclaimed)
        )
        aws = stack.enter_context(Endpoint(runner, keep_requests=False))
        aws.limit("batch", 50.0)  # about Batch's own rate
        endpoint_url = aws.url
        if args.db == "postgres":
            db_url = stack.enter_context(local_airflow.postgres(DEMO_DIR / "postgres"))
        else:
            db_url = f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}"
        env = demo_env(args, endpoint_url, api_port, db_url)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("AIRFLOW", "AWS_"))})
        processes = Processes(env, AIRFLOW_HOME / "component-logs")
        db = MetadataDB(db_url)
        stack.callback(db.close)
        try:
            log(f"local AWS endpoint {endpoint_url}; models file {MODELS_FILE}")
            log(f"Airflow UI, once started: http://127.0.0.1:{api_port}/ (no login)")
            run_demo(args, processes, f"http://127.0.0.1:{api_port}", db, aws, result)
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
        calls = collections.Counter(aws.calls)
        jobs = collections.Counter(aws.batch.status(job_id, time.time()) for job_id in list(aws.batch.jobs))
        tasks: collections.Counter[str] = collections.Counter()
        provider = None
        log_checks: LogChecks | None = None
        if error is None:  # while the metadata database still runs
            try:
                tasks, provider = final_checks(processes, DAG_IDS[args.mode], result["run_id"])
                report_csv = next(iter(sorted(REPORTS_DIR.glob("*/report.csv"))), None)
                log_checks = check_task_logs(
                    args.mode,
                    DAG_IDS[args.mode],
                    result["run_id"],
                    db,
                    aws.batch.runs,
                    read_csv(report_csv) if report_csv else [],
                    fleet.bad,
                )
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
    forecast_expected, forecast_failing = forecast_tasks(args.mode, fleet.bad)
    other = {key: n for key, n in sorted(tasks.items()) if not key.endswith(":success")}
    submitted = calls["SubmitJob"]
    operations = {op: calls.get(op, 0) for op in KEY_OPERATIONS} | dict(sorted(calls.items()))
    print()
    print("== airflow-ml-batch demo: summary ==")
    if error is not None:
        print(f"error:               {error}")
    if result:
        print(
            f"DAG run:             {DAG_IDS[args.mode]} {result['run_id']} {result['state']} "
            f"in {result['run_seconds']:.1f}s"
        )
    if tasks:
        mapped = (
            f"split, {forecast} forecast of up to {GROUP_SIZE} models"
            if args.mode == "group"
            else f"{forecast} forecast"
        )
        print(f"tasks succeeded:     {succeeded} of {sum(tasks.values())} (prepare_data, plan, {mapped}, report)")
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
    print(f"DescribeJobs calls:  {calls['DescribeJobs']} (up to 100 jobs per call)")
    print(f"throttled calls:     {sum(aws.throttled.values())} (over Batch's rate limit, answered 429)")
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
    by_model = {outcome.model_id: outcome for outcome in outcomes}
    print(f"models meant to fail (bad history: {len(fleet.bad)}) or to lose a Spot instance ({len(fleet.reclaimed)}):")
    for model_id in [*list(fleet.bad)[:5], *sorted(fleet.reclaimed)[:5]]:  # the first five of each
        row = by_model.get(model_id)
        run = aws.batch.runs.get(row.job_id or "") if row else None
        if row is None or run is None:
            print(f"  {model_id}: NOT IN THE REPORT")
            continue
        why = (
            f"history {fleet.bad[model_id]}, the log ends {(run.log_lines() or ['(empty)'])[-1]!r}"
            if model_id in fleet.bad
            else f"attempt 1: {run.earlier_attempts[0]['statusReason'] if run.earlier_attempts else 'not reclaimed'}"
        )
        print(
            f"  {model_id}: {row.status} (exit code {row.exit_code}), {row.attempts} Batch attempt(s), "
            f"Airflow try {row.try_number or '-'}; {why}"
        )
    report_html = next((path for path in report_files if path.name == "report.html"), None)
    html_count = html_rows(report_html)
    print(
        f"report.html rows:    {'NOT WRITTEN' if html_count is None else html_count} "
        f"(one per model: {'yes' if html_count == args.models else f'NO, {args.models} models'})"
    )
    if log_checks is not None:
        print(
            f"model logs copied:   {log_checks.copied} of {log_checks.succeeded} successful models' own log lines "
            f"in their {'group' if args.mode == 'group' else 'forecast'} task's log"
            + (f"; NOT in it: {', '.join(log_checks.not_copied[:5])}" if log_checks.not_copied else "")
        )
        if log_checks.example:
            line, path = log_checks.example
            print(f"  e.g. {line!r}\n  in {path}")
        if args.mode == "group":
            shown = ", ".join(repr(label) for label in log_checks.labels[:3])
            print(
                f"group labels:        {len(log_checks.labels)} map indexes, e.g. {shown}"
                + (f"; NOT of the form: {', '.join(log_checks.bad_labels[:3])}" if log_checks.bad_labels else "")
            )
            missing = [m for m in fleet.bad if m not in log_checks.named]
            print(
                f"failed models named: {len(log_checks.named)} of {len(fleet.bad)} in their group's table of models"
                + (f"; NOT named: {', '.join(missing[:5])}" if missing else "")
            )
            for text, path in list(log_checks.named.values())[:2]:
                print(f"  {text[:100]!r}\n  in {path}")
    if tasks:  # the final checks ran
        print(f"airflow providers list: {provider or 'airflow-ml-batch NOT FOUND'}")
    print(f"Airflow home, with every component's and task's log: {AIRFLOW_HOME}")
    tries = 3  # the DAG's retries, each try a new job: the failed one does not run any more
    jobs_per_bad = tries * (1 + MODEL_RETRIES if args.mode == "group" else 1)  # a group retries within a try too
    meant_to_fail = {m for m, row in by_model.items() if not row.succeeded}
    ok = (
        error is None
        and result.get("state") == ("failed" if fleet.bad else "success")
        and forecast == forecast_expected
        and tasks["forecast:failed"] == forecast_failing
        and submitted == args.models + 1 + (jobs_per_bad - 1) * len(fleet.bad)  # and the data-prep job
        and jobs["FAILED"] == jobs_per_bad * len(fleet.bad)
        and len(outcomes) == args.models
        and meant_to_fail == set(fleet.bad)
        and all(by_model[m].attempts == 2 for m in fleet.reclaimed)
        and all(row.metrics.get("mape") is not None for row in outcomes if row.succeeded)
        and {path.name for path in report_files} == {"report.csv", "report.png", "report.html"}
        and provider is not None
        and html_count == args.models
        and log_checks is not None
        and log_checks.ok(args.mode, args.models, fleet.bad)
    )
    print("result:              OK" if ok else "result:              FAILED")
    return 130 if interrupted else 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
