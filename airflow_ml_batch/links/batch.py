"""Console link to an AWS Batch job: the Amazon provider's ``BatchJobDetailsLink``, saved without an XCom."""

from __future__ import annotations

from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink

from airflow_ml_batch.links.base import KeptLink


class BatchJobLink(KeptLink, BatchJobDetailsLink):
    """The job in the AWS Batch console, saved when the job is submitted (same name and URL as the provider's)."""
