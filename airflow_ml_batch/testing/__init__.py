"""Run DAGs of this package against a local moto server; nothing reaches AWS (``pip install "airflow-ml-batch[test]"``).

:func:`~airflow_ml_batch.testing.moto_server.local_aws` starts moto in server mode, with real Batch and ECS
resources (queues, job definitions, clusters) that :func:`~airflow_ml_batch.testing.moto_server.create_batch_queue`
and :func:`~airflow_ml_batch.testing.moto_server.create_ecs_cluster` create; its jobs end at once. Point a
connection at it::

    with local_aws() as endpoint_url:
        os.environ["AIRFLOW_CONN_AWS_LOCAL"] = aws_connection_json(endpoint_url)

The repository's own development tools live beside this module in a clone and are not in the wheel: the
AWS-shaped endpoint with jobs that take time and fail, rate limits and fault switches
(``airflow_ml_batch.testing.endpoint``), the local Airflow launcher (``local_airflow``) and the demo's sales
generator (``sales``).
"""

from .moto_server import DEFAULT_REGION, aws_connection_json, create_batch_queue, create_ecs_cluster, local_aws

__all__ = [
    "DEFAULT_REGION",
    "aws_connection_json",
    "create_batch_queue",
    "create_ecs_cluster",
    "local_aws",
]
