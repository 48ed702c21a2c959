"""Demo: submit a fleet of AWS Batch jobs to a local AWS-shaped endpoint and watch them with one client.

Runs against moto's server on 127.0.0.1; nothing reaches AWS. Usage: python scripts/demo.py [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-ml-batch-demo-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
for name in [n for n in os.environ if n.startswith("AWS_")]:  # never touch a real account
    del os.environ[name]

from airflow_ml_batch.hooks.base import shared_clients  # noqa: E402
from airflow_ml_batch.hooks.batch import BatchHook  # noqa: E402
from airflow_ml_batch.testing import aws_connection_json, create_batch_queue, local_aws  # noqa: E402

CONN_ID = "aws_local"
FINAL = {"SUCCEEDED", "FAILED"}


async def watch(job_ids: list[str]) -> tuple[dict[str, str], int, int]:
    """Poll every job, 100 per DescribeJobs call, through the one shared async client."""
    states: dict[str, str] = {}
    calls = 0
    async with BatchHook(aws_conn_id=CONN_ID).async_client() as client:
        clients = shared_clients.count()
        while len(states) < len(job_ids) or not FINAL.issuperset(states.values()):
            waiting = [job for job in job_ids if states.get(job) not in FINAL]
            for start in range(0, len(waiting), 100):
                response = await client.describe_jobs(jobs=waiting[start : start + 100])
                calls += 1
                states.update({job["jobId"]: job["status"] for job in response["jobs"]})
            await asyncio.sleep(1)
    return states, calls, clients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="how many jobs to submit (default 200)")
    args = parser.parse_args()

    with local_aws() as endpoint_url:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = aws_connection_json(endpoint_url)
        queue = create_batch_queue(CONN_ID)
        batch = BatchHook(aws_conn_id=CONN_ID).conn
        started = time.monotonic()
        job_ids = [
            batch.submit_job(
                jobName=f"model-{n:05d}", jobQueue=queue["job_queue"], jobDefinition=queue["job_definition"]
            )["jobId"]
            for n in range(args.jobs)
        ]
        states, calls, clients = asyncio.run(watch(job_ids))
        elapsed = time.monotonic() - started

    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list"], capture_output=True, text=True, check=True
    ).stdout
    provider = next((line.split("|") for line in listed.splitlines() if line.startswith("airflow-ml-batch")), None)
    succeeded = sum(state == "SUCCEEDED" for state in states.values())
    print(f"jobs submitted:      {len(job_ids)}")
    print(f"jobs succeeded:      {succeeded}")
    print(f"jobs failed:         {len(job_ids) - succeeded}")
    print(f"DescribeJobs calls:  {calls} (100 jobs per call)")
    print(f"async clients:       {clients} shared by every watcher")
    print(f"wall time:           {elapsed:.1f}s")
    print(
        f"airflow providers list: {provider[0].strip()} {provider[-1].strip()}"
        if provider
        else "airflow providers list: airflow-ml-batch NOT FOUND"
    )
    return 0 if provider and succeeded == len(job_ids) else 1


if __name__ == "__main__":
    sys.exit(main())
