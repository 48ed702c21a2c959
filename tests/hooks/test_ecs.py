"""EcsHook against a moto server: the sync client for operators and the shared async client for triggers."""

from __future__ import annotations

from typing import Any

from airflow_ml_batch.hooks.ecs import EcsHook


def test_sync_client_runs_and_describes(aws_conn_id: str, ecs_cluster: dict[str, Any]) -> None:
    hook = EcsHook(aws_conn_id=aws_conn_id)

    run = hook.conn.run_task(
        cluster=ecs_cluster["cluster"],
        taskDefinition=ecs_cluster["task_definition"],
        launchType="FARGATE",
        networkConfiguration=ecs_cluster["network_configuration"],
        startedBy="airflow-ml-batch-test",
    )
    task_arn = run["tasks"][0]["taskArn"]
    described = hook.conn.describe_tasks(cluster=ecs_cluster["cluster"], tasks=[task_arn])["tasks"]

    assert run["failures"] == []
    assert [(t["taskArn"], t["startedBy"]) for t in described] == [(task_arn, "airflow-ml-batch-test")]


async def test_async_client_runs_and_describes(aws_conn_id: str, ecs_cluster: dict[str, Any]) -> None:
    hook = EcsHook(aws_conn_id=aws_conn_id)

    async with hook.async_client() as client:
        run = await client.run_task(
            cluster=ecs_cluster["cluster"],
            taskDefinition=ecs_cluster["task_definition"],
            launchType="FARGATE",
            networkConfiguration=ecs_cluster["network_configuration"],
        )
        task_arn = run["tasks"][0]["taskArn"]
        described = await client.describe_tasks(cluster=ecs_cluster["cluster"], tasks=[task_arn])

    assert [t["taskArn"] for t in described["tasks"]] == [task_arn]
    assert described["failures"] == []
