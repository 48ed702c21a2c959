"""The core every service hook shares: Airflow's AWS connection, a sync client and a shared async client.

Sync side: :class:`AwsServiceHook` is the Amazon provider's public ``AwsGenericHook``, so the ``aws``
connection (keys, profile, assume-role, ``endpoint_url`` and ``config_kwargs`` in the extra) resolves
exactly as it does for the official operators, and ``hook.conn`` is a cached boto3 client.

Async side: :meth:`AwsServiceHook.async_client` lends out **one aiobotocore client per
(connection, region, service, client config) and event loop**. In a triggerer that means thousands
of triggers share one client, one HTTP connection pool and one credential refresh. The client is
built off the event loop (connection lookup, STS calls and botocore's JSON model loading run in a
worker thread), kept while any trigger holds it and closed when the last one leaves.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, cast

import botocore.loaders
from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook
from asgiref.sync import sync_to_async
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials

if TYPE_CHECKING:
    from aiobotocore.client import AioBaseClient
    from aiobotocore.session import AioSession

log = logging.getLogger(__name__)

#: botocore settings of every client we create, under the connection's ``config_kwargs`` and the
#: hook's ``config``: "standard" retries throttling and transient errors with exponential backoff and
#: jitter; pollers add their own pacing on top.
DEFAULT_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 5})
#: botocore settings over the hook's for the calls that start a job (SubmitJob, RunTask): each is sent once.
#: botocore would re-send a call whose answer was lost (a 5xx, a read timeout, a dropped connection) although
#: AWS may have started the job; the caller looks for it first (``BatchHook.submit_job``).
SEND_ONCE = Config(retries={"mode": "standard", "total_max_attempts": 1})

#: One botocore data loader for every async session in the process: the parsed service models are
#: the largest part of a client's memory, and loading them is the slow, blocking part of creating one.
_LOADER = botocore.loaders.Loader()

# botocore refreshes credentials this long before they expire (RefreshableCredentials' advisory
# timeout); re-reading the sync credentials every _RECHECK keeps the async copy fresh.
_ADVISORY_REFRESH = timedelta(minutes=15)
_RECHECK = timedelta(minutes=5)


def _config_key(config: Config) -> tuple[tuple[str, str], ...]:
    """A hashable summary of a botocore ``Config``: clients with equal settings may be shared."""
    return tuple(sorted((name, repr(getattr(config, name, None))) for name in Config.OPTION_DEFAULTS))


def load_service_data(service_name: str) -> None:
    """Load (and keep for the life of the process) what a client of ``service_name`` reads from botocore's data."""
    _warm_loader(_LOADER, service_name)


def _warm_loader(loader: botocore.loaders.Loader, service_name: str) -> None:
    """Load (and cache) the JSON a client of ``service_name`` needs, so creating it does no disk I/O."""
    for type_name in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        with suppress(botocore.exceptions.DataNotFoundError):
            loader.load_service_model(service_name, type_name)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        with suppress(botocore.exceptions.DataNotFoundError):
            loader.load_data(name)


def _async_credentials(credentials: Credentials) -> Any:
    """An aiobotocore view of sync botocore ``credentials`` whose refreshes run in a worker thread.

    Static keys become ``AioCredentials``. Refreshable ones (assumed roles, web identity, SSO,
    container and instance credentials) become ``AioRefreshableCredentials`` that re-read the sync
    object in a thread every few minutes: the sync object does the STS call when its credentials near
    expiry, so no refresh ever blocks the event loop or fails a waiting trigger that could retry.
    """
    from aiobotocore.credentials import AioCredentials, AioRefreshableCredentials

    if not isinstance(credentials, RefreshableCredentials):
        frozen = credentials.get_frozen_credentials()
        return AioCredentials(
            cast(str, frozen.access_key),
            cast(str, frozen.secret_key),
            frozen.token,
            method=credentials.method,
        )

    def read() -> dict[str, Any]:
        frozen = credentials.get_frozen_credentials()  # refreshes (STS) when near expiry
        expiry = datetime.now(timezone.utc) + _ADVISORY_REFRESH + _RECHECK
        # Credentials that live less than that (a short assumed-role session) must be re-read before they
        # expire: botocore keeps their expiry in a private attribute.
        real_expiry = getattr(credentials, "_expiry_time", None)
        if isinstance(real_expiry, datetime) and real_expiry.tzinfo is not None:
            expiry = min(expiry, real_expiry)
        return {
            "access_key": frozen.access_key,
            "secret_key": frozen.secret_key,
            "token": frozen.token,
            "expiry_time": expiry.isoformat(),
        }

    async def refresh() -> dict[str, Any]:
        return await asyncio.to_thread(read)

    return AioRefreshableCredentials.create_from_metadata(
        metadata=read(), refresh_using=refresh, method=credentials.method
    )


#: Seconds a shared client stays open once its last holder left: calls paced one after the other (SubmitJob,
#: the triggers' starts) would otherwise create a client for nearly every call.
IDLE_SECONDS = 30.0


@dataclass
class _Lease:
    """A shared client: the task creating it, how many hold it, what closes it, and its idle countdown."""

    stack: AsyncExitStack
    client: asyncio.Task[AioBaseClient]
    holders: int = 0
    idle: asyncio.Task[None] | None = None


class SharedAsyncClients:
    """Per event loop registry of aiobotocore clients, shared by key, closed :data:`IDLE_SECONDS` after the last
    holder left (at once if its creation failed, or when the event loop shuts down)."""

    def __init__(self) -> None:
        self._leases: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, _Lease]] = (
            weakref.WeakKeyDictionary()
        )

    def count(self) -> int:
        """How many clients are open (or opening) on the running event loop."""
        return len(self._leases.get(asyncio.get_running_loop(), {}))

    @asynccontextmanager
    async def lease(self, key: Any, hook: AwsServiceHook, send_once: bool = False) -> AsyncIterator[AioBaseClient]:
        """Hold the client for ``key``, creating it with ``hook`` if nobody holds one yet (``send_once``: with
        botocore's retries off)."""
        leases = self._leases.setdefault(asyncio.get_running_loop(), {})
        lease = leases.get(key)
        if lease is None:
            stack = AsyncExitStack()
            lease = leases[key] = _Lease(stack, asyncio.ensure_future(self._open(hook, stack, send_once)))
        lease.holders += 1
        if lease.idle is not None:  # taken again before it closed
            lease.idle.cancel()
            lease.idle = None
        try:
            # shield: one holder giving up must not cancel the creation the others wait for.
            yield await asyncio.shield(lease.client)
        finally:
            lease.holders -= 1
            if lease.holders == 0 and leases.get(key) is lease:
                if lease.client.done() and (lease.client.cancelled() or lease.client.exception() is not None):
                    del leases[key]  # never created: the next holder tries again
                else:
                    lease.idle = asyncio.ensure_future(self._close_when_idle(leases, key, lease))

    async def _close_when_idle(self, leases: dict[Any, _Lease], key: Any, lease: _Lease) -> None:
        """Close the client :data:`IDLE_SECONDS` from now unless a holder takes it again (which cancels this
        before it closes anything); an event loop that shuts down cancels it too, and it closes the client then."""
        try:
            await asyncio.sleep(IDLE_SECONDS)
        finally:
            if lease.holders == 0 and leases.get(key) is lease:
                del leases[key]
                await self._close(lease)

    @staticmethod
    async def _open(hook: AwsServiceHook, stack: AsyncExitStack, send_once: bool = False) -> AioBaseClient:
        session, client_kwargs = await sync_to_async(hook._prepare_async_client)()
        if send_once:
            client_kwargs["config"] = client_kwargs["config"].merge(SEND_ONCE)
        return await stack.enter_async_context(session.create_client(**client_kwargs))

    @staticmethod
    async def _close(lease: _Lease) -> None:
        try:
            await lease.client  # the last holder may leave while the client is still being created
        except BaseException:
            return  # never created: nothing to close
        try:
            await lease.stack.aclose()
        except Exception:
            log.warning("Closing a shared AWS client failed", exc_info=True)


#: The process-wide registry: in a triggerer, every trigger's hook borrows from here.
shared_clients = SharedAsyncClients()


class AwsServiceHook(AwsGenericHook):  # type: ignore[type-arg]
    """Base of the service hooks: the Amazon provider's AWS connection handling plus a shared async client.

    :param aws_conn_id: Airflow connection of type ``aws``; ``None`` uses boto3's default credential chain.
    :param region_name: AWS region; defaults to the connection's ``region_name``.
    :param verify: TLS verification for the clients (``False`` or a CA bundle path).
    :param config: botocore ``Config`` (or dict) for the clients; merged over :data:`DEFAULT_CONFIG`.
    """

    #: botocore service name, set by each service hook.
    service: ClassVar[str]

    def __init__(
        self,
        aws_conn_id: str | None = AwsGenericHook.default_conn_name,
        region_name: str | None = None,
        verify: bool | str | None = None,
        config: Config | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("client_type", self.service)
        if isinstance(config, dict):
            config = Config(**config)
        super().__init__(aws_conn_id=aws_conn_id, region_name=region_name, verify=verify, config=config, **kwargs)
        # Hooks built with the same arguments share one async client; the connection is only looked
        # up (off the event loop) when that client is first created.
        #: what identifies this hook's shared async client (and its poller, its pacers): connection, region, service,
        #: TLS verification, client config
        self.client_key = (
            aws_conn_id,
            region_name,
            self.service,
            repr(verify),
            _config_key(config) if config is not None else None,
        )

    @property
    def config(self) -> Config:
        """botocore ``Config`` of the clients: :data:`DEFAULT_CONFIG`, then the connection's or hook's."""
        return DEFAULT_CONFIG.merge(super().config)

    def _get_caller(self, target_function_name: str = "execute") -> str:
        """The ``Caller/`` of the Amazon provider's User-Agent: the class whose ``target_function_name`` runs.

        The provider finds it with ``inspect.stack()``, which reads the source file of every frame: about
        half the CPU of building a client in a task run. The frames alone tell the same class.
        """
        frame = sys._getframe(1)
        while frame is not None:
            owner = frame.f_locals.get("self") if frame.f_code.co_name == target_function_name else None
            if owner is not None:
                name = type(owner).__name__
                if name == "BaseSensorOperator" and target_function_name != "poke":
                    return self._get_caller("poke")  # as the provider does: the sensor is what pokes
                return name
            frame = frame.f_back  # type: ignore[assignment]
        return "Unknown"

    @cached_property
    def send_once_conn(self) -> Any:
        """A sync boto3 client that sends each call once (:data:`SEND_ONCE`): for the calls that start a job."""
        return self.get_client_type(region_name=self.region_name, config=self.config.merge(SEND_ONCE))

    @asynccontextmanager
    async def async_client(self, send_once: bool = False) -> AsyncIterator[Any]:
        """Borrow the process-wide aiobotocore client for this connection, region and service.

        Use it as ``async with hook.async_client() as client:``. Every caller in the event loop with
        the same connection, region, service and client config gets the same client; it is created
        once, off the event loop, and closed when the last caller leaves. ``send_once``: a second shared
        client, with botocore's retries off (:data:`SEND_ONCE`), for the calls that start a job.
        """
        key = (*self.client_key, "send once") if send_once else self.client_key
        async with shared_clients.lease(key, self, send_once) as client:
            yield client

    def _prepare_async_client(self) -> tuple[AioSession, dict[str, Any]]:
        """Sync, blocking half of creating the async client; runs in a worker thread.

        Looks up the connection, resolves credentials (assuming the role if the connection says so),
        and loads botocore's models, so that only the cheap part of client creation is left for the
        event loop.
        """
        from aiobotocore.session import get_session

        sync_session = self.get_session(region_name=self.region_name)
        session = get_session()
        session.register_component("data_loader", _LOADER)
        _warm_loader(_LOADER, self.service)
        credentials = sync_session.get_credentials()
        if credentials is not None:
            # As the Amazon provider does: aiobotocore has no public setter for credential objects.
            session._credentials = _async_credentials(credentials)  # type: ignore[attr-defined]
        client_kwargs = {
            "service_name": self.service,
            "region_name": self.region_name or sync_session.region_name,
            "endpoint_url": self.conn_config.get_service_endpoint_url(service_name=self.service),
            "config": self.config,
            "verify": self.verify,
        }
        log.debug("Prepared a shared %s client for connection %r", self.service, self.aws_conn_id)
        return session, client_kwargs
