"""Provider metadata read by Airflow's providers manager.

Airflow calls :func:`get_provider_info` during provider discovery, which on Airflow 3.2+ runs before
its configuration is ready. This module therefore returns a plain dict and imports nothing from
Airflow, botocore or the rest of this package beyond its version string.
"""

from __future__ import annotations

from typing import Any

from airflow_ml_batch import __version__

BATCH = "AWS Batch (airflow-ml-batch)"
ECS = "Amazon ECS (airflow-ml-batch)"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata: name, version and the modules it contributes."""
    return {
        "package-name": "airflow-ml-batch",
        "name": "ML Batch",
        "description": (
            "Deferrable operators and triggers for fleets of AWS Batch and ECS/Fargate model jobs, "
            "polled in batches by one shared poller per triggerer."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": BATCH,
                "external-doc-url": "https://docs.aws.amazon.com/batch/",
                "tags": ["aws"],
            },
            {
                "integration-name": ECS,
                "external-doc-url": "https://docs.aws.amazon.com/ecs/",
                "tags": ["aws"],
            },
        ],
        "hooks": [
            {
                "integration-name": BATCH,
                "python-modules": ["airflow_ml_batch.hooks.batch", "airflow_ml_batch.hooks.logs"],
            },
            {"integration-name": ECS, "python-modules": ["airflow_ml_batch.hooks.ecs"]},
        ],
        "operators": [
            {
                "integration-name": BATCH,
                "python-modules": ["airflow_ml_batch.operators.batch", "airflow_ml_batch.operators.report"],
            },
            {"integration-name": ECS, "python-modules": ["airflow_ml_batch.operators.ecs"]},
        ],
        "triggers": [
            {"integration-name": BATCH, "python-modules": ["airflow_ml_batch.triggers.batch"]},
            {"integration-name": ECS, "python-modules": ["airflow_ml_batch.triggers.ecs"]},
        ],
        # The Batch job link is the Amazon provider's (same name and URL), the ECS task link ours (the
        # provider has none), the log link the provider's, looked up only once a job has a log stream;
        # on Airflow 3 each is rendered from what the worker run knows, without an XCom (links.base).
        "extra-links": [
            "airflow_ml_batch.links.batch.BatchJobLink",
            "airflow_ml_batch.links.ecs.EcsTaskLink",
            "airflow_ml_batch.links.batch.BatchQueueLink",
            "airflow_ml_batch.links.ecs.EcsClusterTasksLink",
            "airflow_ml_batch.links.logs.JobLogsLink",
            "airflow_ml_batch.links.report.FleetReportLink",
        ],
    }
