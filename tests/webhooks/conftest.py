"""Fixtures of the webhook tests: sender payloads (tests/webhooks/fixtures), an API app with
webhook secrets configured, and a worker Runtime for applying events directly."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import test_utils

from api.app import create_app
from core.settings import Settings
from tests.support.registry import RegistryServer
from tests.support.resolver import stub_resolver
from worker.runtime import Runtime

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "hook-secret-0123456789"
QUAY_SECRET = "quay-only-secret"
_ID = re.compile(r'"id": "([0-9a-f-]{36})"')


def fixture_text(name: str, ns: str = "acme") -> str:
    """A fixture with its namespace `acme` replaced by `ns` and its event ids made unique to
    `ns`, so that tests sharing the database do not dedupe each other's events."""
    text = (FIXTURES / name).read_text().replace("acme", ns)
    return _ID.sub(lambda m: f'"id": "{m.group(1)}-{ns}"', text) if ns != "acme" else text


def fixture(name: str, ns: str = "acme") -> Any:
    return orjson.loads(fixture_text(name, ns))


@pytest.fixture(scope="session")
def wh_registry() -> Iterator[RegistryServer]:
    """The real registry the enrichment reads from (no notifications)."""
    with RegistryServer() as reg:
        yield reg


@pytest.fixture(scope="session")
def wh_settings(settings: Settings, wh_registry: RegistryServer) -> Settings:
    return dataclasses.replace(
        settings, webhook_secret=SECRET, webhook_secrets=f"quay={QUAY_SECRET}",
        tutum_registry_host="own.registry.test:5000",
        insecure_registries=frozenset({wh_registry.host}),
    )


@pytest.fixture(scope="session")
async def wh_client(wh_settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    app = create_app(wh_settings)
    stub_resolver(app)
    server = test_utils.TestServer(app)
    c = test_utils.TestClient(server)
    await c.start_server()
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def runtime(wh_settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime(wh_settings, name="test-events", backoff_base=0.01, max_retry_wait=1.0).open()
    yield rt
    await rt.aclose()


@contextmanager
def notifying_registry(client: test_utils.TestClient, **kw: Any) -> Iterator[RegistryServer]:
    """A real registry (RegistryServer options in `kw`) whose notifications go to `client`'s
    registry receiver with the right secret."""
    hook = {"url": str(client.make_url("/api/v1/webhooks/registry/")),
            "headers": {"Authorization": f"Bearer {SECRET}"}, "backoff": "200ms"}
    with RegistryServer(notifications=[hook], **kw) as reg:
        yield reg


@asynccontextmanager
async def runtime_for(settings: Settings, reg: RegistryServer, name: str) -> AsyncIterator[Runtime]:
    """A worker Runtime that reaches `reg` over plain HTTP."""
    s = dataclasses.replace(settings, insecure_registries=settings.insecure_registries | {reg.host})
    rt = await Runtime(s, name=name, backoff_base=0.01, max_retry_wait=1.0).open()
    try:
        yield rt
    finally:
        await rt.aclose()
