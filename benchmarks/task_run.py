"""What a per-model task run spends in the operator's own code: ours beside the Amazon provider's.

Each figure is the CPU time of one step in a fresh Python process that has imported what a worker's
task run has already imported (``airflow.sdk`` and its task runner), against the package's endpoint
(``python -m airflow_ml_batch.testing.endpoint``): importing the operator's module (what parsing the DAG
file adds), building the hook's boto3 client (connection, session, service model), and one SubmitJob.
The median of ``--repeat`` processes::

    python benchmarks/task_run.py
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/task_run.py --impl ours   # the same for another tree
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from airflow_ml_batch.testing.endpoint import running

#: per implementation: the operator's module, and the hook class the operator submits with
IMPLEMENTATIONS = {
    "ours": ("airflow_ml_batch.operators.batch", "airflow_ml_batch.hooks.batch", "BatchHook"),
    "official": (
        "airflow.providers.amazon.aws.operators.batch",
        "airflow.providers.amazon.aws.hooks.batch_client",
        "BatchClientHook",
    ),
}
STEPS = ("import the operator's module", "build the client", "SubmitJob")

#: one task run's steps, timed in a fresh process; prints their CPU seconds as JSON
MEASURE = """
import importlib, json, sys, time
import airflow.sdk, airflow.sdk.execution_time.task_runner

def cpu(step):
    start = time.process_time()
    value = step()
    return value, time.process_time() - start

module, hook_module, hook_class = sys.argv[1:4]
_, imported = cpu(lambda: importlib.import_module(module))
hook = getattr(importlib.import_module(hook_module), hook_class)(aws_conn_id="aws_bench")
client, built = cpu(lambda: (hook.conn_region_name, hook.conn)[1])
_, submitted = cpu(lambda: client.submit_job(jobName="m-" + sys.argv[4], jobQueue="models", jobDefinition="forecast"))
print(json.dumps([imported, built, submitted]))
"""


def measure(implementation: str, endpoint_url: str, run: int) -> list[float]:
    """The CPU seconds of each step in one fresh process."""
    connection = {"conn_type": "aws", "login": "bench", "password": "bench-secret"}
    connection["extra"] = {"endpoint_url": endpoint_url, "region_name": "eu-west-1"}  # type: ignore[assignment]
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "AIRFLOW"))}
    env |= {"AIRFLOW_CONN_AWS_BENCH": json.dumps(connection), "AWS_EC2_METADATA_DISABLED": "true"}
    with tempfile.TemporaryDirectory() as home:
        env["AIRFLOW_HOME"] = home
        command = [sys.executable, "-c", MEASURE, *IMPLEMENTATIONS[implementation], f"{implementation}-{run}"]
        # in an empty directory: ``-c`` puts the current one first on sys.path, over PYTHONPATH
        out = subprocess.run(command, env=env, cwd=home, capture_output=True, text=True, check=True).stdout
    return [float(seconds) for seconds in json.loads(out.strip().splitlines()[-1])]


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--impl", choices=(*IMPLEMENTATIONS, "both"), default="both")
    options.add_argument("--repeat", type=int, default=7, help="fresh processes per implementation")
    args = options.parse_args()
    chosen = list(IMPLEMENTATIONS) if args.impl == "both" else [args.impl]
    with running("--port", "0", "--batch-rate", "0") as endpoint:
        figures = {name: [measure(name, endpoint.url, run) for run in range(args.repeat)] for name in chosen}
    print(f"\nCPU ms per step, median of {args.repeat} fresh processes:")
    print(f"{'step':32s}" + "".join(f"{name:>12s}" for name in chosen))
    for index, step in enumerate((*STEPS, "total")):
        cells = []
        for name in chosen:
            runs = figures[name]
            values = [sum(run) for run in runs] if step == "total" else [run[index] for run in runs]
            cells.append(f"{1000 * statistics.median(values):12.0f}")
        print(f"{step:32s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
