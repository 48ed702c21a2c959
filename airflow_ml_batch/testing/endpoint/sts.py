"""AWS STS (query protocol, XML answers): AssumeRole, with credentials that may expire in seconds."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from .core import ACCOUNT, Call, Faults


class Sts:
    """Hands out AssumeRole keys; with ``credential_ttl`` on, only those not yet expired are accepted."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.credentials: dict[str, float] = {}  # access key -> expiry
        self.rejected_credentials = 0

    def operations(self) -> dict[str, Callable[[Call], Any]]:
        return {"AssumeRole": self.assume_role}

    def assume_role(self, call: Call) -> str:
        """AssumeRole's XML answer: fresh keys that expire after ``credential_ttl`` (default 1 h)."""
        key = "ASIA" + secrets.token_hex(8).upper()
        expires = time.time() + (self.faults.credential_ttl or 3600)
        self.credentials[key] = expires
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secrets.token_hex(20)}"
            f"</SecretAccessKey><SessionToken>{secrets.token_hex(32)}</SessionToken><Expiration>{stamp}"
            "</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROA:local</AssumedRoleId>"
            f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/local/local</Arn></AssumedRoleUser></AssumeRoleResult>"
            "<ResponseMetadata><RequestId>local</RequestId></ResponseMetadata></AssumeRoleResponse>"
        )

    def accepts(self, access_key: str) -> bool:
        """With ``credential_ttl`` on: whether ``access_key`` is an AssumeRole key that has not expired."""
        if not self.faults.credential_ttl:
            return True
        if self.credentials.get(access_key, 0.0) > time.time():
            return True
        self.rejected_credentials += 1
        return False
