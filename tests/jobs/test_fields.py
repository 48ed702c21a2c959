"""Each request field is declared once, in the operator's signature: everything else follows from it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from airflow_ml_batch.jobs.batch import submit_job_request
from airflow_ml_batch.jobs.ecs import run_task_request
from airflow_ml_batch.operators.base import DeferredJobOperator
from airflow_ml_batch.operators.batch import BatchJobOperator
from airflow_ml_batch.operators.ecs import EcsTaskOperator

BATCH_BASE = {"job_queue": "q", "job_definition": "d"}
ECS_BASE = {"cluster": "c", "task_definition": "t"}


def build_batch(values: dict[str, Any]) -> dict[str, Any]:
    return submit_job_request(BatchJobOperator.request_fields, {**BATCH_BASE, **values}, job_name="n", tags={})


def build_ecs(values: dict[str, Any]) -> dict[str, Any]:
    fields = EcsTaskOperator.request_fields
    return run_task_request(fields, {**ECS_BASE, **values}, started_by="s", client_token="t", tags={})


#: a value for every field that the request builder folds in, and the request key it must change
FOLDED = {
    BatchJobOperator: (
        build_batch,
        {
            "container_overrides": ({"command": ["a"]}, "containerOverrides"),
            "command": (["python"], "containerOverrides"),
            "environment": ({"A": "1"}, "containerOverrides"),
            "vcpus": (2, "containerOverrides"),
            "memory": (1024, "containerOverrides"),
            "gpus": (1, "containerOverrides"),
            "timeout": (60, "timeout"),
            "array_size": (3, "arrayProperties"),
            "tags": ({"team": "x"}, None),  # merged with the task-instance tags by the operator
            "submit_job_kwargs": ({"schedulingPriorityOverride": 9}, "schedulingPriorityOverride"),
            "job_name": ("model-1", None),  # the operator names the job (default: from the task instance)
        },
    ),
    EcsTaskOperator: (
        build_ecs,
        {
            "overrides": ({"cpu": "512"}, "overrides"),
            "command": (["python"], "overrides"),
            "environment": ({"A": "1"}, "overrides"),
            "cpu": (512, "overrides"),
            "memory": (1024, "overrides"),
            "launch_type": ("EC2", "launchType"),
            "enable_execute_command": (True, "enableExecuteCommand"),
            "ephemeral_storage_gib": (30, "overrides"),
            "tags": ({"team": "x"}, None),  # merged with the task-instance tags by the operator
            "run_task_kwargs": ({"referenceId": "r"}, "referenceId"),
            "container_name": ("model", None),  # which container the shorthands override
        },
    ),
}


@pytest.mark.parametrize("operator", [BatchJobOperator, EcsTaskOperator])
def test_every_request_field_is_documented_templated_and_reaches_the_request(
    operator: type[DeferredJobOperator],
) -> None:
    fields = operator.request_fields
    build, folded = FOLDED[operator]
    base = BATCH_BASE if operator is BatchJobOperator else ECS_BASE
    docstring = inspect.getdoc(operator) or ""

    assert fields, "no request fields found in the signature"
    for name, field in fields.items():
        assert f":param {name}:" in docstring, f"{name} is not documented"
        assert (name in operator.template_fields) == field.templated, name
        if field.render:
            assert operator.template_fields_renderers[name] == field.render
    assert set(operator.template_fields) - set(fields) == {"aws_conn_id", "region_name"}

    keyed = {name: field.key for name, field in fields.items() if field.key}
    assert set(keyed) | set(folded) == set(fields), "a field is neither keyed nor folded by the builder"
    request = build({name: f"<{name}>" for name in keyed if name not in base})
    for name, key in keyed.items():
        assert request[key] == base.get(name, f"<{name}>"), name
    plain = build({"container_name": "model"} if operator is EcsTaskOperator else {})
    for name, (value, key) in folded.items():
        if key is not None:
            extra = {"container_name": "model"} if operator is EcsTaskOperator else {}
            assert build({**extra, name: value}).get(key) != plain.get(key), f"{name} does not reach {key}"


def test_the_operator_keeps_every_request_field() -> None:
    operator = BatchJobOperator(
        task_id="train", job_queue="{{ params.queue }}", job_definition="forecast", vcpus=2, command=["a"]
    )

    assert operator.request_values() == {
        name: {"job_queue": "{{ params.queue }}", "job_definition": "forecast", "vcpus": 2, "command": ["a"]}.get(name)
        for name in BatchJobOperator.request_fields
    }


def test_a_subclass_with_its_own_parameters_keeps_the_request_fields() -> None:
    class TeamBatchOperator(BatchJobOperator):
        template_fields = (*BatchJobOperator.template_fields, "team")

        def __init__(self, *, team: str, **kwargs: Any) -> None:
            super().__init__(tags={"team": team}, **kwargs)
            self.team = team

    class PlainSubclass(BatchJobOperator):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)

    operator = TeamBatchOperator(task_id="t", team="demand", job_queue="q", job_definition="d")

    assert operator.tags == {"team": "demand"}
    assert "team" in TeamBatchOperator.template_fields
    assert TeamBatchOperator.request_fields == BatchJobOperator.request_fields
    assert PlainSubclass.template_fields == BatchJobOperator.template_fields


@pytest.mark.parametrize(
    ("operator", "extra", "key"),
    [
        ("BatchJobOperator", {"submit_job_kwargs": {"jobName": "mine"}}, "jobName"),
        ("BatchJobOperator", {"submit_job_kwargs": {"tags": {"airflow:try_number": "9"}}}, "tags"),
        ("EcsTaskOperator", {"run_task_kwargs": {"startedBy": "me"}}, "startedBy"),
        ("EcsTaskOperator", {"run_task_kwargs": {"clientToken": "t"}}, "clientToken"),
        ("EcsTaskOperator", {"run_task_kwargs": {"count": 3}}, "count"),
        ("EcsTaskOperator", {"run_task_kwargs": {"tags": []}}, "tags"),
    ],
)
def test_pass_through_kwargs_cannot_replace_what_identifies_the_job(
    operator: str, extra: dict[str, Any], key: str
) -> None:
    if operator == "BatchJobOperator":
        values = {"job_queue": "q", "job_definition": "d", **extra}
        with pytest.raises(ValueError, match=f"submit_job_kwargs may not set '{key}': "):
            submit_job_request(BatchJobOperator.request_fields, values, job_name="n", tags={})
    else:
        values = {"cluster": "c", "task_definition": "d", **extra}
        with pytest.raises(ValueError, match=f"run_task_kwargs may not set '{key}': "):
            run_task_request(EcsTaskOperator.request_fields, values, started_by="s", client_token="t", tags={})
