"""Fixtures of the API tests beyond the session-wide ones in tests/conftest.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from aiohttp import test_utils
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core.db import create_pool
from core.settings import Settings
from tests.api.lists import ListDb
from tests.conftest import create_database
from tests.support.resolver import stub_resolver
from tests.support.services import worker_index


@pytest.fixture
async def fresh_client(settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    """A client of its own app instance, so its failed-auth counter (kept per app, per client
    address) cannot throttle the shared `client` that every other test uses."""
    app = create_app(settings)
    stub_resolver(app)
    server = test_utils.TestServer(app)
    c = test_utils.TestClient(server)
    await c.start_server()
    yield c
    await c.close()


@pytest.fixture
async def list_db(postgres_dsn: str, settings: Settings) -> AsyncIterator[ListDb]:
    """A fresh database with the schema, an API app on it and a pool."""
    dsn = await create_database(postgres_dsn, f"rs_lists_{worker_index()}")
    pool = await create_pool(dsn, min_size=1, max_size=6)
    client = TestClient(TestServer(create_app(dataclasses.replace(settings, database_url=dsn))))
    await client.start_server()
    try:
        yield ListDb(dsn, pool, client, {}, {})
    finally:
        await client.close()
        await pool.close()
