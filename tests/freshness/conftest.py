"""Fixtures of the freshness tests (issue 5): a worker Runtime on the test's loop, a fake
Docker Hub repository API, and a real `registry-sync worker` whose "Docker Hub" is the local
registry, with an API app that queues to it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core.settings import Settings
from tests.freshness.fake_hub import FakeHub
from tests.support.processes import Service, wait_for
from tests.support.registry import RegistryServer
from tests.support.resolver import stub_resolver
from tests.support.services import redis_db
from worker.runtime import Runtime

OpenRuntime = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[OpenRuntime]:
    """`await runtime(*hosts)` → a worker Runtime on this loop reaching `hosts` over http."""
    opened: list[Runtime] = []

    async def open_(*hosts: str) -> Runtime:
        s = dataclasses.replace(settings, insecure_registries=frozenset(hosts), registry_timeout_seconds=2.0)
        rt = await Runtime(s, name="test", backoff_base=0.01, max_retry_wait=1.0).open()
        opened.append(rt)
        return rt

    yield open_
    for rt in opened:
        await rt.aclose()


@pytest.fixture(scope="session")
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def hub_registry() -> Iterator[RegistryServer]:
    """The real CNCF registry (anonymous pull and push): Docker Hub's registry for `hub_worker`,
    and a plain registry for the other freshness tests."""
    with RegistryServer() as reg:
        yield reg


@pytest.fixture(scope="session")
def hub_settings(settings: Settings, redis_server_url: str) -> Settings:
    # A Redis database of its own, so this worker consumes only what these tests queue
    # (e2e tests use 10+, the shared app 1+ the xdist index).
    return dataclasses.replace(settings, redis_url=f"{redis_server_url}/{redis_db('freshness')}")


@pytest.fixture(scope="session")
def hub_worker(hub_settings: Settings, hub_registry: RegistryServer, fake_hub: FakeHub) -> Iterator[Service]:
    """`registry-sync worker --queues priority`; Docker Hub is the local registry."""
    redis.Redis.from_url(hub_settings.redis_url).flushdb()
    env = {
        "DATABASE_URL": hub_settings.database_url, "REDIS_URL": hub_settings.redis_url,
        "SECRET_KEY": hub_settings.secret_key, "ALLOW_PRIVATE_REGISTRIES": "1",
        "DOCKER_HUB_REGISTRY_URL": hub_registry.url, "DOCKER_HUB_API_URL": fake_hub.url,
        "LOG_FORMAT": "json", "LOG_LEVEL": "info", "REGISTRY_TIMEOUT_SECONDS": "3",
    }
    svc = Service(["worker", "--queues", "priority", "--concurrency", "4"], env)
    try:
        wait_for(lambda: "ready" in svc.output(), 30, "the worker to be ready")
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
async def hub_client(hub_settings: Settings, hub_worker: Service) -> AsyncIterator[TestClient]:
    """A client of an API app whose tasks reach `hub_worker`."""
    app = create_app(hub_settings)
    stub_resolver(app)
    c = TestClient(TestServer(app))
    await c.start_server()
    yield c
    await c.close()

