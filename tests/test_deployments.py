"""The README's first DAG through ``airflow dags test`` as deployments have it: Airflow's default
configuration (examples on, with their listener plugin), a listener plugin of one's own, OpenLineage
configured, and no listener at all. Each run is a fresh Airflow home, in a process of its own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import aws_connection_uri

README = Path(__file__).parent.parent / "README.md"
RESUMES_ON_A_WORKER = "the task resumes on a worker when its job ends"
ENDS_ON_THE_TRIGGERER = "the task ends here, on the triggerer"

LISTENER_PLUGIN = """
import json, os
from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin


class RecordingListener:
    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance, *args, **kwargs):
        with open(os.environ["RECORDED_EVENTS"], "a") as events:
            events.write(json.dumps({"success": task_instance.task_id}) + "\\n")


class RecordingPlugin(AirflowPlugin):
    name = "recording_listener"
    listeners = [RecordingListener()]
"""


def readme_dag() -> str:
    """The first DAG of the README, as written there."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return next(block for block in blocks if "BatchJobOperator(" in block and "with DAG(" in block)


def dags_test(tmp_path: Path, moto: str, dag_source: str, **settings: str) -> str:
    """``airflow db migrate`` and ``airflow dags test`` in a fresh home; their output (the task's log)."""
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "demand_forecast.py").write_text(dag_source)
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW_CONN_AWS_DEFAULT=aws_connection_uri(moto), **settings)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    run = subprocess.run(
        [*airflow, "dags", "test", "demand_forecast"], env=env, capture_output=True, text=True, timeout=600
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert (home / "airflow.cfg").exists()  # Airflow wrote its default configuration there
    assert "Listeners are not supported" not in output
    assert "XCom not found" not in output
    assert "Submitted AWS Batch job" in output
    return output


def quick(dag_source: str) -> str:
    """The README's DAG polling every second instead of every 30 s."""
    return dag_source.replace("retries=2,", "retries=2,\n        poll_interval=1,")


@pytest.mark.usefixtures("batch_queue")
def test_the_readme_dag_under_the_default_configuration(tmp_path: Path, moto: str) -> None:
    output = dags_test(tmp_path, moto, readme_dag())

    assert f"Listeners are registered (airflow.example_dags.plugins.event_listener): {RESUMES_ON_A_WORKER}" in output
    assert ENDS_ON_THE_TRIGGERER not in output


@pytest.mark.usefixtures("batch_queue")
def test_a_listener_plugin_sees_the_task_succeed(tmp_path: Path, moto: str) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "recording_listener.py").write_text(textwrap.dedent(LISTENER_PLUGIN))
    events = tmp_path / "events.jsonl"

    output = dags_test(
        tmp_path,
        moto,
        quick(readme_dag()),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins),
        RECORDED_EVENTS=str(events),
    )

    assert RESUMES_ON_A_WORKER in output
    assert {"success": "train_widgets"} in [json.loads(line) for line in events.read_text().splitlines()]


@pytest.mark.usefixtures("batch_queue")
def test_openlineage_sees_the_task_complete(tmp_path: Path, moto: str) -> None:
    events = tmp_path / "openlineage.jsonl"
    transport = {"type": "file", "log_file_path": str(events), "append": True}

    output = dags_test(
        tmp_path,
        moto,
        quick(readme_dag()),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(transport),
    )

    assert RESUMES_ON_A_WORKER in output
    assert "OpenLineage" in output.split(RESUMES_ON_A_WORKER)[0].rsplit("Listeners are registered", 1)[1]
    complete = []
    for _ in range(100):  # OpenLineage may emit from a process of its own
        lines = events.read_text().splitlines() if events.exists() else []
        complete = [e for e in map(json.loads, lines) if e.get("eventType") == "COMPLETE"]
        if any(e["job"]["name"] == "demand_forecast.train_widgets" for e in complete):
            break
        time.sleep(0.1)
    assert "demand_forecast.train_widgets" in [e["job"]["name"] for e in complete]


@pytest.mark.usefixtures("batch_queue")
def test_without_listeners_the_task_ends_on_the_triggerer(tmp_path: Path, moto: str) -> None:
    output = dags_test(tmp_path, moto, quick(readme_dag()), AIRFLOW__CORE__LOAD_EXAMPLES="False")

    assert ENDS_ON_THE_TRIGGERER in output
    assert RESUMES_ON_A_WORKER not in output


@pytest.mark.skipif(os.environ.get("EXPECTED_INSTALL") != "wheel", reason="the wheel leg of scripts/test.sh")
def test_the_installed_wheel_is_what_runs() -> None:
    import airflow_ml_batch

    assert "site-packages" in airflow_ml_batch.__file__, "the source tree, not the installed wheel, was imported"
    assert Path(airflow_ml_batch.__file__).parent != README.parent / "airflow_ml_batch"
