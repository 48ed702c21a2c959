"""AWS call errors, without I/O: whether one will pass by itself, and how users read one.

The trigger's poller backs off on a transient error and keeps its triggers waiting, and fails them on any
other error that lasts; the operators retry a transient RunTask refusal. Both ask :func:`is_transient`.
"""

from __future__ import annotations

import asyncio

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    HTTPClientError,
    MetadataRetrievalError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError

#: Error codes that say "later", not "never": the poller backs off and tries again, however long it takes.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "ServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` will likely pass by itself: throttling, 5xx, network, expired or unrefreshed credentials.

    Not transient: any other AWS error (access denied, an unknown cluster), a TLS certificate that does not
    verify, a request botocore rejects (``ParamValidationError``), no region or no credentials at all (a
    connection that is wrong stays wrong), and any exception this function does not know.
    """
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return (
            error.response.get("Error", {}).get("Code") in TRANSIENT_ERROR_CODES or status in (429,) or (status >= 500)
        )
    if isinstance(error, SSLError):
        return False
    network = (BotocoreConnectionError, HTTPClientError, ConnectionClosedError, asyncio.TimeoutError, OSError)
    if isinstance(error, (*network, CredentialRetrievalError, MetadataRetrievalError)):
        return True
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiobotocore depends on it
        return False
    return isinstance(error, aiohttp.ClientError)


def error_text(error: BaseException) -> str:
    """An error as users read it: an AWS error's code and message, otherwise its type and text."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'Error')}: {details.get('Message') or error}"
    return f"{type(error).__name__}: {error}"
