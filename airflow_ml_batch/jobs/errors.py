"""AWS call errors, without I/O: whether one will pass by itself, and how users read one.

The trigger's poller backs off on a transient error and keeps its triggers waiting, and fails them on any
other error that lasts; the operators retry a transient RunTask refusal. Both ask :func:`is_transient`.
"""

from __future__ import annotations

import asyncio
import random
import socket

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    MetadataRetrievalError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError

#: Error codes of a call AWS refused for its rate: nothing was done, the same call may be sent again.
THROTTLING_ERROR_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
    }
)
#: Error codes that say "later", not "never": the poller backs off and tries again, however long it takes.
TRANSIENT_ERROR_CODES = THROTTLING_ERROR_CODES | frozenset(
    {
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
    connection that is wrong stays wrong), a file that cannot be read (a CA bundle given as ``verify`` that
    does not exist), and any exception this function does not know.
    """
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return (
            error.response.get("Error", {}).get("Code") in TRANSIENT_ERROR_CODES or status in (429,) or (status >= 500)
        )
    if isinstance(error, SSLError):
        return False
    network = (
        BotocoreConnectionError,
        HTTPClientError,
        ConnectionClosedError,
        asyncio.TimeoutError,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    )
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


def error_message(error: BaseException) -> str:
    """What AWS said, alone (an AWS error's message); otherwise the error's text."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Message") or error)
    return str(error)


def is_throttling(error: BaseException) -> bool:
    """Whether AWS refused the call for the caller's rate (429 or a throttling error code)."""
    if not isinstance(error, ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status == 429 or error.response.get("Error", {}).get("Code") in THROTTLING_ERROR_CODES


#: Error codes of a call AWS refused before doing anything, besides throttling: the caller's credentials.
_REFUSED_CODES = THROTTLING_ERROR_CODES | frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})


def answer_lost(error: BaseException) -> bool:
    """Whether a transient failure of a call may hide work AWS did: its answer, not the call, was lost.

    A 5xx, a read timeout or a connection closed while waiting for the answer: AWS may have started the job.
    Throttling, expired credentials and a connection that was never made (refused, timed out while
    connecting) say that nothing was done. Any other transient error counts as lost: the caller looks for the
    job before sending the call again. Non-transient errors are AWS refusing the call (``False``).
    """
    if not is_transient(error):
        return False
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code") not in _REFUSED_CODES and (
            error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) != 429
        )
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ConnectionRefusedError)):
        return False
    return not isinstance(error, (CredentialRetrievalError, MetadataRetrievalError))


def backoff(failures: int, *, first: float = 0.5, longest: float = 20.0) -> float:
    """Seconds to wait after ``failures`` failures in a row: exponential from ``first``, with full jitter."""
    return random.uniform(0, min(longest, first * 2 ** min(failures, 16)))
