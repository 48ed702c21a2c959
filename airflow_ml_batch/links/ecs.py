"""Console links to ECS: a task and a cluster's tasks (the Amazon provider has none); built on its ``BaseAwsLink``."""

from __future__ import annotations

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink

from airflow_ml_batch.links.base import KeptLink


class EcsTaskLink(KeptLink, BaseAwsLink):
    """The ECS task in the AWS console, saved when the task starts; for a task the trigger runs, once the trigger
    or the resuming worker knows it (as :class:`~airflow_ml_batch.links.batch.BatchJobLink`)."""

    pending_flag = "job_link_pending"

    name = "ECS Task"
    key = "ecs_task"
    format_str = (
        BASE_AWS_CONSOLE_LINK + "/ecs/v2/clusters/{cluster_name}/tasks/{task_id}/configuration?region={region_name}"
    )


class EcsClusterTasksLink(KeptLink, BaseAwsLink):
    """The tasks of a group's ECS cluster in the AWS console, saved when the group defers."""

    name = "ECS Cluster Tasks"
    key = "ecs_cluster_tasks"
    format_str = BASE_AWS_CONSOLE_LINK + "/ecs/v2/clusters/{cluster_name}/tasks?region={region_name}"
