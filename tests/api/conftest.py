"""Fixtures of the API tests beyond the session-wide ones in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import test_utils

from api.app import create_app
from core.settings import Settings
from tests.support.resolver import stub_resolver


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
