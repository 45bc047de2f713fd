"""Fixtures of the dashboard tests: a signed-in HTTP client of the real app (the session-wide
`client`, or an app of their own), and reading a form's CSRF token out of a page."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.conftest import User

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


@dataclass
class Browser:
    """A client with its own cookie jar, as one person's browser."""

    client: TestClient

    async def get(self, path: str, **kw: object) -> ClientResponse:
        return await self.client.get(path, allow_redirects=False, **kw)  # type: ignore[arg-type]

    async def post(self, path: str, data: dict[str, str], **kw: object) -> ClientResponse:
        return await self.client.post(path, data=data, allow_redirects=False, **kw)  # type: ignore[arg-type]

    async def page(self, path: str) -> str:
        resp = await self.get(path)
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.text()

    async def sign_in(self, user: User) -> ClientResponse:
        token = csrf_of(await self.page("/ui/signin"))
        return await self.post("/ui/signin", {"csrf": token, "user": user.account.username, "apikey": user.key,
                                              "next": "/ui/"})

    async def form(self, path: str, data: dict[str, str], page: str | None = None) -> ClientResponse:
        """POST a form of `page` (default `path`) with that page's CSRF token."""
        token = csrf_of(await self.page(page or path))
        return await self.post(path, {"csrf": token, **data})


NewBrowser = Callable[..., Browser]


@pytest.fixture
async def new_browser(client: TestClient) -> AsyncIterator[NewBrowser]:
    """Browsers (each its own cookie jar) on a server: the session-wide `client`'s by default."""
    made: list[TestClient] = []

    def make(of: TestClient | None = None) -> Browser:
        # a second client of a running server shares the server and has its own cookies;
        # only its HTTP session is closed afterwards (closing the client would stop the server)
        c = TestClient((of or client).server)
        made.append(c)
        return Browser(c)

    yield make
    for c in made:
        await c.session.close()
