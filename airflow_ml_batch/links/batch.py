"""Console links to AWS Batch: a job (the provider's ``BatchJobDetailsLink``) and a queue, saved without an XCom."""

from __future__ import annotations

from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink, BatchJobQueueLink

from airflow_ml_batch.links.base import KeptLink


class BatchJobLink(KeptLink, BatchJobDetailsLink):
    """The job in the AWS Batch console, saved when the job is submitted (same name and URL as the provider's).

    A job that the trigger submits has no id when the deferring run renders the links: the operator says so
    (``job_link_pending``), and the trigger or the resuming worker saves the link once the job is known.
    """

    pending_flag = "job_link_pending"


class BatchQueueLink(KeptLink, BatchJobQueueLink):
    """A group's job queue in the AWS Batch console (the provider's ``BatchJobQueueLink``), saved as it ends."""
