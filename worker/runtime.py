"""What a worker process keeps across tasks: one asyncpg pool, one HTTP session and one
registry client (token, ping and config caches), all on one event loop.

Celery runs tasks in threads; `LoopThread` runs the process's loop and each task hands its
coroutine to it and waits. Tests open a Runtime on their own loop instead.
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
from core.crypto import CredentialBox
from core.db import create_pool
from core.names import HUB_HOST
from core.settings import Settings
from worker.registry import RegistryClient, make_session

T = TypeVar("T")
log = structlog.get_logger("worker.runtime")


class Runtime:
    pool: asyncpg.Pool
    client: RegistryClient

    def __init__(self, settings: Settings, name: str = "worker", **client_options: Any) -> None:
        """`client_options` go to RegistryClient (tests shorten its retries)."""
        self.settings = settings
        self._client_options = client_options
        self.name = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.box = CredentialBox(settings.secret_key, settings.secret_keys_old)
        hub = urlsplit(settings.docker_hub_registry_url)
        self.hub_host = hub.netloc
        insecure = set(settings.insecure_registries)
        if hub.scheme == "http":
            insecure.add(hub.netloc)
        self.insecure_hosts = frozenset(insecure)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> Runtime:
        s = self.settings
        self.pool = await create_pool(s.database_url, min_size=1, max_size=s.db_pool_max)
        self._session = make_session(
            policy=AddressPolicy.from_settings(s), timeout=s.registry_timeout_seconds
        )
        self.client = RegistryClient(
            self._session, platform=s.platform, timeout=s.registry_timeout_seconds,
            per_host_limit=s.registry_concurrency, insecure_hosts=self.insecure_hosts,
            max_tags=s.max_tags_per_image, max_tag_pages=s.max_tag_pages, **self._client_options,
        )
        log.info("runtime.started", name=self.name)
        return self

    async def aclose(self) -> None:
        if self._session is None:
            return
        await self.client.close()
        await self._session.close()
        await self.pool.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The process's guarded HTTP session (for calls beside the registry API: Hub metadata)."""
        assert self._session is not None, "Runtime.open() first"
        return self._session

    def host_slot(self, host: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held around the registry work of one sync of an image on `host` (fair sharing
        between hosts). May raise HostBusyError instead of waiting long: the caller hands
        the image back for later. The default admits every sync at once."""
        return contextlib.nullcontext()

    def network_host(self, host: str) -> str:
        """Where to reach a registry: Docker Hub's API host is configured, others are as named."""
        return self.hub_host if host == HUB_HOST else host


class LoopThread:
    """An event loop running in a daemon thread; `run` waits for a coroutine from any thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sync-loop", daemon=True)

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
