"""The endpoint's ContainerRunner: Batch jobs that are local processes, seen through botocore as AWS answers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from airflow_ml_batch.testing.endpoint import ContainerRunner, Endpoint, Image
from airflow_ml_batch.testing.sales import write_history

MODEL = Path(__file__).resolve().parent.parent / "example_dags" / "forecast_model" / "model.py"
IMAGES = {
    "forecast": Image("123456789012.dkr.ecr.eu-west-1.amazonaws.com/forecast:2026.12", (sys.executable, str(MODEL))),
    "sleep": Image("sleep:1", (sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))")),
}
SPOT_RETRY = {
    "attempts": 2,
    "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}],
}


def client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def aws(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    options = getattr(request, "param", {})
    with ContainerRunner(IMAGES, **options) as runner, Endpoint(runner) as endpoint:
        endpoint.limit("batch", 50.0)
        yield endpoint


def submit_model(batch: Any, model_id: str, dataset: Path, **request: Any) -> str:
    environment = [
        {"name": "MODEL_ID", "value": model_id},
        {"name": "MODEL_DATASET", "value": str(dataset)},
        {"name": "MODEL_PARAMETERS", "value": json.dumps({"window": 24})},
    ]
    job: dict[str, Any] = batch.submit_job(
        jobName=model_id,
        jobQueue="models",
        jobDefinition="forecast:3",
        containerOverrides={"environment": environment},
        **request,
    )
    return str(job["jobId"])


def wait_ended(batch: Any, job_ids: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs: list[dict[str, Any]] = batch.describe_jobs(jobs=job_ids)["jobs"]
        if all(job["status"] in ("SUCCEEDED", "FAILED") for job in jobs):
            return jobs
        assert time.monotonic() < deadline, [job["status"] for job in jobs]
        time.sleep(0.2)


def log_messages(url: str, job: dict[str, Any]) -> list[str]:
    events = client("logs", url).get_log_events(
        logGroupName="/aws/batch/job", logStreamName=job["container"]["logStreamName"]
    )["events"]
    return [event["message"] for event in events]


def test_a_model_job_runs_the_model_with_its_environment_and_prints_its_metrics_to_its_log(
    aws: Endpoint, tmp_path: Path
) -> None:
    batch = client("batch", aws.url)
    job_id = submit_model(batch, "emea-dairy-0001", write_history(tmp_path / "h.csv", "emea-dairy-0001"))
    (job,) = wait_ended(batch, [job_id])
    assert job["status"] == "SUCCEEDED"
    assert job["container"]["exitCode"] == 0
    assert job["jobDefinition"] == "arn:aws:batch:eu-west-1:123456789012:job-definition/forecast:3"
    assert job["container"]["image"] == IMAGES["forecast"].uri
    assert {"name": "MODEL_ID", "value": "emea-dairy-0001"} in job["container"]["environment"]
    lines = log_messages(aws.url, job)
    assert lines[0].startswith("emea-dairy-0001: training on 36 months")
    result = json.loads(lines[-1])
    assert result["model_id"] == "emea-dairy-0001"
    assert 0 < result["metrics"]["mape"] < 1
    assert result["metrics"]["months"] == 24  # MODEL_PARAMETERS reached the process


@pytest.mark.parametrize("defect", ["empty", "malformed"])
def test_a_model_on_bad_history_fails_with_its_exit_code_and_its_traceback_in_the_log(
    aws: Endpoint, tmp_path: Path, defect: str
) -> None:
    batch = client("batch", aws.url)
    dataset = write_history(tmp_path / "h.csv", "m", defect=defect)
    (job,) = wait_ended(batch, [submit_model(batch, "m", dataset, retryStrategy=SPOT_RETRY)])
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Essential container in task exited"
    assert job["container"]["exitCode"] == 1
    assert len(job["attempts"]) == 1  # evaluateOnExit: EXIT on anything but a lost host
    expected = "no history to train on" if defect == "empty" else "could not convert string to float: 'n/a'"
    assert log_messages(aws.url, job)[-1] == f"ValueError: {expected}"


@pytest.mark.parametrize("aws", [{"slots": 2, "default_hold": 1.0}], indirect=True)
def test_at_most_slots_jobs_run_at_once_and_the_others_wait_runnable(aws: Endpoint) -> None:
    batch = client("batch", aws.url)
    ids = [
        batch.submit_job(
            jobName=f"j{i}", jobQueue="models", jobDefinition="sleep", containerOverrides={"command": ["0.2"]}
        )["jobId"]
        for i in range(5)
    ]
    most_running, seen = 0, set()
    deadline = time.monotonic() + 30
    while True:
        statuses = [job["status"] for job in batch.describe_jobs(jobs=ids)["jobs"]]
        seen |= set(statuses)
        most_running = max(most_running, statuses.count("RUNNING"))
        if all(status == "SUCCEEDED" for status in statuses):
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.1)
    assert most_running == 2
    assert "RUNNABLE" in seen
    jobs = batch.describe_jobs(jobs=ids)["jobs"]
    # each held its slot for its hold, a second: the last of 5 on 2 slots started two holds after the first
    starts = sorted(job["startedAt"] for job in jobs)
    assert starts[-1] - starts[0] >= 1900
    assert all(job["stoppedAt"] - job["startedAt"] >= 1000 for job in jobs)


@pytest.mark.parametrize("aws", [{"default_hold": 1.0, "reclaims": frozenset({"m"})}], indirect=True)
def test_a_spot_reclaim_fails_the_first_attempt_and_the_retry_strategy_runs_a_second(
    aws: Endpoint, tmp_path: Path
) -> None:
    batch = client("batch", aws.url)
    dataset = write_history(tmp_path / "h.csv", "m")
    retried = submit_model(batch, "m", dataset, retryStrategy=SPOT_RETRY)
    once = submit_model(batch, "m", dataset)  # no retry strategy: one attempt
    jobs = {job["jobId"]: job for job in wait_ended(batch, [retried, once])}
    job = jobs[retried]
    assert job["status"] == "SUCCEEDED"
    first, second = job["attempts"]
    assert first["statusReason"].startswith("Host EC2 (instance i-")
    assert first["statusReason"].endswith(") terminated.")
    assert "exitCode" not in first["container"]
    assert second["container"]["exitCode"] == 0
    assert first["stoppedAt"] <= second["startedAt"]
    assert json.loads(log_messages(aws.url, job)[-1])["metrics"]["mape"] is not None
    lost = jobs[once]
    assert lost["status"] == "FAILED"
    assert lost["statusReason"].startswith("Host EC2 (instance i-")
    assert len(lost["attempts"]) == 1


@pytest.mark.parametrize("aws", [{"default_hold": 30.0}], indirect=True)
def test_terminate_job_kills_the_process_and_the_job_fails_with_the_reason(aws: Endpoint) -> None:
    batch = client("batch", aws.url)
    job_id = batch.submit_job(
        jobName="long", jobQueue="models", jobDefinition="sleep", containerOverrides={"command": ["30"]}
    )["jobId"]
    deadline = time.monotonic() + 10
    while batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    batch.terminate_job(jobId=job_id, reason="execution_timeout")
    (job,) = wait_ended(batch, [job_id], timeout=5)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "execution_timeout"
    assert job["container"]["exitCode"] == 137
