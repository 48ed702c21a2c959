"""Run DAGs of this package against local, AWS-shaped endpoints; nothing reaches AWS.

Two endpoints, for two needs (``pip install "airflow-ml-batch[test]"``):

- :func:`~airflow_ml_batch.testing.moto_server.local_aws`: moto in server mode, with real Batch and ECS resources
  (queues, job definitions, clusters) that :func:`~airflow_ml_batch.testing.moto_server.create_batch_queue` and
  :func:`~airflow_ml_batch.testing.moto_server.create_ecs_cluster` create; its jobs end at once.
- :class:`~airflow_ml_batch.testing.endpoint.server.Endpoint` (:mod:`airflow_ml_batch.testing.endpoint`): jobs and
  tasks that take time and fail, rate limits, throttling, outages and expiring credentials, scripted state for
  tests.

Either way, point a connection at it::

    with Endpoint(WallClockRunner(duration=60, fail_fraction=0.1)) as aws:
        aws.limit("batch", rate=50)
        os.environ["AIRFLOW_CONN_AWS_LOCAL"] = aws_connection_json(aws.url)
"""

from .endpoint import ContainerRunner, Endpoint, EndpointClient, Image, WallClockRunner, running
from .moto_server import DEFAULT_REGION, aws_connection_json, create_batch_queue, create_ecs_cluster, local_aws

__all__ = [
    "DEFAULT_REGION",
    "ContainerRunner",
    "Endpoint",
    "EndpointClient",
    "Image",
    "WallClockRunner",
    "aws_connection_json",
    "create_batch_queue",
    "create_ecs_cluster",
    "local_aws",
    "running",
]
