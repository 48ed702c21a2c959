"""moto in server mode: a local endpoint with real AWS Batch and ECS resource shapes.

For trying a fleet DAG on a laptop and for tests: ``pip install "airflow-ml-batch[test]"``, then::

    with local_aws() as endpoint_url:
        os.environ["AIRFLOW_CONN_AWS_LOCAL"] = aws_connection_json(endpoint_url)
        batch = create_batch_queue("aws_local")

Every AWS API call then goes to the local server; nothing reaches AWS.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.hooks.ecs import EcsHook

DEFAULT_REGION = "eu-west-1"


@contextmanager
def local_aws(port: int = 0) -> Iterator[str]:
    """Start moto's server on ``127.0.0.1`` (a free port by default) and yield its URL.

    AWS Batch runs without Docker there: submitted jobs move through the states to SUCCEEDED.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{server._server.server_port}"  # type: ignore[union-attr]
        request = urllib.request.Request(
            f"{url}/moto-api/config",
            data=json.dumps({"batch": {"use_docker": False}}).encode(),
            method="POST",
        )
        urllib.request.urlopen(request).close()
        yield url
    finally:
        server.stop()


def aws_connection_json(endpoint_url: str, region_name: str = DEFAULT_REGION, **extra: Any) -> str:
    """An ``aws`` connection as JSON for ``AIRFLOW_CONN_<ID>``, with every service at ``endpoint_url``."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"region_name": region_name, "endpoint_url": endpoint_url, **extra},
        }
    )


def create_batch_queue(
    aws_conn_id: str,
    job_queue: str = "models",
    job_definition: str = "forecast",
    extra_job_definitions: Sequence[str] = (),
) -> dict[str, str]:
    """Create a compute environment, an enabled job queue and container job definitions."""
    batch = BatchHook(aws_conn_id=aws_conn_id).conn
    iam: Any = AwsGenericHook(aws_conn_id=aws_conn_id, client_type="iam").conn
    role = iam.create_role(RoleName=f"{job_queue}-batch-service", AssumeRolePolicyDocument="{}")["Role"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"{job_queue}-ce", type="UNMANAGED", state="ENABLED", serviceRole=role["Arn"]
    )
    batch.create_job_queue(
        jobQueueName=job_queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}],
    )
    for name in (job_definition, *extra_job_definitions):
        batch.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties={"image": f"{name}:latest", "vcpus": 1, "memory": 512, "command": ["true"]},
        )
    return {"job_queue": job_queue, "job_definition": job_definition}


def create_ecs_cluster(aws_conn_id: str, cluster: str = "models", family: str = "forecast") -> dict[str, Any]:
    """Create an ECS cluster, a Fargate task definition and an ``awsvpc`` network for it."""
    ec2: Any = AwsGenericHook(aws_conn_id=aws_conn_id, client_type="ec2").conn
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as in a default VPC
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=family, Description=family, VpcId=vpc)["GroupId"]
    ecs = EcsHook(aws_conn_id=aws_conn_id).conn
    cluster_arn = ecs.create_cluster(clusterName=cluster)["cluster"]["clusterArn"]
    task_definition = ecs.register_task_definition(
        family=family,
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "model", "image": f"{family}:latest", "essential": True, "cpu": 256, "memory": 512}
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    return {
        "cluster": cluster_arn,
        "task_definition": task_definition,
        "network_configuration": {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
    }
