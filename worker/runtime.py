"""What a worker process keeps across tasks: one event loop (in its own thread), one asyncpg
pool, one HTTP session and one registry client (token, ping and config caches).

Celery runs tasks in threads; each task hands its coroutine to this loop and waits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import structlog

from core.crypto import CredentialBox
from core.db import create_pool
from core.names import HUB_HOST
from core.settings import Settings
from worker.registry import RegistryClient, make_session

T = TypeVar("T")
log = structlog.get_logger("worker.runtime")


class Runtime:
    def __init__(self, settings: Settings, name: str = "worker") -> None:
        self.settings = settings
        self.name = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.box = CredentialBox(settings.secret_key)
        hub = urlsplit(settings.docker_hub_registry_url)
        self.hub_host = hub.netloc
        insecure = set(settings.insecure_registries)
        if hub.scheme == "http":
            insecure.add(hub.netloc)
        self.insecure_hosts = frozenset(insecure)
        # config digests known to be in the layers table (rows are never changed or removed)
        self.known_layers: set[str] = set()
        self.pool: asyncpg.Pool
        self.client: RegistryClient
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sync-loop", daemon=True)

    def start(self) -> Runtime:
        self._thread.start()
        self.run(self._open())
        log.info("runtime.started", name=self.name)
        return self

    async def _open(self) -> None:
        s = self.settings
        self.pool = await create_pool(s.database_url, min_size=1, max_size=s.db_pool_max)
        self._session = make_session(
            allow_private=s.allow_private_registries, timeout=s.registry_timeout_seconds
        )
        self.client = RegistryClient(
            self._session, platform=s.platform, timeout=s.registry_timeout_seconds,
            per_host_limit=s.registry_concurrency, insecure_hosts=self.insecure_hosts,
        )

    def network_host(self, host: str) -> str:
        """Where to reach a registry: Docker Hub's API host is configured, others are as named."""
        return self.hub_host if host == HUB_HOST else host

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the process's loop from any thread and wait for its result."""
        return self.submit(coro).result()

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def _close() -> None:
            await self.client.close()
            await self._session.close()
            await self.pool.close()

        try:
            self.run(_close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
