"""One AWS-shaped endpoint on 127.0.0.1: AWS Batch, Amazon ECS, CloudWatch Logs and STS.

botocore and aiobotocore talk to it as to AWS (REST-JSON for Batch, JSON 1.1 for ECS and Logs, the query protocol
for STS) and parse every answer, errors included. In-process, a test scripts exact state sequences::

    with Endpoint() as aws:
        job_id = aws.batch.add_job("RUNNING")
        aws.fail_next("DescribeJobs", times=2)          # 429 TooManyRequestsException
        ...
        aws.batch.set_job(job_id, status="SUCCEEDED")

With a :class:`~airflow_ml_batch.testing.endpoint.core.Runner`
(:class:`~airflow_ml_batch.testing.endpoint.core.WallClockRunner`: durations, failure fractions, a long tail) jobs
and tasks run by themselves; :meth:`~airflow_ml_batch.testing.endpoint.server.Endpoint.limit` adds rate limits,
``faults`` fault switches. As its own process (``python -m airflow_ml_batch.testing.endpoint --help``, or
:func:`~airflow_ml_batch.testing.endpoint.standalone.running`) it prints its port;
:class:`~airflow_ml_batch.testing.endpoint.standalone.EndpointClient` drives it from elsewhere. With a
:class:`~airflow_ml_batch.testing.endpoint.container_runner.ContainerRunner` each job is a local process: its
output the job's log stream, its exit code the job's outcome. It runs a Batch job as its job definition's image
would, with the job's environment, for its expected duration, its attempts as the job's ``retryStrategy`` says
(Spot reclaims included); or it runs any job or ECS task as the command a function of yours returns.
"""

from .container_runner import ContainerRun, ContainerRunner, Image
from .core import (
    ACCOUNT,
    REGION,
    AwsError,
    Call,
    Faults,
    LostAnswers,
    Run,
    Runner,
    Timeline,
    TokenBucket,
    WallClockRunner,
)
from .server import Endpoint
from .standalone import EndpointClient, running

__all__ = [
    "ACCOUNT",
    "REGION",
    "AwsError",
    "Call",
    "ContainerRun",
    "ContainerRunner",
    "Endpoint",
    "EndpointClient",
    "Faults",
    "Image",
    "LostAnswers",
    "Run",
    "Runner",
    "Timeline",
    "TokenBucket",
    "WallClockRunner",
    "running",
]
