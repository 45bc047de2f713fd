"""Registry fixtures: the real docker-registry (anonymous, htpasswd, token), the fake one for
failure injection, a factory of RegistryClients whose sessions are closed after the test, a
factory of worker Runtimes, and the environment of end-to-end process stacks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import redis

from core.settings import Settings
from tests.conftest import create_database
from tests.support.fake_registry import FakeRegistry
from tests.support.processes import Stack, service_env
from tests.support.registry import RegistryServer
from tests.support.services import free_port, redis_db, worker_index
from tests.support.token_server import TokenServer
from worker.registry import RegistryClient, make_session
from worker.runtime import Runtime

ALICE = ("alice", "wonderland")  # htpasswd registry
BOB = ("bob", "builder")  # token registry

# Every host a fixture started: the client factory treats them as insecure (plain http).
_test_hosts: set[str] = set()


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryServer]:
    """Anonymous pull and push."""
    with RegistryServer() as reg:
        _test_hosts.add(reg.host)
        yield reg


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[RegistryServer]:
    """htpasswd (Basic) auth; the user is ALICE."""
    with RegistryServer(htpasswd=dict([ALICE])) as reg:
        _test_hosts.add(reg.host)
        yield reg


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    server = TokenServer(dict([BOB]), public_repos={"public/app"}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_registry(token_server: TokenServer) -> Iterator[RegistryServer]:
    """Bearer token auth against `token_server`; BOB may do anything, anonymous may pull
    public/app only."""
    with tempfile.TemporaryDirectory(prefix="rs-token-") as tmp:
        cert = token_server.write_cert(Path(tmp) / "token.pem")
        with RegistryServer(
            token_realm=token_server.realm,
            token_service=token_server.service,
            token_issuer=token_server.issuer,
            token_cert=cert,
        ) as reg:
            _test_hosts.add(reg.host)
            yield reg


def _fake(**kwargs: Any) -> Iterator[FakeRegistry]:
    fake = FakeRegistry(**kwargs).start()
    _test_hosts.update({fake.host, fake.other_host})
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def fake_registry() -> Iterator[FakeRegistry]:
    """Anonymous fake; see tests/support/fake_registry.py for the behaviour per repo."""
    yield from _fake(slow_seconds=1.0)


@pytest.fixture(scope="session")
def fake_bearer_registry() -> Iterator[FakeRegistry]:
    yield from _fake(auth="bearer", users=dict([BOB]))


@pytest.fixture(scope="session")
def fake_basic_registry() -> Iterator[FakeRegistry]:
    yield from _fake(auth="basic", users=dict([ALICE]))


class ClientFactory(Protocol):
    def __call__(
        self, *, guarded: bool = ..., allow_private: bool = ..., **kw: Any
    ) -> RegistryClient: ...


@pytest.fixture
async def registry_client() -> AsyncIterator[ClientFactory]:
    """`registry_client(**RegistryClient kwargs)` → a client on a fresh session.

    Defaults for tests: every fixture host is insecure (http), quick retries
    (backoff_base=0.01, max_retry_wait=2), timeout 5 s. `guarded=True` (default) uses
    make_session(allow_private=...) (default True: the fixtures are on loopback)."""
    sessions: list[aiohttp.ClientSession] = []
    clients: list[RegistryClient] = []

    def make(*, guarded: bool = True, allow_private: bool = True, **kw: Any) -> RegistryClient:
        timeout = kw.setdefault("timeout", 5.0)
        session = (
            make_session(allow_private=allow_private, timeout=timeout)
            if guarded
            else aiohttp.ClientSession()
        )
        sessions.append(session)
        kw.setdefault("insecure_hosts", frozenset(_test_hosts))
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("max_retry_wait", 2.0)
        client = RegistryClient(session, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for session in sessions:
        await session.close()


OpenRuntime = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[OpenRuntime]:
    """`await runtime(*registries)` → a worker Runtime on this test's loop that reaches the
    given registries over plain HTTP, with quick retries. `with_settings={...}` overrides
    settings; other keywords go to RegistryClient."""
    opened: list[Runtime] = []

    async def open_(*hosts: str, with_settings: dict[str, Any] | None = None, **client: Any) -> Runtime:
        overrides: dict[str, Any] = {
            "insecure_registries": frozenset(hosts), "registry_timeout_seconds": 0.5,
            "sync_backoff_base_seconds": 10, "sync_backoff_max_seconds": 3600, **(with_settings or {}),
        }
        s = dataclasses.replace(settings, **overrides)
        rt = await Runtime(s, name="test", backoff_base=0.01, max_retry_wait=2.0, **client).open()
        opened.append(rt)
        return rt

    yield open_
    for rt in opened:
        await rt.aclose()


@pytest.fixture
def stack(postgres_dsn: str, redis_server_url: str, registry: RegistryServer) -> Iterator[Stack]:
    """Real `registry-sync` processes: a database and a Redis database of their own, and the
    environment of the processes (the test adds to `stack.env` before starting them)."""
    dsn = asyncio.run(create_database(postgres_dsn, f"rs_e2e_{worker_index()}"))
    redis_url = f"{redis_server_url}/{redis_db('e2e')}"
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = service_env(dsn, redis_url, port, INSECURE_REGISTRIES=registry.host, BEAT_INTERVAL_SECONDS="0.2",
                      LEASE_SECONDS="4", SYNC_INTERVAL_SECONDS="2")
    st = Stack(env, port)
    yield st
    st.stop_all()
