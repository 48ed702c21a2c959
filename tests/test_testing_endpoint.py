"""The AWS-shaped endpoint of ``airflow_ml_batch.testing``: botocore parses its answers as AWS's."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from airflow_ml_batch.testing.endpoint import ContainerRunner, Endpoint, WallClockRunner, running

NO_RETRIES = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)


def client(service: str, url: str, **keys: str) -> Any:
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"} | keys
    return boto3.client(service, endpoint_url=url, region_name="eu-west-1", config=NO_RETRIES, **credentials)


def error_of(call: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


@pytest.fixture
def running_jobs() -> Iterator[Endpoint]:
    """Jobs and tasks of about a second; a quarter of a second's startup."""
    with Endpoint(WallClockRunner(duration=1.0, spread=0.0)) as endpoint:
        yield endpoint


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


def test_a_submitted_job_runs_on_the_wall_clock_and_ends_with_an_attempt(running_jobs: Endpoint) -> None:
    batch = client("batch", running_jobs.url)
    job_id = batch.submit_job(jobName="m1", jobQueue="models", jobDefinition="forecast")["jobId"]
    seen = set()

    def succeeded() -> dict[str, Any] | None:
        (job,) = batch.describe_jobs(jobs=[job_id])["jobs"]
        seen.add(job["status"])
        return job if job["status"] == "SUCCEEDED" else None

    job = wait_until(succeeded)
    assert {"SUBMITTED", "SUCCEEDED"} <= seen
    assert seen <= {"SUBMITTED", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"}
    assert job["container"]["exitCode"] == 0
    assert job["startedAt"] < job["stoppedAt"]  # botocore parsed epoch milliseconds
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [0]
    assert running_jobs.batch.submits == {"m1": 1}


def test_a_failed_job_says_why_and_its_log_stream_has_what_it_printed() -> None:
    with Endpoint(WallClockRunner(duration=0.5, spread=0.0, fail_fraction=1.0)) as endpoint:
        batch, logs = client("batch", endpoint.url), client("logs", endpoint.url)
        job_id = batch.submit_job(jobName="m1", jobQueue="models", jobDefinition="forecast")["jobId"]
        job = wait_until(
            lambda: next((j for j in batch.describe_jobs(jobs=[job_id])["jobs"] if j["status"] == "FAILED"), None)
        )
        stream = job["container"]["logStreamName"]
        events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]
        assert job["container"]["exitCode"] == 1
        assert job["statusReason"] == "Essential container in task exited"
        assert [e["message"] for e in events] == ["model run", "Traceback: ValueError: bad input"]
        assert error_of(logs.get_log_events, logGroupName="/aws/batch/job", logStreamName="nope") == (
            400,
            "ResourceNotFoundException",
        )


def test_get_log_events_honours_limit_and_start_from_head_and_keeps_times_in_order() -> None:
    with Endpoint() as endpoint:
        logs = client("logs", endpoint.url)
        endpoint.logs.streams[("/g", "s")] = [(1_000, "first"), "second", "third", "fourth"]
        group = {"logGroupName": "/g", "logStreamName": "s"}

        last = logs.get_log_events(**group, limit=2, startFromHead=False)["events"]
        first = logs.get_log_events(**group, limit=2, startFromHead=True)["events"]
        whole = logs.get_log_events(**group)["events"]

        assert [e["message"] for e in last] == ["third", "fourth"]
        assert [e["message"] for e in first] == ["first", "second"]
        assert first[0]["timestamp"] == 1_000
        stamps = [e["timestamp"] for e in whole[1:]]
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == 3
        assert endpoint.calls["GetLogEvents"] == 3


def test_get_log_events_is_throttled_beyond_its_limit_and_not_by_the_batch_switch() -> None:
    with Endpoint() as endpoint:
        logs = client("logs", endpoint.url)
        endpoint.logs.streams[("/g", "s")] = ["line"]
        endpoint.faults.update({"throttle_seconds": 60})  # Batch and ECS only
        logs.get_log_events(logGroupName="/g", logStreamName="s")
        endpoint.limit("logs", rate=0.001, burst=1)

        logs.get_log_events(logGroupName="/g", logStreamName="s")  # the burst
        assert error_of(logs.get_log_events, logGroupName="/g", logStreamName="s") == (400, "ThrottlingException")
        assert (endpoint.calls["GetLogEvents"], endpoint.throttled["GetLogEvents"]) == (2, 1)
        assert endpoint.stats()["throttled"] == {"GetLogEvents": 1}


def timelines(runner: WallClockRunner, count: int) -> list[tuple[float, bool]]:
    """Each of ``count`` runs' duration and whether it fails, as the runner scripts them."""
    runs = [runner.start("job", f"m{i}", {}) for i in range(count)]
    return [(run.ends - run.created, run.fails) for run in runs]


def test_a_long_tail_makes_a_seeded_fraction_of_runs_last_a_multiple_of_the_duration() -> None:
    settings = {"duration": 10.0, "spread": 0.25, "fail_fraction": 0.1, "seed": 7}
    base = timelines(WallClockRunner(**settings), 4000)
    tailed = timelines(WallClockRunner(**settings, long_fraction=0.05, long_factor=9.0), 4000)

    long = [i for i, (seconds, _) in enumerate(tailed) if seconds > 12.5]  # longer than any run without the tail
    assert 0.04 < len(long) / 4000 < 0.06
    assert all(67.5 - 1e-6 <= tailed[i][0] <= 112.5 + 1e-6 for i in long)  # 9 x (10 s +- 25 %)
    # The tail stretches some runs and changes nothing else: the same durations otherwise, the same failures.
    assert [fails for _, fails in tailed] == [fails for _, fails in base]
    assert all(
        seconds == pytest.approx(base[i][0] * (9.0 if i in long else 1.0)) for i, (seconds, _) in enumerate(tailed)
    )
    # Repeatable: the same seed picks the same runs; another seed others.
    assert timelines(WallClockRunner(**settings, long_fraction=0.05, long_factor=9.0), 4000) == tailed
    other = timelines(WallClockRunner(**settings | {"seed": 8}, long_fraction=0.05, long_factor=9.0), 4000)
    assert {i for i, (seconds, _) in enumerate(other) if seconds > 12.5} != set(long)


def test_without_a_long_tail_the_runner_draws_as_before() -> None:
    """Off by default: a seed's durations and failures are what they were before the tail existed."""
    draws = random.Random(3)
    before = []
    for _ in range(200):
        seconds = 20.0 * draws.uniform(0.75, 1.25)
        before.append((seconds, draws.random() < 0.2))
    for long_factor in (10.0, 9.0):  # the default, and a factor without a fraction
        runs = timelines(WallClockRunner(fail_fraction=0.2, seed=3, long_factor=long_factor), 200)
        assert [fails for _, fails in runs] == [fails for _, fails in before]
        assert [seconds for seconds, _ in runs] == pytest.approx([seconds for seconds, _ in before])
    with pytest.raises(ValueError, match="long_fraction"):
        WallClockRunner(long_fraction=1.5)


def test_with_long_env_the_request_says_which_runs_are_long() -> None:
    runner = WallClockRunner(duration=10.0, spread=0.0, long_fraction=0.05, long_factor=9.0, long_env="BENCH_LONG")
    marked = {"name": "BENCH_LONG", "value": "1"}
    requests = {
        "batch, marked": {"containerOverrides": {"environment": [{"name": "MODEL", "value": "a"}, marked]}},
        "ecs, marked": {"overrides": {"containerOverrides": [{"name": "model", "environment": [marked]}]}},
        "batch, not marked": {"containerOverrides": {"environment": [{"name": "MODEL", "value": "b"}]}},
        "nothing": {},
    }

    seconds = {what: (lambda run: run.ends - run.created)(runner.start("job", what, r)) for what, r in requests.items()}

    assert seconds == pytest.approx(
        {"batch, marked": 90.0, "ecs, marked": 90.0, "batch, not marked": 10.0, "nothing": 10.0}
    )


def test_terminate_job_fails_a_running_job_with_the_reason(running_jobs: Endpoint) -> None:
    batch = client("batch", running_jobs.url)
    job_id = batch.submit_job(jobName="m1", jobQueue="models", jobDefinition="forecast")["jobId"]
    batch.terminate_job(jobId=job_id, reason="cleared by a user")
    (job,) = batch.describe_jobs(jobs=[job_id])["jobs"]
    assert (job["status"], job["statusReason"]) == ("FAILED", "cleared by a user")
    assert "exitCode" not in job["container"], "it never started"
    assert error_of(batch.terminate_job, jobId="missing", reason="x") == (400, "ClientException")


def test_an_ecs_task_runs_through_its_states_and_stop_task_stops_it(running_jobs: Endpoint) -> None:
    ecs = client("ecs", running_jobs.url)
    (done,) = ecs.run_task(cluster="models", taskDefinition="forecast", startedBy="m1")["tasks"]
    (stopped,) = ecs.run_task(cluster="models", taskDefinition="forecast", startedBy="m2")["tasks"]
    assert done["lastStatus"] == "PROVISIONING"
    ecs.stop_task(cluster="models", task=stopped["taskArn"], reason="no longer needed")

    def described() -> list[dict[str, Any]] | None:
        tasks = ecs.describe_tasks(cluster="models", tasks=[done["taskArn"], stopped["taskArn"]])["tasks"]
        return tasks if all(t["lastStatus"] == "STOPPED" for t in tasks) else None

    first, second = wait_until(described)
    assert (first["stopCode"], first["containers"][0]["exitCode"]) == ("EssentialContainerExited", 0)
    assert (second["stopCode"], second["stoppedReason"]) == ("UserInitiated", "no longer needed")
    definition = ecs.describe_task_definition(taskDefinition="forecast")["taskDefinition"]
    assert definition["containerDefinitions"][0]["logConfiguration"]["options"]["awslogs-stream-prefix"] == "ecs"


def test_rate_limits_answer_as_each_service_does() -> None:
    with Endpoint() as endpoint:
        endpoint.limit("batch", rate=0.01, burst=2)
        endpoint.limit("ecs", rate=0.01, burst=1)
        batch, ecs = client("batch", endpoint.url), client("ecs", endpoint.url)
        batch.describe_jobs(jobs=[])
        batch.describe_jobs(jobs=[])
        assert error_of(batch.describe_jobs, jobs=[]) == (429, "TooManyRequestsException")
        ecs.describe_tasks(cluster="models", tasks=["a"])
        assert error_of(ecs.describe_tasks, cluster="models", tasks=["a"]) == (400, "ThrottlingException")
        assert endpoint.calls["DescribeJobs"] == 2
        assert endpoint.throttled == {"DescribeJobs": 1, "DescribeTasks": 1}


def test_fault_switches_and_scripted_failures() -> None:
    with Endpoint() as endpoint:
        batch = client("batch", endpoint.url)
        endpoint.fail_next("DescribeJobs", status=503, code="ServiceUnavailableException")
        assert error_of(batch.describe_jobs, jobs=[]) == (503, "ServiceUnavailableException")
        endpoint.faults.update({"server_error_seconds": 60})
        assert error_of(batch.describe_jobs, jobs=[]) == (500, "ServerException")
        endpoint.faults.update({"server_error_seconds": 0, "throttle_seconds": 60})
        assert error_of(batch.list_jobs, jobQueue="models") == (429, "TooManyRequestsException")
        endpoint.faults.update({"throttle_seconds": 0, "unreachable_seconds": 60})
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            batch.describe_jobs(jobs=[])
        assert endpoint.calls["connection reset"] == 1


def test_jobs_named_as_the_fail_switch_says_fail_and_only_those(running_jobs: Endpoint) -> None:
    batch = client("batch", running_jobs.url)
    running_jobs.faults.update({"fail_job_names": r"-model-2-t1-a1$"})
    names = ["g--1-model-1-t1-a1", "g--2-model-2-t1-a1", "g--2-model-2-t2-a1"]
    ids = [batch.submit_job(jobName=name, jobQueue="models", jobDefinition="forecast")["jobId"] for name in names]
    running_jobs.faults.update({"fail_job_names": ""})
    later = batch.submit_job(jobName=names[1], jobQueue="models", jobDefinition="forecast")["jobId"]

    def ended() -> list[dict[str, Any]] | None:
        jobs = batch.describe_jobs(jobs=[*ids, later])["jobs"]
        return jobs if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs) else None

    statuses = {job["jobId"]: job["status"] for job in wait_until(ended)}
    assert [statuses[i] for i in ids] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert statuses[later] == "SUCCEEDED", "switched off: a job of the same name runs as any other"
    assert running_jobs.runs("jobs")[ids[1]]["fails"]


def test_assumed_role_credentials_expire_and_expired_ones_are_refused() -> None:
    with Endpoint() as endpoint:
        endpoint.faults.update({"credential_ttl": 60})
        credentials = client("sts", endpoint.url).assume_role(
            RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="local"
        )["Credentials"]
        assert 50 < credentials["Expiration"].timestamp() - time.time() <= 60
        keys = {
            "aws_access_key_id": credentials["AccessKeyId"],
            "aws_secret_access_key": credentials["SecretAccessKey"],
            "aws_session_token": credentials["SessionToken"],
        }
        assert client("batch", endpoint.url, **keys).describe_jobs(jobs=[])["jobs"] == []
        assert error_of(client("batch", endpoint.url).describe_jobs, jobs=[]) == (403, "ExpiredTokenException")
        assert error_of(client("ecs", endpoint.url).describe_tasks, tasks=["a"]) == (400, "ExpiredTokenException")
        assert endpoint.sts.rejected_credentials == 2


def test_calls_are_counted_by_caller_and_region() -> None:
    with Endpoint() as endpoint:
        job = endpoint.batch.add_job("RUNNING")
        client("batch", f"{endpoint.url}/triggerer-1").describe_jobs(jobs=[job])
        client("batch", endpoint.url).describe_jobs(jobs=[job])
        assert endpoint.callers == {("triggerer-1", "DescribeJobs"): 1, ("", "DescribeJobs"): 1}
        assert set(endpoint.batch.describers[job]) == {"triggerer-1", ""}
        assert endpoint.regions == [("DescribeJobs", "eu-west-1")] * 2


def test_as_its_own_process_it_prints_its_port_and_runs_jobs_it_is_asked_to_start() -> None:
    with running("--duration", "0.5", "--fail-fraction", "0", "--batch-rate", "1000") as endpoint:
        ids = endpoint.start_jobs(3, name_prefix="bench")
        batch = client("batch", endpoint.url)
        wait_until(lambda: all(j["status"] == "SUCCEEDED" for j in batch.describe_jobs(jobs=ids)["jobs"]))
        jobs = endpoint.jobs()
        endpoint.lose_answers(["SubmitJob"], next=1)
        assert error_of(batch.submit_job, jobName="lost", jobQueue="models", jobDefinition="forecast")[0] == 500
        stats = endpoint.stats()
    assert sorted(job["name"] for job in jobs.values()) == ["bench-0", "bench-1", "bench-2"]
    assert (stats["submits"], stats["lost_answers"]) == ({"lost": 1}, {"SubmitJob": 1})
    assert all(job["created"] < job["started"] < job["ends"] and not job["fails"] for job in jobs.values())
    assert stats["calls"]["DescribeJobs"] == stats["callers"][""]["DescribeJobs"] >= 1
    assert stats["max_ids_per_call"]["DescribeJobs"] == 3


def test_as_its_own_process_it_takes_a_long_tail() -> None:
    options = ("--duration", "1", "--spread", "0", "--long-fraction", "1", "--long-factor", "3", "--batch-rate", "0")
    with running(*options) as endpoint:
        endpoint.start_jobs(4)
        jobs = endpoint.jobs()
    assert [job["ends"] - job["created"] for job in jobs.values()] == pytest.approx([3.0] * 4)


def test_with_a_process_runner_a_job_is_a_local_process_whose_output_is_its_log() -> None:
    def command(kind: str, name: str, request: dict[str, Any]) -> list[str]:
        code = 0 if name == "good" else 3  # "good" takes a second: "bad" waits for the one slot
        script = f"import time; time.sleep({code == 0:d}); print('training {name}'); raise SystemExit({code})"
        return [sys.executable, "-c", script]

    with ContainerRunner(command=command, slots=1) as runner, Endpoint(runner) as endpoint:
        batch, logs = client("batch", endpoint.url), client("logs", endpoint.url)
        ids = [
            batch.submit_job(jobName=n, jobQueue="models", jobDefinition="forecast")["jobId"] for n in ("good", "bad")
        ]
        assert batch.describe_jobs(jobs=ids[1:])["jobs"][0]["status"] == "RUNNABLE"

        def ended() -> list[dict[str, Any]] | None:
            jobs: list[dict[str, Any]] = batch.describe_jobs(jobs=ids)["jobs"]
            return jobs if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs) else None

        good, bad = wait_until(ended)
        stream = bad["container"]["logStreamName"]
        events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]
    assert (good["status"], good["container"]["exitCode"]) == ("SUCCEEDED", 0)
    assert (bad["status"], bad["container"]["exitCode"]) == ("FAILED", 3)
    assert bad["startedAt"] >= good["stoppedAt"], "one at a time"
    assert [e["message"] for e in events] == ["training bad"]


def test_with_a_process_runner_an_ecs_task_is_a_local_process_too() -> None:
    def command(kind: str, name: str, request: dict[str, Any]) -> list[str]:
        return [sys.executable, "-c", f"print('{kind} {request['taskDefinition']}'); raise SystemExit(2)"]

    with ContainerRunner(command=command) as runner, Endpoint(runner) as endpoint:
        ecs = client("ecs", endpoint.url)
        (task,) = ecs.run_task(cluster="models", taskDefinition="forecast:1", startedBy="model-7")["tasks"]

        def stopped() -> dict[str, Any] | None:
            (described,) = ecs.describe_tasks(cluster="models", tasks=[task["taskArn"]])["tasks"]
            return described if described["lastStatus"] == "STOPPED" else None

        described = wait_until(stopped)
        runs = list(runner.runs)
    assert described["containers"][0]["exitCode"] == 2
    assert described["stopCode"] == "EssentialContainerExited"
    assert [run.log_lines() for run in runs] == [["task forecast:1"]]


# -- lost answers, lagging listings, RunTask's clientToken -------------------------------------------------


def listed_jobs(batch: Any, name: str) -> list[str]:
    """The ids ListJobs lists for jobs named ``name`` (any status)."""
    pages = batch.list_jobs(jobQueue="models", filters=[{"name": "JOB_NAME", "values": [name]}])
    return [job["jobId"] for job in pages["jobSummaryList"]]


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_lost_submit_job_answer_leaves_the_job_behind(mode: str) -> None:
    with Endpoint() as endpoint:
        batch = client("batch", endpoint.url)
        endpoint.lose_answers(next=1, mode=mode)
        if mode == "500":
            assert error_of(batch.submit_job, jobName="m1", jobQueue="models", jobDefinition="forecast") == (
                500,
                "ServerException",
            )
        else:
            with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
                batch.submit_job(jobName="m1", jobQueue="models", jobDefinition="forecast")
        (job_id,) = listed_jobs(batch, "m1")  # the work was done: the job exists
        assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["jobName"] == "m1"
        again = batch.submit_job(jobName="m2", jobQueue="models", jobDefinition="forecast")  # only the next one
        assert batch.describe_jobs(jobs=[again["jobId"]])["jobs"]
        stats = endpoint.stats()
    assert endpoint.batch.submits == {"m1": 1, "m2": 1}
    assert stats["lost_answers"] == {"SubmitJob": 1}
    assert stats["lost_answers_by_mode"] == {mode: {"SubmitJob": 1}}
    assert stats["calls"]["SubmitJob"] == 2


def test_a_call_that_was_not_done_never_loses_its_answer() -> None:
    with Endpoint() as endpoint:
        batch, ecs = client("batch", endpoint.url), client("ecs", endpoint.url)
        endpoint.lose_answers(next=1)
        endpoint.faults.update({"throttle_seconds": 60})
        assert error_of(batch.submit_job, jobName="m1", jobQueue="models", jobDefinition="forecast")[0] == 429
        endpoint.faults.update({"throttle_seconds": 0})
        endpoint.fail_next("SubmitJob", status=503, code="ServiceUnavailableException")
        assert error_of(batch.submit_job, jobName="m1", jobQueue="models", jobDefinition="forecast")[0] == 503
        endpoint.batch.on_submit = lambda request: {"reject": "no such queue"}
        assert error_of(batch.submit_job, jobName="m1", jobQueue="models", jobDefinition="forecast")[0] == 400
        endpoint.ecs.run_task_failures = [{"reason": "RESOURCE:MEMORY"}]
        assert ecs.run_task(cluster="models", taskDefinition="forecast")["failures"] == [{"reason": "RESOURCE:MEMORY"}]
        assert endpoint.lost_answers == {}
        lose = endpoint.faults.lose_answers
        assert lose is not None
        assert lose.next == 1, "still to come"
        endpoint.batch.on_submit = None
        assert error_of(batch.submit_job, jobName="m1", jobQueue="models", jobDefinition="forecast")[0] == 500
    assert endpoint.batch.submits == {"m1": 1}
    assert endpoint.lost_answers == {("SubmitJob", "500"): 1}


def test_a_seeded_fraction_of_answers_is_lost_and_the_same_ones_for_the_same_seed() -> None:
    def lost_calls(seed: int) -> list[int]:
        with Endpoint() as endpoint:
            batch = client("batch", endpoint.url)
            endpoint.faults.update({"lose_answers": {"operations": ["SubmitJob"], "fraction": 0.3, "seed": seed}})
            lost = []
            for i in range(40):
                try:
                    batch.submit_job(jobName=f"m{i}", jobQueue="models", jobDefinition="forecast")
                except ClientError:
                    lost.append(i)
                batch.describe_jobs(jobs=[])  # not among the operations: never lost
            assert len(endpoint.batch.jobs) == 40
            assert endpoint.stats()["lost_answers"] == {"SubmitJob": len(lost)}
            endpoint.faults.update({"lose_answers": None})
            batch.submit_job(jobName="after", jobQueue="models", jobDefinition="forecast")
        return lost

    draws = random.Random(5)
    expected = [i for i in range(40) if draws.random() < 0.3]
    assert 5 <= len(expected) <= 20
    assert lost_calls(5) == expected
    assert lost_calls(5) == expected
    assert lost_calls(6) != expected


def test_a_lost_run_task_answer_is_recovered_with_the_same_client_token() -> None:
    with Endpoint() as endpoint:
        ecs = client("ecs", endpoint.url)
        endpoint.lose_answers("RunTask", next=2, mode="drop")
        request = {"cluster": "models", "taskDefinition": "forecast", "startedBy": "m1", "clientToken": "try-1"}
        for _ in range(2):  # the first starts the task, the second answers it: both answers are lost
            with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
                ecs.run_task(**request)
        (task,) = ecs.run_task(**request)["tasks"]
        assert list(endpoint.ecs.tasks) == [task["taskArn"]]
    assert endpoint.stats()["lost_answers_by_mode"] == {"drop": {"RunTask": 2}}


def test_a_lagging_list_jobs_lists_a_job_only_after_the_lag() -> None:
    with Endpoint() as endpoint:
        batch = client("batch", endpoint.url)
        endpoint.faults.update({"list_lag_seconds": 0.5})
        submitted = time.monotonic()
        job_id = batch.submit_job(jobName="m1", jobQueue="models", jobDefinition="forecast")["jobId"]
        scripted = endpoint.batch.add_job(jobName="m1")
        assert listed_jobs(batch, "m1") == []
        assert [j["jobId"] for j in batch.describe_jobs(jobs=[job_id, scripted])["jobs"]] == [job_id, scripted]
        assert wait_until(lambda: listed_jobs(batch, "m1"), timeout=2.0) == [job_id, scripted]
        assert time.monotonic() - submitted >= 0.5
        endpoint.faults.update({"list_lag_seconds": 0})
        fresh = batch.submit_job(jobName="m2", jobQueue="models", jobDefinition="forecast")["jobId"]
        assert listed_jobs(batch, "m2") == [fresh]


def test_a_lagging_list_tasks_lists_a_task_only_after_the_lag() -> None:
    with Endpoint(WallClockRunner(duration=30.0, spread=0.0)) as endpoint:
        ecs = client("ecs", endpoint.url)
        endpoint.faults.update({"list_lag_seconds": 0.5})
        started = time.monotonic()
        (task,) = ecs.run_task(cluster="models", taskDefinition="forecast", startedBy="m1")["tasks"]
        scripted = endpoint.ecs.run_task("m1")

        def listed() -> list[str]:
            arns: list[str] = ecs.list_tasks(cluster="models", startedBy="m1", desiredStatus="RUNNING")["taskArns"]
            return arns

        assert listed() == []
        assert len(ecs.describe_tasks(cluster="models", tasks=[task["taskArn"], scripted])["tasks"]) == 2
        assert wait_until(listed, timeout=2.0) == [task["taskArn"], scripted]
        assert time.monotonic() - started >= 0.5


def test_a_client_token_again_answers_the_first_outcome_and_other_parameters_conflict() -> None:
    with Endpoint() as endpoint:
        ecs = client("ecs", endpoint.url)
        request = {"cluster": "models", "taskDefinition": "forecast", "startedBy": "m1", "clientToken": "a"}
        (task,) = ecs.run_task(**request)["tasks"]
        assert ecs.run_task(**request)["tasks"][0]["taskArn"] == task["taskArn"]
        assert len(endpoint.ecs.tasks) == 1

        with pytest.raises(ClientError) as raised:
            ecs.run_task(**request | {"startedBy": "m2"})
        error = raised.value.response
        assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (400, "ConflictException")
        assert error["resourceIds"] == [task["taskArn"]]

        # A token is per cluster; ECS forgets it after 24 hours.
        other = ecs.run_task(**request | {"cluster": "other"})["tasks"][0]
        assert other["taskArn"] != task["taskArn"]
        endpoint.ecs.client_tokens[("models", "a")].used -= 24 * 3600
        assert ecs.run_task(**request)["tasks"][0]["taskArn"] not in (task["taskArn"], other["taskArn"])
        assert len(endpoint.ecs.tasks) == 3

        # Again for a task that stopped: only its ARN and statuses.
        endpoint.ecs.new_task_fields = {"lastStatus": "STOPPED", "desiredStatus": "STOPPED"}
        stopped = ecs.run_task(**request | {"clientToken": "s"})["tasks"][0]
        assert "containers" in stopped
        again = ecs.run_task(**request | {"clientToken": "s"})["tasks"][0]
        assert again == {"taskArn": stopped["taskArn"], "lastStatus": "STOPPED", "desiredStatus": "STOPPED"}


def test_a_client_token_whose_run_task_found_no_capacity_finds_none_again() -> None:
    with Endpoint() as endpoint:
        ecs = client("ecs", endpoint.url)
        no_capacity = {"arn": "", "reason": "Capacity is unavailable at this time."}
        endpoint.ecs.run_task_failures = [no_capacity]
        request = {"cluster": "models", "taskDefinition": "forecast", "startedBy": "m1", "clientToken": "a"}
        for _ in range(2):  # the same failures again, though there is capacity now
            assert ecs.run_task(**request) | {"ResponseMetadata": None} == {
                "tasks": [],
                "failures": [no_capacity],
                "ResponseMetadata": None,
            }
        assert endpoint.ecs.tasks == {}
        (task,) = ecs.run_task(**request | {"clientToken": "b"})["tasks"]  # a new placement attempt
        assert list(endpoint.ecs.tasks) == [task["taskArn"]]
