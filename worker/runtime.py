"""What a worker process keeps across tasks: one asyncpg pool, one HTTP session, one
registry client (token, ping and config caches), the fleet-wide budget of every registry
host and this process's fair share between hosts, all on one event loop.

Celery's task threads hand their coroutines to `LoopThread`'s loop and return
(worker/dispatch.py). Tests open a Runtime on their own loop instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import structlog

from core.address_policy import AddressPolicy
from core.crypto import CredentialBox, Credentials
from core.db import create_pool
from core.insecure import InsecureRegistries
from core.names import HUB_HOST, canonical_host
from core.settings import Settings
from worker.registry import RegistryClient, make_session
from worker.registry.budget import Budget, credential_key
from worker.registry.errors import RegistryError
from worker.registry.limits import parse_limits
from worker.schedule import PollPolicy
from worker.shares import HostShares

T = TypeVar("T")
log = structlog.get_logger("worker.runtime")


class OfflineError(RegistryError):
    """OFFLINE is set and the image is on Docker Hub: nothing was sent (a permanent failure,
    which says nothing about the image's access)."""

class Runtime:
    pool: asyncpg.Pool
    client: RegistryClient
    budget: Budget
    shares: HostShares

    def __init__(self, settings: Settings, name: str = "worker", *, capacity: int | None = None,
                 **client_options: Any) -> None:
        """`capacity`: syncs this process runs at once (default WORKER_CONCURRENCY), the base of
        each host's share. `client_options` go to RegistryClient (tests shorten its retries)."""
        self.settings = settings
        self.capacity = capacity or settings.worker_concurrency
        self._client_options = client_options
        self.name = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.box = CredentialBox(settings.secret_key, settings.secret_keys_old)
        hub = urlsplit(settings.docker_hub_registry_url)
        self.hub_host = hub.netloc
        # INSECURE_REGISTRIES_FILE may change while the worker runs: the client asks each time
        self.insecure = InsecureRegistries(
            [*settings.insecure_registries, *([hub.netloc] if hub.scheme == "http" else [])],
            settings.insecure_registries_file,
        )
        self.hub_credentials = (
            Credentials(settings.docker_hub_username, settings.docker_hub_token)
            if settings.docker_hub_username and settings.docker_hub_token else None
        )
        self.limits = parse_limits(settings.registry_limits)
        self.poll_policy = PollPolicy.from_settings(settings)
        self.quay_hosts = frozenset(canonical_host(h) for h in settings.quay_hosts)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> Runtime:
        s = self.settings
        self.pool = await create_pool(s.database_url, min_size=1, max_size=s.db_pool_max)
        self._session = make_session(
            policy=AddressPolicy.from_settings(s), timeout=s.registry_timeout_seconds
        )
        self.client = RegistryClient(
            self._session, platform=s.platform, timeout=s.registry_timeout_seconds,
            per_host_limit=s.registry_concurrency, insecure_hosts=self.insecure.hosts,
            max_tags=s.max_tags_per_image, max_tag_pages=s.max_tag_pages, **self._client_options,
        )
        self.budget = Budget(
            self.limits, s.redis_url or None, wait_max=s.registry_wait_max_seconds,
            hold_seconds=s.registry_timeout_seconds + 5.0,
        )
        self.client.transport.budget = self.budget
        self.shares = HostShares(
            self.capacity, share=s.host_share, per_host_max=2 * s.registry_concurrency,
            slow_share=s.slow_host_share, account_share=s.account_share,
            last_failure=self.client.transport.last_failure, paused_for=self.budget.paused_for,
            wait_max=s.registry_wait_max_seconds,
        )
        log.info("runtime.started", name=self.name, capacity=self.capacity)
        return self

    async def aclose(self) -> None:
        if self._session is None:
            return
        await self.client.close()
        await self._session.close()
        await self.budget.aclose()
        await self.pool.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The process's guarded HTTP session (for calls beside the registry API: Hub metadata)."""
        assert self._session is not None, "Runtime.open() first"
        return self._session

    def host_slot(self, host: str, *, account: int | None = None,
                  credentials: Credentials | None = None) -> contextlib.AbstractAsyncContextManager[None]:
        """Held around the registry work of one sync of an image of `account` (its owner;
        None: the shared catalog, one account of its own) on `host` (as in image names), read
        with `credentials`: this process's fair share between accounts, then hosts
        (worker/shares.py), and the pause of those credentials (or of the host's anonymous
        requests). Raises HostBusyError instead of waiting long: the caller hands the image
        back for later."""
        return self.shares.slot(self.network_host(host), account, credential_key(credentials))

    def network_host(self, host: str) -> str:
        """Where to reach a registry: Docker Hub's API host is configured, others are as named.
        Raises OfflineError for Docker Hub when OFFLINE is set (before any DNS lookup)."""
        if host == HUB_HOST and self.settings.offline:
            raise OfflineError(
                "Docker Hub is not contacted: this service runs offline (OFFLINE=1, `registry-sync dev "
                "--offline`); run it without that to sync Docker Hub images")
        return self.hub_host if host == HUB_HOST else host

    def is_quay(self, host: str) -> bool:
        """The registry `host` (as in image names) serves Quay's build API (QUAY_HOSTS)."""
        return canonical_host(host) in self.quay_hosts

    def catalog_credentials(self, host: str, owner_id: int | None) -> Credentials | None:
        """The service's Docker Hub credentials (DOCKER_HUB_USERNAME / DOCKER_HUB_TOKEN) for a
        shared-catalog image on Docker Hub that has none of its own; None otherwise. Never for
        an account's image: its access must be proven by its own credentials (SPEC §1)."""
        return self.hub_credentials if owner_id is None and host == HUB_HOST else None


class LoopThread:
    """An event loop running in a daemon thread; `run` waits for a coroutine from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sync-loop", daemon=True)

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
