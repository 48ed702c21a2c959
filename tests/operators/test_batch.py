"""BatchJobOperator in real DAGs (``dag.test()``) against moto and a scripted Batch endpoint."""

from __future__ import annotations

import importlib.util
import os
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from fake_aws import FakeAws

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS
from airflow_ml_batch.hooks.batch import BatchHook, job_name_for
from airflow_ml_batch.operators.batch import JOB_ID_XCOM_KEY, BatchJobOperator

pytestmark = pytest.mark.usefixtures("airflow_db")


def run_dag(tasks: str) -> Any:
    """Write a DAG file whose body is ``tasks`` (Python source) into the DAGs folder, and ``dag.test()`` it.

    Airflow 3 tests DAGs the way it runs them: from a file of a DAG bundle.
    """
    dag_id = f"test_{uuid.uuid4().hex[:10]}"
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id}.py"
    path.write_text(
        "import datetime\n"
        "from airflow import DAG\n"
        "from airflow_ml_batch.operators.batch import BatchJobOperator\n"
        f"with DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:\n"
        + textwrap.indent(textwrap.dedent(tasks), "    ")
    )
    spec = importlib.util.spec_from_file_location(dag_id, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.dag.test()
    finally:
        path.unlink()


def task_instance(dag_run: Any, task_id: str) -> Any:
    (ti,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == task_id]
    return ti


def xcom(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    """An XCom value as stored in the metadata database."""
    from airflow.utils.session import create_session

    try:
        from airflow.models.xcom import XComModel as XCom  # Airflow 3
    except ImportError:
        from airflow.models.xcom import XCom  # type: ignore[no-redef]

    with create_session() as session:
        query = XCom.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
        row = session.scalars(query).first() if AIRFLOW_V_3_0_PLUS else query.with_session(session).first()
        return None if row is None else XCom.deserialize_value(row)


def test_submit_defer_and_succeed(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    dag_run = run_dag(
        f"""
        BatchJobOperator(
            task_id="forecast",
            aws_conn_id={aws_conn_id!r},
            job_queue={batch_queue["job_queue"]!r},
            job_definition={batch_queue["job_definition"]!r},
            poll_interval=0.2,
            end_from_trigger=False,
            command=["python", "train.py"],
            environment={{"PRODUCT": "widgets"}},
            memory=1024,
            tags={{"team": "demand"}},
        )
        """
    )

    assert task_instance(dag_run, "forecast").state == "success"
    result = xcom(dag_run, "forecast")
    assert result["status"] == "SUCCEEDED"
    assert result["job_id"] == xcom(dag_run, "forecast", JOB_ID_XCOM_KEY)
    (job,) = BatchHook(aws_conn_id=aws_conn_id).conn.describe_jobs(jobs=[result["job_id"]])["jobs"]
    assert job["jobName"] == job_name_for(dag_run.dag_id, "forecast", dag_run.run_id)
    assert job["tags"] == {
        "team": "demand",
        "airflow:dag_id": dag_run.dag_id,
        "airflow:task_id": "forecast",
        "airflow:run_id": dag_run.run_id,
        "airflow:map_index": "-1",
        "airflow:try_number": "1",
    }
    assert job["container"]["command"] == ["python", "train.py"]
    assert {"name": "PRODUCT", "value": "widgets"} in job["container"]["environment"]
    assert xcom(dag_run, "forecast", "batch_job_details")["job_id"] == result["job_id"]


def simple_task(conn_id: str, queue: dict[str, str], **extra: Any) -> str:
    arguments = {"task_id": "forecast", "aws_conn_id": conn_id, "poll_interval": 0.2, **queue, **extra}
    return "BatchJobOperator(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")\n"


def test_success_ends_the_task_from_the_trigger(aws_conn_id: str, batch_queue: dict[str, str]) -> None:
    dag_run = run_dag(simple_task(aws_conn_id, batch_queue))

    assert task_instance(dag_run, "forecast").state == "success"


def test_failed_job_fails_the_task(
    aws_conn_id: str, batch_queue: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # moto fails every job it runs

    dag_run = run_dag(simple_task(aws_conn_id, batch_queue))

    assert task_instance(dag_run, "forecast").state == "failed"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"job_queue": "no-such-queue"}, "job_queue='no-such-queue'"),
        ({"job_definition": "no-such-definition"}, "job_definition='no-such-definition'"),
    ],
)
def test_bad_input_fails_fast_with_the_aws_message(
    aws_conn_id: str,
    batch_queue: dict[str, str],
    override: dict[str, str],
    expected: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dag_run = run_dag(simple_task(aws_conn_id, {**batch_queue, **override}))

    assert task_instance(dag_run, "forecast").state == "failed"
    logged = caplog.text + capsys.readouterr().out
    assert "AWS Batch rejected job" in logged
    assert expected in logged
    assert "does not exist" in logged  # the AWS message


def test_invalid_job_name_fails_before_any_call(fake_aws: FakeAws) -> None:
    queue = {"job_queue": "models", "job_definition": "forecast"}

    dag_run = run_dag(simple_task("aws_fake", queue, job_name="bad name!"))

    assert task_instance(dag_run, "forecast").state == "failed"
    assert sum(fake_aws.calls.values()) == 0


def test_a_retry_reattaches_to_the_running_job_instead_of_submitting_again(fake_aws: FakeAws) -> None:
    # The first try's job is invisible to DescribeJobs long enough for that try to fail, while it keeps
    # running: the retry must find it (ListJobs + tags) and wait for it, not submit a copy.
    submitted: list[str] = []
    submit, list_jobs = fake_aws._SubmitJob, fake_aws._ListJobs

    def submit_and_hide(body: dict[str, Any]) -> Any:
        status, answer = submit(body)
        submitted.append(answer["jobId"])
        fake_aws.hidden.add(answer["jobId"])
        fake_aws.jobs[answer["jobId"]]["status"] = "RUNNING"
        return status, answer

    def list_then_finish(body: dict[str, Any]) -> Any:
        fake_aws.hidden.clear()  # visible again; it finishes a moment after the retry found it
        threading.Timer(1.0, fake_aws.set_job, args=(submitted[0],), kwargs={"status": "SUCCEEDED"}).start()
        return list_jobs(body)

    fake_aws._SubmitJob, fake_aws._ListJobs = submit_and_hide, list_then_finish  # type: ignore[method-assign]
    queue = {"job_queue": "models", "job_definition": "forecast"}

    dag_run = run_dag(
        simple_task("aws_fake", queue, retries=1, missing_grace=0.3, end_from_trigger=False)[:-2]
        + ", retry_delay=datetime.timedelta(0))\n"
    )

    ti = task_instance(dag_run, "forecast")
    assert ti.state == "success", ti.state
    assert ti.try_number == 2
    assert fake_aws.calls["SubmitJob"] == 1
    assert fake_aws.calls["ListJobs"] == 1
    assert xcom(dag_run, "forecast")["job_id"] == submitted[0]


def test_the_operator_is_built_on_the_running_airflows_base_operator() -> None:
    from airflow_ml_batch._compat import BaseOperator

    assert issubclass(BatchJobOperator, BaseOperator)
    assert BaseOperator.__module__.startswith("airflow.sdk") is AIRFLOW_V_3_0_PLUS
