"""Models files: loading, every validation error, longest-first expansion into mapped tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_dag

from airflow_ml_batch.fleet import (
    Model,
    ModelsFileError,
    batch_kwargs,
    ecs_kwargs,
    load_models,
    longest_first,
    push_groups,
)
from airflow_ml_batch.testing.endpoint import Endpoint

DOCUMENT = {
    "defaults": {
        "dataset": "s3://forecasts/history/{id}.parquet",
        "parameters": {"alpha": 0.5, "horizon": 1},
        "resources": {"vcpus": 1, "memory": 2048},
        "expected_minutes": 10,
        "tags": {"team": "demand"},
    },
    "models": [
        {"id": "emea-drinks-0001"},
        {"id": "emea-drinks-0002", "parameters": {"alpha": 0.1}, "expected_minutes": 90, "tags": {"tier": "big"}},
        {
            "id": "apac-snacks-0001",
            "resources": {"memory": 4096},
            "expected_minutes": 30,
            "dataset": "s3://other/snacks.parquet",
        },
    ],
}


def write(tmp_path: Path, document: Any, name: str = "models.json") -> Path:
    path = tmp_path / name
    if name.endswith((".yaml", ".yml")):
        import yaml

        path.write_text(yaml.safe_dump(document))
    else:
        path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("name", ["models.json", "models.yaml"])
def test_defaults_apply_and_model_keys_override_them(tmp_path: Path, name: str) -> None:
    models = load_models(write(tmp_path, DOCUMENT, name))

    assert models[0] == Model(
        id="emea-drinks-0001",
        parameters={"alpha": 0.5, "horizon": 1},
        dataset="s3://forecasts/history/emea-drinks-0001.parquet",
        resources={"vcpus": 1, "memory": 2048},
        expected_minutes=10,
        tags={"team": "demand"},
    )
    assert models[1].parameters == {"alpha": 0.1, "horizon": 1}
    assert models[1].tags == {"team": "demand", "tier": "big"}
    assert models[2].resources == {"vcpus": 1, "memory": 4096}
    assert models[2].dataset == "s3://other/snacks.parquet"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1, 2], "must be a mapping with 'defaults' and 'models'"),
        ({"models": [], "extra": 1}, "unknown top-level keys ['extra']"),
        ({"defaults": [], "models": [{"id": "a"}]}, "'defaults' must be a mapping"),
        ({"models": []}, "'models' must be a non-empty list"),
        ({"models": ["a"]}, "models[0]: must be a mapping, not str"),
        ({"models": [{"parameters": {}}]}, "models[0]: field 'id': required, a non-empty string"),
        ({"models": [{"id": "a"}, {"id": "b"}, {"id": "a"}]}, "models[2] (id 'a'): duplicate id, first at models[0]"),
        ({"models": [{"id": "a", "gpu": 1}]}, "models[0] (id 'a'): field 'gpu': unknown"),
        ({"models": [{"id": "a", "resources": {"ram": 1}}]}, "field 'resources.ram': unknown"),
        ({"models": [{"id": "a", "resources": {"memory": -1}}]}, "field 'resources.memory': must be a positive number"),
        ({"models": [{"id": "a", "resources": {"vcpus": "two"}}]}, "field 'resources.vcpus': must be a positive"),
        ({"models": [{"id": "a", "expected_minutes": "long"}]}, "field 'expected_minutes': must be a number"),
        ({"models": [{"id": "a", "dataset": 5}]}, "field 'dataset': must be a string"),
        ({"models": [{"id": "a", "parameters": [1]}]}, "field 'parameters': must be a mapping"),
        # ids and tags become AWS tags: AWS's rules, checked when the file loads, not at the 3000th SubmitJob
        ({"models": [{"id": "emea;beverages"}]}, "(id 'emea;beverages'): field 'id': becomes the job's model_id"),
        ({"models": [{"id": "x" * 257}]}, "tag value has at most 256 characters, not 257"),
        ({"models": [{"id": "a", "tags": {"cost<centre>": "1"}}]}, "field 'tags.cost<centre>': the tag key"),
        ({"models": [{"id": "a", "tags": {"aws:owner": "me"}}]}, "field 'tags.aws:owner': the tag key 'aws:owner'"),
        ({"models": [{"id": "a", "tags": {"airflow:try_number": "1"}}]}, "starts with a reserved prefix"),
        ({"defaults": {"tags": {"team": "a" * 300}}, "models": [{"id": "a"}]}, "field 'tags.team': a tag value"),
    ],
)
def test_every_error_names_the_file_the_entry_and_the_field(tmp_path: Path, document: Any, message: str) -> None:
    path = write(tmp_path, document)

    with pytest.raises(ModelsFileError) as raised:
        load_models(path)

    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match=r"missing\.json: cannot be read"):
        load_models(tmp_path / "missing.json")
    (tmp_path / "broken.yaml").write_text("models: [id: a\n")
    with pytest.raises(ModelsFileError, match=r"broken\.yaml: not valid YAML"):
        load_models(tmp_path / "broken.yaml")


def test_five_thousand_models_load(tmp_path: Path) -> None:
    document = {"defaults": {"expected_minutes": 10}, "models": [{"id": f"m{n:05d}"} for n in range(5000)]}

    models = load_models(write(tmp_path, document))

    assert [m.id for m in models[:2]] == ["m00000", "m00001"]
    assert len(models) == 5000


def test_longest_expected_jobs_come_first_and_ties_keep_the_file_order(tmp_path: Path) -> None:
    models = load_models(write(tmp_path, DOCUMENT))

    assert [m.id for m in longest_first(models)] == ["emea-drinks-0002", "apac-snacks-0001", "emea-drinks-0001"]
    assert [kwargs["tags"]["model_id"] for kwargs in batch_kwargs(models)] == [
        "emea-drinks-0002",
        "apac-snacks-0001",
        "emea-drinks-0001",
    ]


def test_expansion_for_batch_and_ecs(tmp_path: Path) -> None:
    models = load_models(write(tmp_path, DOCUMENT))

    (first, *_) = batch_kwargs(models, command=["python", "model.py"])
    (ecs_first, *_) = ecs_kwargs(
        [Model(id="x", resources={"cpu": 512, "memory": 1024}, expected_minutes=1)], command=["run"]
    )

    assert first == {
        "environment": {
            "MODEL_ID": "emea-drinks-0002",
            "MODEL_PARAMETERS": '{"alpha": 0.1, "horizon": 1}',
            "MODEL_DATASET": "s3://forecasts/history/emea-drinks-0002.parquet",
        },
        "tags": {"team": "demand", "tier": "big", "model_id": "emea-drinks-0002"},
        "vcpus": 1,
        "memory": 2048,
        "command": ["python", "model.py"],
    }
    assert ecs_first == {
        "environment": {"MODEL_ID": "x", "MODEL_PARAMETERS": "{}"},
        "tags": {"model_id": "x"},
        "cpu": 512,
        "memory": 1024,
        "command": ["run"],
    }


@pytest.mark.usefixtures("airflow_db")
def test_a_models_file_runs_as_one_mapped_task(tmp_path: Path, aws_endpoint: Endpoint) -> None:
    aws_endpoint.batch.submitted_status = "SUCCEEDED"
    path = write(tmp_path, DOCUMENT)

    dag_run = run_dag(
        f"""
        BatchJobOperator.partial(
            task_id="model", aws_conn_id="aws_fake", job_queue="models", job_definition="forecast", poll_interval=0.1
        ).expand_kwargs(batch_kwargs(load_models({str(path)!r})))
        """,
        imports="from airflow_ml_batch.fleet import batch_kwargs, load_models\n",
    )

    states = {ti.map_index: ti.state for ti in dag_run.get_task_instances()}
    assert states == {0: "success", 1: "success", 2: "success"}
    submitted = [body["tags"]["model_id"] for op, body in aws_endpoint.requests if op == "SubmitJob"]
    assert sorted(submitted) == sorted(m["id"] for m in DOCUMENT["models"])


def test_push_groups_without_the_task_instance_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match="push_groups needs the running task instance, not None: give the task a ti"):
        push_groups([{"tags": {"model_id": "m1"}}], None)
