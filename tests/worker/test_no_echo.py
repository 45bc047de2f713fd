"""No echo (SPEC §6): what `…/sync/` shows of a registry's failure is the status line and a
distribution error code, never a word of a body: not the registry's own, not a redirect
hop's, not a token service's. A user who registers a host that leads anywhere must not read
the answers of what the worker can reach (tests/support/hostile_registry.py puts SECRET in
every body)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, unique
from tests.support.hostile_registry import SECRET, HostileRegistry
from tests.worker.conftest import OpenRuntime
from tests.worker.helpers import get, register
from worker import sync


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    reg = HostileRegistry(code_of_echo="MANIFEST_INVALID").start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def hostile_token() -> Iterator[HostileRegistry]:
    """Every request needs a token; the token service answers 500 with SECRET."""
    reg = HostileRegistry(token_status=500).start()
    try:
        yield reg
    finally:
        reg.stop()


async def _synced(client: TestClient, make_user: MakeUser, runtime: OpenRuntime, reg: HostileRegistry,
                  kind: str, outcome: str, *hosts: str, **client_kw: Any) -> tuple[str, dict[str, Any]]:
    """Register `<reg>/<kind>/<unique>` for a new account, sync it once (expecting
    `outcome`): the repository and its `…/sync/`, which holds nothing of any body."""
    user = await make_user()
    repo = f"{kind}/{unique('app')}"
    name = f"{reg.host}/{repo}"
    iid = await register(client, user, name)
    assert await sync.sync_image(await runtime(reg.host, *hosts, **client_kw), iid) == outcome
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    text = repr(status)
    for word in ("internal-only", "db01", "10.20.30.40", "AWS_SECRET", "AccessDenied", "wJalr"):
        assert word not in text, status
    assert SECRET not in text
    return repo, status


async def test_the_registrys_own_error_body_is_not_echoed(
    client: TestClient, make_user: MakeUser, hostile: HostileRegistry, runtime: OpenRuntime,
) -> None:
    """A manifest refused with 400: the tag's problem is the status line and the error code."""
    repo, status = await _synced(client, make_user, runtime, hostile, "echo", sync.SYNCED)
    assert status["tag_issues"] == [{
        "tag": "latest", "note": None,
        "error": f"GET {hostile.host}/v2/{repo}/manifests/latest: answered 400 Bad Request"
                 " (error code MANIFEST_INVALID)",
    }]


async def test_a_redirect_hops_body_is_not_echoed(
    client: TestClient, make_user: MakeUser, hostile: HostileRegistry, runtime: OpenRuntime,
) -> None:
    """The manifest redirects to another origin, which answers 403 with an XML body: the
    error names the registry's request and the status, nothing of the hop's answer."""
    repo, status = await _synced(client, make_user, runtime, hostile, "hop", sync.FAILED, hostile.other_host)
    assert status["error"] == (f"RegistryAuthError: GET {hostile.host}/v2/{repo}/manifests/latest:"
                               " answered 403 Forbidden")
    assert hostile.hits[("GET", "/elsewhere")] == 1


async def test_a_token_services_body_is_not_echoed(
    client: TestClient, make_user: MakeUser, hostile_token: HostileRegistry, runtime: OpenRuntime,
) -> None:
    _, status = await _synced(client, make_user, runtime, hostile_token, "claims", sync.FAILED, max_attempts=1)
    assert status["error"] == (f"RegistryUnavailableError: GET {hostile_token.host}/token:"
                               " answered 500 Internal Server Error")
    assert hostile_token.hits[("GET", "/token")] == 1
