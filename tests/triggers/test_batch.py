"""BatchJobTrigger as the triggerer runs it, against a scripted Batch endpoint."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from typing import Any

import pytest
from airflow.models.trigger import Trigger
from airflow.triggers.base import TaskSuccessEvent
from helpers import clear_before_its_turn, first_event, run_dag, task_instance, xcom

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS, TRIGGER_HAS_ON_KILL
from airflow_ml_batch.testing.endpoint import Endpoint
from airflow_ml_batch.triggers.batch import BatchJobPoller, BatchJobTrigger

FAST = 0.05  # seconds between poll rounds in these tests


def import_string(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def trigger_for(job_id: str, **kwargs: Any) -> BatchJobTrigger:
    kwargs.setdefault("poll_interval", FAST)
    return BatchJobTrigger(job_id=job_id, aws_conn_id="aws_fake", **kwargs)


async def polled_twice(endpoint: Endpoint) -> None:
    """Wait until the poller has described the current state (one call may have been in flight)."""
    target = endpoint.calls["DescribeJobs"] + 2
    while endpoint.calls["DescribeJobs"] < target:  # noqa: ASYNC110 - the count lives in another thread
        await asyncio.sleep(0.01)


async def later(seconds: float, action: Any, *args: Any, **kwargs: Any) -> None:
    await asyncio.sleep(seconds)
    action(*args, **kwargs)


def test_serialize_round_trips_through_airflows_trigger_model() -> None:
    trigger = BatchJobTrigger(job_id="job-1", aws_conn_id="aws_x", region_name="us-east-2", deadline=1e9)

    stored = Trigger.from_object(trigger)
    rebuilt = import_string(stored.classpath)(**stored.kwargs)

    assert stored.classpath == "airflow_ml_batch.triggers.batch.BatchJobTrigger"
    assert rebuilt.serialize() == trigger.serialize()


def test_every_kwarg_but_the_job_has_a_default() -> None:
    classpath, kwargs = BatchJobTrigger(job_id="job-1").serialize()

    assert import_string(classpath)(job_id="job-1").serialize() == (classpath, kwargs)


async def test_success_logs_each_state_change(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    job = aws_endpoint.batch.add_job("RUNNABLE", jobName="model-1")
    caplog.set_level(logging.INFO)

    async def progress() -> None:
        for status in ("STARTING", "RUNNING"):
            await polled_twice(aws_endpoint)
            aws_endpoint.batch.set_job(job, status=status)
        await polled_twice(aws_endpoint)
        aws_endpoint.batch.set_job(
            job,
            status="SUCCEEDED",
            startedAt=1000,
            stoppedAt=61000,
            container={"exitCode": 0, "logStreamName": "forecast/default/abc"},
        )

    event, _ = await asyncio.gather(first_event(trigger_for(job)), progress())

    assert event.payload["status"] == "success"
    assert event.payload["result"]["exit_code"] == 0
    assert event.payload["result"]["duration_seconds"] == 60
    assert event.payload["result"]["log_stream"] == "forecast/default/abc"
    # Airflow 2 logs through the standard library, Airflow 3 through structlog to stdout.
    logged = caplog.text + capsys.readouterr().out
    changes = [
        f"{a} -> {b}"
        for a, b in zip(
            ["deferred", "RUNNABLE", "STARTING", "RUNNING"],
            ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"],
            strict=True,
        )
    ]
    positions = [logged.find(f"AWS Batch job {job}: {change}") for change in changes]
    assert -1 not in positions, logged
    assert positions == sorted(positions), "state changes are logged in order"


async def test_throttling_and_server_errors_never_fail_the_trigger(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    aws_endpoint.fail_next("DescribeJobs", times=4, status=429, code="TooManyRequestsException")
    aws_endpoint.fail_next("DescribeJobs", times=2, status=500, code="ServerException")
    aws_endpoint.fail_next("DescribeJobs", times=1, status=400, code="ExpiredTokenException")

    finish = later(0.5, aws_endpoint.batch.set_job, job, status="SUCCEEDED")
    event, _ = await asyncio.gather(first_event(trigger_for(job), timeout=120), finish)

    assert event.payload["status"] == "success"
    assert aws_endpoint.calls["DescribeJobs"] >= 8


async def test_five_hundred_waiting_jobs_cost_five_calls_per_round(aws_endpoint: Endpoint) -> None:
    jobs = [aws_endpoint.batch.add_job("RUNNING") for _ in range(500)]
    triggers = [asyncio.ensure_future(first_event(trigger_for(job, poll_interval=0.2))) for job in jobs]

    hook = trigger_for(jobs[0]).hook

    async def rounds_done(count: int) -> BatchJobPoller:
        while (poller := BatchJobPoller.of(hook, None)) is None or poller.rounds < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return poller  # type: ignore[return-value]

    poller = await asyncio.wait_for(rounds_done(3), timeout=60)
    rounds, calls = poller.rounds, aws_endpoint.calls["DescribeJobs"]

    for job in jobs:
        aws_endpoint.batch.set_job(job, status="SUCCEEDED")
    events = await asyncio.gather(*triggers)

    assert calls <= 5 * rounds, f"{calls} DescribeJobs calls in {rounds} rounds"
    assert {event.payload["status"] for event in events} == {"success"}
    assert BatchJobPoller.of(hook, None) is None, "the poller stops when no trigger waits"


async def test_a_job_not_yet_visible_is_waited_for(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("SUBMITTED")
    aws_endpoint.batch.hidden.add(job)  # DescribeJobs is eventually consistent just after SubmitJob

    async def appear() -> None:
        await asyncio.sleep(0.4)
        aws_endpoint.batch.hidden.discard(job)
        aws_endpoint.batch.set_job(job, status="SUCCEEDED")

    event, _ = await asyncio.gather(first_event(trigger_for(job, missing_grace=5)), appear())

    assert event.payload["status"] == "success"


async def test_a_job_that_stays_gone_fails_with_a_clear_message(aws_endpoint: Endpoint) -> None:
    event = await first_event(trigger_for("4b6d2c1e-no-such-job", missing_grace=0.3))

    assert event.payload["status"] == "missing"
    assert "4b6d2c1e-no-such-job was not found for 0s" in event.payload["message"]
    assert "never seen" in event.payload["message"]


async def test_failure_message_has_reason_exit_code_attempts_and_where_the_log_is(aws_endpoint: Endpoint) -> None:
    stream = "forecast/default/0a1b"
    aws_endpoint.logs.streams[("/aws/batch/job", stream)] = [f"line {n}" for n in range(100)] + [
        "ValueError: no history"
    ]
    spot = {"container": {"exitCode": None, "reason": "Host EC2 (instance i-0abc) terminated."}, "startedAt": 1}
    last = {"container": {"exitCode": 3, "logStreamName": stream}, "startedAt": 2, "stoppedAt": 3}
    job = aws_endpoint.batch.add_job(
        "FAILED",
        jobName="model-7",
        statusReason="Essential container in task exited",
        container={"exitCode": 3, "logStreamName": stream},
        attempts=[spot, last],
    )

    event = await first_event(trigger_for(job, log_tail_lines=5, job_logs="always"))

    message = event.payload["message"]
    assert event.payload["status"] == "failed"
    assert f"AWS Batch job model-7 ({job}) FAILED: Essential container in task exited; exit code 3" in message
    assert "attempt 1: exit code None, Host EC2 (instance i-0abc) terminated." in message
    assert "attempt 2: exit code 3" in message
    assert message.endswith(f"  log: /aws/batch/job {stream}")
    # The worker the event resumes copies the log into the task log: neither message nor event has a line.
    assert "line 99" not in repr(event.payload)
    assert "no history" not in repr(event.payload)
    assert [a["log_stream"] for a in event.payload["result"]["attempts"]] == [None, stream]
    assert aws_endpoint.calls["GetLogEvents"] == 0


async def test_deadline_terminates_the_job_and_says_so(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")

    event = await first_event(trigger_for(job, deadline=time.time() + 0.5))

    assert event.payload["status"] == "timeout"
    assert "execution_timeout reached" in event.payload["message"]
    assert aws_endpoint.batch.jobs[job]["status"] == "FAILED"
    assert "execution_timeout" in aws_endpoint.batch.jobs[job]["statusReason"]


async def test_end_from_trigger_pushes_result_and_log_link(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0, "logStreamName": "forecast/default/xyz"})
    link = {"region_name": "eu-west-1", "aws_domain": "aws.amazon.com"}

    event = await first_event(trigger_for(job, end_from_trigger=True, log_link=link))

    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms["return_value"]["job_id"] == job
    url = (
        "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:log-groups/log-group/"
        "%2Faws%2Fbatch%2Fjob/log-events/forecast%2Fdefault%2Fxyz"
    )
    if AIRFLOW_V_3_0_PLUS:  # Airflow 3 shows the rendered URL, kept under the link's own XCom key
        assert event.xcoms["_link_JobLogsLink"] == url
        assert "cloudwatch_events" not in event.xcoms
    else:  # Airflow 2's webserver renders it from the link's data
        assert "_link_JobLogsLink" not in event.xcoms
        assert event.xcoms["cloudwatch_events"] == {
            **link,
            "awslogs_region": "eu-west-1",
            "awslogs_group": "/aws/batch/job",
            "awslogs_stream_name": "forecast/default/xyz",
        }


async def test_a_triggerer_restart_never_terminates_the_job(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    waiting = asyncio.ensure_future(first_event(trigger_for(job)))
    await asyncio.sleep(0.3)

    waiting.cancel()  # what a triggerer shutdown or a trigger redistribution does
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert aws_endpoint.calls["TerminateJob"] == 0
    assert aws_endpoint.batch.jobs[job]["status"] == "RUNNING"


@pytest.mark.usefixtures("airflow_db")
def test_a_user_action_stops_the_job_unless_the_task_still_waits_or_its_state_is_unknown(
    aws_endpoint: Endpoint,
) -> None:
    # Real task instances of a real run, put in the states a user's clear or mark leaves them in; for each,
    # a trigger as the triggerer holds it is ended the way this Airflow ends it (on_kill on 3.3+; a plain
    # cancel before), and must terminate the job exactly when nobody waits for it any more.
    states = {"marked_success": "success", "marked_failed": "failed", "cleared": None, "deferred": "deferred"}
    jobs = {task_id: aws_endpoint.batch.add_job("RUNNING") for task_id in [*states, "no_such_task"]}
    # a task another triggerer ended as its job succeeded (a trigger handed over, then dropped): nothing to stop
    states["ended_elsewhere"] = "success"
    jobs["ended_elsewhere"] = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0})
    dag_run = run_dag(
        f"""
        @task
        def marked_success() -> None:
            pass

        @task
        def marked_failed() -> None:
            pass

        @task
        def cleared() -> None:
            pass

        @task
        def deferred() -> None:
            pass

        @task
        def ended_elsewhere() -> None:
            pass

        @task
        def end_triggers(run_id=None, dag=None) -> None:
            def set_states(states):
                with create_session() as session:
                    for task_id, state in states.items():
                        session.query(TaskInstance).filter_by(
                            dag_id=dag.dag_id, run_id=run_id, task_id=task_id
                        ).update({{"state": state}}, synchronize_session=False)

            set_states({states!r})

            async def end(task_id: str, job_id: str) -> None:
                trigger = BatchJobTrigger(job_id=job_id, aws_conn_id="aws_fake", poll_interval=0.05)
                trigger.task_instance = SimpleNamespace(dag_id=dag.dag_id, task_id=task_id, run_id=run_id, map_index=-1)
                waiting = asyncio.ensure_future(trigger.run().__anext__())
                await asyncio.sleep(0.5)
                if _compat.TRIGGER_HAS_ON_KILL:
                    waiting.cancel("__airflow_user_action__")
                    await asyncio.gather(waiting, return_exceptions=True)
                    await trigger.on_kill()
                else:
                    waiting.cancel()
                    await asyncio.gather(waiting, return_exceptions=True)

            async def all_of_them() -> None:
                # one at a time: dag.test()'s in-process stand-in for the triggerer's supervisor answers one
                # thread at a time (the triggerer's own answers reads side by side)
                for task_id, job_id in {jobs!r}.items():
                    await end(task_id, job_id)

            try:
                asyncio.run(all_of_them())
            finally:  # dag.test() runs until every task instance is done
                set_states(dict.fromkeys({states!r}, "success"))

        [marked_success(), marked_failed(), cleared(), deferred(), ended_elsewhere()] >> end_triggers()
        """,
        imports="import asyncio\nfrom types import SimpleNamespace\nfrom airflow.decorators import task\n"
        "from airflow.models.taskinstance import TaskInstance\nfrom airflow.utils.session import create_session\n"
        "from airflow_ml_batch import _compat\nfrom airflow_ml_batch.triggers.batch import BatchJobTrigger\n",
    )

    assert task_instance(dag_run, "end_triggers").state == "success"
    status = {task_id: aws_endpoint.batch.jobs[job]["status"] for task_id, job in jobs.items()}
    assert status == {
        "marked_success": "FAILED",
        "marked_failed": "FAILED",
        "cleared": "FAILED",
        "deferred": "RUNNING",  # a trigger handed to another triggerer, or a triggerer restart
        "no_such_task": "RUNNING",  # a state that cannot be read never terminates
        "ended_elsewhere": "SUCCEEDED",
    }
    reason = "cleared or marked by a user" if TRIGGER_HAS_ON_KILL else "no longer deferred"
    assert reason in aws_endpoint.batch.jobs[jobs["cleared"]]["statusReason"]
    assert aws_endpoint.calls["TerminateJob"] == 3


@pytest.mark.usefixtures("airflow_db")
def test_a_task_cleared_while_its_trigger_waits_for_its_turn_has_its_job_stopped(aws_endpoint: Endpoint) -> None:
    # A triggerer that takes on thousands of triggers at once starts them a hundred per loop: a user who
    # clears a task meanwhile cancels a trigger that has not begun its wait. Its job is stopped all the same.
    job_id = aws_endpoint.batch.add_job("RUNNING")
    dag_run = clear_before_its_turn(
        f"BatchJobTrigger(job_id={job_id!r}, aws_conn_id='aws_fake', poll_interval=0.05)",
    )

    assert task_instance(dag_run, "end_trigger").state == "success"
    assert aws_endpoint.batch.terminated == [job_id]
    assert aws_endpoint.calls["DescribeJobs"] == 1, "the trigger never began its wait: one describe, before the stop"


@pytest.mark.usefixtures("airflow_db")
def test_triggers_cancelled_together_read_states_in_one_call_and_stop_jobs_even_if_cancelled_again(
    aws_endpoint: Endpoint,
) -> None:
    # Eight triggers of one mapped task, as a clear or mark of many deferred tasks leaves them: their state
    # reads share one Airflow call, and a second cancel mid-read (Airflow's triggerer cancels a trigger at
    # each loop until it ends) does not stop the clean-up. A task instance on a later try than the
    # trigger's own (the next try, already deferred again) abandons the job on Airflow 2, whose triggerer
    # reads try numbers; Airflow 3's triggerer reads states only, and the next try's worker terminates the
    # cleared try's job instead.
    states = ["success", "failed", None, "deferred", "deferred", "scheduled", "deferred", "deferred"]
    tries = [1, 1, 1, 1, 2, 2, 1, 1]
    jobs = [aws_endpoint.batch.add_job("RUNNING") for _ in states]
    dag_run = run_dag(
        f"""
        @task
        def model(n: int) -> None:
            pass

        @task
        def end_triggers(run_id=None, dag=None) -> int:
            def set_states(states, tries):
                with create_session() as session:
                    for map_index, (state, try_number) in enumerate(zip(states, tries)):
                        session.query(TaskInstance).filter_by(
                            dag_id=dag.dag_id, run_id=run_id, task_id="model", map_index=map_index
                        ).update({{"state": state, "try_number": try_number}}, synchronize_session=False)

            set_states({states!r}, {tries!r})

            async def all_of_them() -> int:
                triggers, waiting = [], []
                for map_index, job_id in enumerate({jobs!r}):
                    trigger = BatchJobTrigger(job_id=job_id, aws_conn_id="aws_fake", poll_interval=0.05)
                    trigger.task_instance = SimpleNamespace(
                        dag_id=dag.dag_id, task_id="model", run_id=run_id, map_index=map_index, try_number=1
                    )
                    triggers.append(trigger)
                    waiting.append(asyncio.ensure_future(trigger.run().__anext__()))
                await asyncio.sleep(0.5)
                message = "__airflow_user_action__" if _compat.TRIGGER_HAS_ON_KILL else None
                for future in waiting:
                    future.cancel(message)
                if _compat.TRIGGER_HAS_ON_KILL:
                    await asyncio.gather(*waiting, return_exceptions=True)
                    waiting = [asyncio.ensure_future(trigger.on_kill()) for trigger in triggers]
                await asyncio.sleep(0.01)
                for future in waiting:  # the triggerer cancels the trigger again at its next loop, mid-read
                    future.cancel(message)
                await asyncio.gather(*waiting, return_exceptions=True)
                while base._finishing:
                    await asyncio.sleep(0.05)
                return TaskStateReads.of_loop().calls

            try:
                return asyncio.run(all_of_them())
            finally:  # dag.test() runs until every task instance is done
                set_states(["success"] * {len(states)}, [1] * {len(states)})

        model.expand(n=list(range({len(states)}))) >> end_triggers()
        """,
        imports="import asyncio\nfrom types import SimpleNamespace\nfrom airflow.decorators import task\n"
        "from airflow.models.taskinstance import TaskInstance\nfrom airflow.utils.session import create_session\n"
        "from airflow_ml_batch import _compat\n"
        "from airflow_ml_batch.triggers import base\n"
        "from airflow_ml_batch.triggers.task_state import TaskStateReads\n"
        "from airflow_ml_batch.triggers.batch import BatchJobTrigger\n",
    )

    assert task_instance(dag_run, "end_triggers").state == "success"
    assert xcom(dag_run, "end_triggers") == 1, "one read for the eight triggers"
    status = [aws_endpoint.batch.jobs[job]["status"] for job in jobs]
    later_try_deferred = "RUNNING" if AIRFLOW_V_3_0_PLUS else "FAILED"
    assert status == ["FAILED", "FAILED", "FAILED", "RUNNING", later_try_deferred, "FAILED", "RUNNING", "RUNNING"]
    if not AIRFLOW_V_3_0_PLUS:
        assert "the task is on try 2, this job is of try 1" in aws_endpoint.batch.jobs[jobs[4]]["statusReason"]


async def test_on_kill_without_a_task_instance_leaves_the_job_running(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")

    await trigger_for(job).on_kill()

    assert aws_endpoint.batch.jobs[job]["status"] == "RUNNING"
    assert aws_endpoint.calls["TerminateJob"] == 0


async def test_metrics_printed_by_the_job_are_collected_in_one_log_call(aws_endpoint: Endpoint) -> None:
    stream = "forecast/default/m1"
    aws_endpoint.logs.streams[("/aws/batch/job", stream)] = [
        "training on 36 months",
        '{"metrics": {"mape": 0.5}}',
        "not json {",
        '{"metrics": {"mape": 0.12, "rmse": 41.0}, "model": "linear"}',
        "done",
    ]
    job = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0, "logStreamName": stream})

    event = await first_event(trigger_for(job, collect_metrics=True, log_tail_lines=10))

    assert event.payload["result"]["metrics"] == {"mape": 0.12, "rmse": 41.0}
    assert aws_endpoint.calls["GetLogEvents"] == 1


async def test_no_metrics_line_gives_none(aws_endpoint: Endpoint) -> None:
    stream = "forecast/default/m2"
    aws_endpoint.logs.streams[("/aws/batch/job", stream)] = ["done"]
    job = aws_endpoint.batch.add_job("SUCCEEDED", container={"exitCode": 0, "logStreamName": stream})

    event = await first_event(trigger_for(job, collect_metrics=True))

    assert event.payload["result"]["metrics"] is None


async def test_two_triggers_of_one_job_both_hear_of_it(aws_endpoint: Endpoint) -> None:
    job = aws_endpoint.batch.add_job("RUNNING")
    first = asyncio.ensure_future(first_event(trigger_for(job)))
    await polled_twice(aws_endpoint)
    second = asyncio.ensure_future(first_event(trigger_for(job)))  # e.g. a trigger handed back to this triggerer
    await polled_twice(aws_endpoint)

    aws_endpoint.batch.set_job(job, status="SUCCEEDED")
    events = await asyncio.gather(first, second)

    assert [event.payload["status"] for event in events] == ["success", "success"]


async def test_an_array_job_logs_its_children_counts_each_time_they_change(
    aws_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = aws_endpoint.batch.add_array_job(3, "PENDING", child_status="RUNNABLE")
    caplog.set_level(logging.INFO)

    async def progress() -> None:
        # Batch keeps an array parent PENDING while its children run: only the counts move.
        for index, status in [(0, "RUNNING"), (1, "RUNNING"), (0, "SUCCEEDED"), (1, "SUCCEEDED"), (2, "SUCCEEDED")]:
            await polled_twice(aws_endpoint)
            await polled_twice(aws_endpoint)  # polls that see no change log nothing
            aws_endpoint.batch.set_job(f"{parent}:{index}", status=status)
        await polled_twice(aws_endpoint)
        aws_endpoint.batch.set_job(parent, status="SUCCEEDED")

    event, _ = await asyncio.gather(first_event(trigger_for(parent)), progress())

    assert event.payload["status"] == "success"
    assert event.payload["result"]["array_size"] == 3
    assert {k: v for k, v in event.payload["result"]["array_status_summary"].items() if v} == {"SUCCEEDED": 3}
    # Airflow 2 logs through the standard library (and may echo to stdout), Airflow 3 through structlog to stdout.
    sources = [caplog.text, capsys.readouterr().out]
    logged = max(sources, key=lambda text: text.count(f"AWS Batch job {parent}: "))
    states = [
        "PENDING [3 children: 3 RUNNABLE]",
        "PENDING [3 children: 2 RUNNABLE, 1 RUNNING]",
        "PENDING [3 children: 1 RUNNABLE, 2 RUNNING]",
        "PENDING [3 children: 1 RUNNABLE, 1 RUNNING, 1 SUCCEEDED]",
        "PENDING [3 children: 1 RUNNABLE, 2 SUCCEEDED]",
        "PENDING [3 children: 3 SUCCEEDED]",
        "SUCCEEDED [3 children: 3 SUCCEEDED]",
    ]
    changes = [f"AWS Batch job {parent}: {a} -> {b}" for a, b in zip(["deferred", *states], states, strict=False)]
    positions = [logged.find(change) for change in changes]
    assert -1 not in positions, logged
    assert positions == sorted(positions), "changes are logged in order"
    assert logged.count(f"AWS Batch job {parent}: ") == len(changes), "once per change, not once per poll"
    assert aws_endpoint.calls["ListJobs"] == 0, "children are looked up only when the parent failed"


async def test_a_failed_array_names_its_failed_children_and_their_reasons(aws_endpoint: Endpoint) -> None:
    parent = aws_endpoint.batch.add_array_job(15, "PENDING", child_status="SUCCEEDED", jobName="backtest")
    for index in [14, 3, 9, 0, 12, 5, 7, 1, 11, 2, 13, 6]:  # 12 failed children, in no particular order
        stream = f"backtest/default/c{index}"
        aws_endpoint.batch.set_job(
            f"{parent}:{index}",
            status="FAILED",
            statusReason="Essential container in task exited",
            container={"exitCode": index % 3 + 1, "logStreamName": stream},
            attempts=[{"container": {"exitCode": index % 3 + 1, "logStreamName": stream, "reason": f"error {index}"}}],
        )
    aws_endpoint.batch.set_job(parent, status="FAILED", statusReason="Array Child Job failed")

    event = await first_event(trigger_for(parent))

    result, message = event.payload["result"], event.payload["message"].splitlines()
    assert event.payload["status"] == "failed"
    assert message[:2] == [
        f"AWS Batch job backtest ({parent}) FAILED: Array Child Job failed",
        "  15 children: 3 SUCCEEDED, 12 FAILED",
    ]
    shown = [0, 1, 2, 3, 5, 6, 7, 9, 11, 12]  # the ten lowest indexes
    assert message[2:12] == [
        f"  child {i} ({parent}:{i}): exit code {i % 3 + 1}, error {i} (log /aws/batch/job backtest/default/c{i})"
        for i in shown
    ]
    assert message[12:] == ["  ... and 2 more failed children"]
    assert [child["index"] for child in result["failed_children"]] == shown
    assert (result["array_size"], result["failed_children_count"]) == (15, 12)
    lookups = [(op, body) for op, body in aws_endpoint.requests if op == "ListJobs"]
    assert lookups == [("ListJobs", {"arrayJobId": parent, "jobStatus": "FAILED"})]
    described = [
        body["jobs"] for op, body in aws_endpoint.requests if op == "DescribeJobs" and body["jobs"] != [parent]
    ]
    assert described == [[f"{parent}:{i}" for i in shown]], "one DescribeJobs of the shown children"


async def test_a_failed_array_whose_children_cannot_be_listed_still_fails_with_a_message(
    aws_endpoint: Endpoint,
) -> None:
    parent = aws_endpoint.batch.add_array_job(2, "FAILED", child_status="FAILED", statusReason="Array Child Job failed")
    aws_endpoint.fail_next("ListJobs", status=400, code="AccessDeniedException")

    event = await first_event(trigger_for(parent))

    assert event.payload["status"] == "failed"
    assert (
        "the failed children could not be listed: An error occurred (AccessDeniedException)"
        in (event.payload["message"])
    )
    assert "2 children: 2 FAILED" in event.payload["message"]


async def test_an_ecs_properties_job_collects_metrics_from_its_containers_log(aws_endpoint: Endpoint) -> None:
    stream = "forecast/model/7d1e"
    aws_endpoint.logs.streams[("/ml/models", stream)] = ['{"metrics": {"mape": 0.08}}']
    model = {
        "name": "model",
        "exitCode": 0,
        "logStreamName": stream,
        "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ml/models"}},
    }
    sidecar = {"name": "sidecar", "essential": False, "exitCode": 0, "logStreamName": "forecast/sidecar/7d1e"}
    job = aws_endpoint.batch.add_job("SUCCEEDED", ecsProperties={"taskProperties": [{"containers": [sidecar, model]}]})

    event = await first_event(trigger_for(job, collect_metrics=True))

    result = event.payload["result"]
    assert (result["exit_code"], result["container_name"], result["log_stream"]) == (0, "model", stream)
    assert result["metrics"] == {"mape": 0.08}


async def test_a_failed_multi_node_job_names_its_main_nodes_log(aws_endpoint: Endpoint) -> None:
    stream = "train/default/main"
    aws_endpoint.logs.streams[("/aws/batch/job", stream)] = ["rank 0: NCCL timeout"]
    job = aws_endpoint.batch.add_job(
        "FAILED",
        jobName="train",
        statusReason="Essential container in task exited",
        nodeProperties={"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:1"}]},
        attempts=[{"container": {"exitCode": 1, "logStreamName": stream}}],
    )

    event = await first_event(trigger_for(job))

    assert event.payload["message"].splitlines() == [
        f"AWS Batch job train ({job}) FAILED: Essential container in task exited; exit code 1 (main node 0)",
        "  attempt 1: exit code 1, no reason",
        f"  log: /aws/batch/job {stream}",
    ]
    assert aws_endpoint.calls["GetLogEvents"] == 0


async def test_an_eks_job_reports_its_exit_code_without_reading_logs(aws_endpoint: Endpoint) -> None:
    pod = {"podName": "aws-batch.1f2e", "nodeName": "ip-10-0-1-5.ec2.internal"}
    job = aws_endpoint.batch.add_job(
        "SUCCEEDED",
        eksProperties={"podProperties": {**pod, "containers": [{"name": "model", "exitCode": 0}]}},
        eksAttempts=[{**pod, "containers": [{"name": "model", "exitCode": 0}]}],
    )

    event = await first_event(trigger_for(job, collect_metrics=True))

    result = event.payload["result"]
    assert (result["exit_code"], result["log_stream"], result["metrics"]) == (0, None, None)
    assert result["pod"]["name"] == "aws-batch.1f2e"
    assert aws_endpoint.calls["GetLogEvents"] == 0
