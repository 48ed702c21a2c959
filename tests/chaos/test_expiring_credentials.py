"""The shared async client keeps working when its assumed-role credentials live only seconds.

Found by the ``expiring-credentials`` scenario (``benchmarks/chaos.py``): the async copy of refreshable
credentials was re-read every 5 minutes whatever their lifetime, so credentials shorter than that
expired under the triggerer's poller. Here the endpoint issues 4-second AssumeRole
credentials and rejects expired ones with ``ExpiredTokenException``, as AWS does.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from airflow_ml_batch.testing.endpoint import ACCOUNT, REGION, Endpoint

pytestmark = pytest.mark.chaos

LIFETIME = 4.0


async def test_describe_calls_outlive_short_assumed_role_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_ml_batch.hooks.batch import BatchHook

    with Endpoint() as endpoint:
        endpoint.faults.update({"credential_ttl": LIFETIME})
        job_id = endpoint.batch.add_job("RUNNING")
        url = endpoint.url
        extra = {
            "region_name": REGION,
            "endpoint_url": url,
            "role_arn": f"arn:aws:iam::{ACCOUNT}:role/bench",
            "service_config": {"sts": {"endpoint_url": url}},
        }
        connection = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_AWS_CHAOS", json.dumps(connection))
        described_in: set[int] = set()  # the credential lifetimes (0, 1, 2 from the start) a call succeeded in
        async with BatchHook(aws_conn_id="aws_chaos").async_client() as client:
            start = time.monotonic()
            while time.monotonic() < start + 3 * LIFETIME:
                response = await client.describe_jobs(jobs=[job_id])  # raises ExpiredTokenException if stale
                if response["jobs"]:
                    described_in.add(int((time.monotonic() - start) // LIFETIME))
                await asyncio.sleep(0.5)
    assert described_in >= {0, 1, 2}  # calls in each lifetime, however busy the machine
    assert endpoint.sts.rejected_credentials == 0
    assert endpoint.calls["AssumeRole"] >= 3  # a new session at least every lifetime
