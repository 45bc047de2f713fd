"""A running service for the client's tests: real `registry-sync web` (and, where asked,
`worker` and `beat`) processes on a database of their own, in front of a real
`docker-registry` with htpasswd auth that notifies the API of pushes; and the installed
`tutum` command run as a subprocess with HOME in a temporary folder."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import redis

from core.accounts import create_account
from tests.conftest import create_database, unique
from tests.support.processes import Service, Stack, service_env, wait_for
from tests.support.registry import RegistryServer
from tests.support.services import redis_db, reserved_port, worker_index

REGISTRY_USER, REGISTRY_PASSWORD = "username", "password"  # the seed's `-u username -p password`
WEBHOOK_SECRET = "client-webhook-secret"
TUTUM = Path(sys.executable).with_name("tutum")


@dataclass
class ClientStack:
    """The service processes, the registry, one account, and a HOME for `tutum`."""

    stack: Stack
    registry: RegistryServer
    user: str
    key: str
    home: Path
    web: Service | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.stack.port}"

    def name(self, repo: str) -> str:
        return f"{self.registry.host}/{repo}"

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of `tutum`: the caller's credentials, our HOME, no stray TUTUM_*."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("TUTUM_")}
        return {
            **base, "HOME": str(self.home), "PATH": f"{TUTUM.parent}{os.pathsep}{base.get('PATH', '')}",
            "TUTUM_REST_HOST": self.url, "TUTUM_USER": self.user, "TUTUM_APIKEY": self.key,
            **self.extra_env, **overrides,
        }

    def tutum(self, *args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the installed `tutum` entry point."""
        return subprocess.run([str(TUTUM), *args], env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def shell(self, line: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command line exactly as a user types it (`tutum` found on PATH)."""
        return subprocess.run(["/bin/sh", "-c", line], env=env or self.env(), capture_output=True, text=True,
                              timeout=60)

    def restart_web(self) -> None:
        assert self.web is not None
        self.web.stop()
        self.web = self.stack.start("web")
        wait_for(lambda: self.stack.up(), 60, "the API to answer again")


def new_account(dsn: str, user: str) -> str:
    """Create an account directly in the database; its API key. Call from a thread in async code."""
    async def create() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return (await create_account(conn, user))[1]
        finally:
            await conn.close()

    return asyncio.run(create())


@pytest.fixture(scope="session")
def tutum_installed() -> Path:
    if not TUTUM.exists():
        pytest.fail(f"{TUTUM} is missing: install the project (pip install -e '.[test]') to get the entry point")
    return TUTUM


@contextmanager
def client_stack(postgres_dsn: str, redis_server_url: str, db: str, home: Path, *,
                 workers: bool) -> Iterator[ClientStack]:
    """web (+ worker and beat when `workers`) on database `db`, the registry notifying web."""
    dsn = asyncio.run(create_database(postgres_dsn, f"{db}_{worker_index()}"))
    redis_url = f"{redis_server_url}/{redis_db('spare')}"
    redis.Redis.from_url(redis_url).flushdb()
    port = reserved_port()  # the web process is restarted on it
    hook = {"url": f"http://127.0.0.1:{port}/api/v1/webhooks/registry/",
            "headers": {"Authorization": f"Bearer {WEBHOOK_SECRET}"}, "backoff": "200ms"}
    with RegistryServer(htpasswd={REGISTRY_USER: REGISTRY_PASSWORD}, notifications=[hook]) as reg:
        env = service_env(
            dsn, redis_url, port, WEBHOOK_SECRET=WEBHOOK_SECRET, INSECURE_REGISTRIES=reg.host,
            WEBHOOK_SECRETS=f"registry@{reg.host}={WEBHOOK_SECRET}",  # the operator's registry (docs/webhooks.md)
            BEAT_INTERVAL_SECONDS="0.5", SYNC_INTERVAL_SECONDS="30", EVENTS_PING_SECONDS="2",
        )
        stack = Stack(env, port)
        user = unique("cli")

        st = ClientStack(stack, reg, user, new_account(dsn, user), home)
        try:
            st.web = stack.start("web")
            if workers:
                stack.start("worker")
                stack.start("beat")
            wait_for(lambda: stack.up(), 60, "the API to answer")
            yield st
        finally:
            stack.stop_all()
