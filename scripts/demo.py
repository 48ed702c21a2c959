"""Demo: run example_dags/monthly_demand_forecast.py through a real Airflow against the local AWS endpoint.

1. Starts the package's AWS-shaped endpoint on 127.0.0.1 (``airflow_ml_batch.testing.endpoint``): Batch
   jobs that run ``--job-seconds`` on the wall clock, Batch's API rate limit, every call counted.
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
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from airflow_ml_batch.report import read_csv, summarize
from airflow_ml_batch.testing import Endpoint, WallClockRunner, aws_connection_json, local_airflow
from airflow_ml_batch.testing.local_airflow import MetadataDB, Processes

ROOT = Path(__file__).resolve().parent.parent
MAKE_MODELS = ROOT / "example_dags" / "forecast_model" / "make_models.py"
DAGS_FOLDER = ROOT / "example_dags"
DEMO_DIR = ROOT / ".demo"
AIRFLOW_HOME = DEMO_DIR / "airflow"
REPORTS_DIR = DEMO_DIR / "reports"
MODELS_FILE = DEMO_DIR / "models.json"
DAG_ID = "monthly_demand_forecast"
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
)
#: The calls the summary always shows, even when none was made.
KEY_OPERATIONS = ("SubmitJob", "DescribeJobs", "ListJobs", "TerminateJob")


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
    local_airflow.wait_ready(processes, api, DAG_ID, timeout=240)
    conf = {"models_file": str(MODELS_FILE), "report_location": str(REPORTS_DIR)}
    logical_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # the month the data prep job closes
    run = local_airflow.trigger_dag(api, DAG_ID, logical_date, conf)
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
            log(
                f"{time.monotonic() - triggered:5.0f}s  run {state}; tasks: {tasks}; "
                f"SubmitJob {aws.calls['SubmitJob']}, DescribeJobs {aws.calls['DescribeJobs']}"
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
    parser.add_argument("--job-seconds", type=float, default=5.0, help="how long a Batch job runs, s (default 5)")
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

    api_port = local_airflow.free_port()
    result: dict[str, Any] = {}
    error: BaseException | None = None
    cpu: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        aws = stack.enter_context(Endpoint(WallClockRunner(duration=args.job_seconds, spread=0.5), keep_requests=False))
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
    submitted = calls["SubmitJob"]
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
