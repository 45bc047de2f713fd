"""The service's own registry belongs to its accounts by namespace (SPEC §1): the worker reads
it with the service's own access, so `<own registry>/<user>/…` is refused (403, JSON) to every
ordinary account but `<user>`, under any spelling of the registry's host; admins may. An image
made before that rule (or before TUTUM_REGISTRY_HOST named the registry) is refused by its
next sync before any request, and loses its proof of access (no more events)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import test_utils

from api.app import create_app
from core.settings import Settings
from tests.api.helpers import json_error, ok_json
from tests.conftest import MakeUser, insert_image, unique
from tests.support.registry import RegistryServer, push_image
from tests.support.resolver import stub_resolver
from tests.worker.conftest import OpenRuntime
from worker import sync

OWN = "registry.own.test"


@pytest.fixture(scope="module")
async def own_client(settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    """The API with TUTUM_REGISTRY_HOST set (names resolve to a public address, never contacted)."""
    app = create_app(dataclasses.replace(settings, tutum_registry_host=OWN))
    stub_resolver(app)
    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        yield c


async def _post(client: test_utils.TestClient, headers: dict[str, str], name: str) -> test_utils.ClientResponse:
    return await client.post("/api/v1/image/", json={"name": name}, headers=headers)


async def test_another_accounts_namespace_is_refused(own_client, pool: asyncpg.Pool, make_user: MakeUser) -> None:
    alice, bob, admin = await make_user(), await make_user(), await make_user(is_admin=True)
    a, b = alice.account.username, bob.account.username
    for name in (f"{OWN}/{a}/app", f"{OWN}:443/{a}/app", f"{OWN}:80/{a}/app", f"{OWN}/{a}", f"{OWN}/{a}/team/app"):
        body = await json_error(await _post(own_client, bob.headers, name), 403)
        owner_ns = f"{name.split('/')[0]}/{a}/"
        assert body["error"] == (f"'{owner_ns}' is the namespace of the account '{a}' on this service's own "
                                 "registry: only that account (or an admin) may have images there")
        assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name) == 0
    # a namespace without an account yet is no less someone's: it is refused too
    await json_error(await _post(own_client, bob.headers, f"{OWN}/{unique('nobody')}/app"), 403)
    # the account's own namespace, an admin, another port of the host, other registries, Docker Hub
    await ok_json(await _post(own_client, alice.headers, f"{OWN}/{a}/app"), 201)
    await ok_json(await _post(own_client, admin.headers, f"{OWN}/{a}/app"), 201)
    await ok_json(await _post(own_client, bob.headers, f"{OWN}/{b}/app"), 201)
    for name in (f"{OWN}:5000/{a}/app", f"other.example/{a}/app", f"{a}/app"):
        await ok_json(await _post(own_client, bob.headers, name), 201)


async def test_an_image_made_before_the_rule_is_refused_by_its_sync(
    settings: Settings, pool: asyncpg.Pool, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    alice, bob = await make_user(), await make_user()
    a = alice.account.username
    await asyncio.to_thread(push_image, registry.url, f"{a}/app", "v1",
                            {"config": {"Env": ["API_TOKEN=of-alice"]}})
    own = dataclasses.replace(settings, tutum_registry_host=registry.host)
    name = f"{registry.host}/{a}/app"
    squatted = await insert_image(pool, name=name, owner_id=bob.account.id, settings=own, access_proven=True)
    hers = await insert_image(pool, name=name, owner_id=alice.account.id, settings=own)
    rt = await runtime(registry.host, with_settings={"tutum_registry_host": registry.host})
    assert await sync.sync_image(rt, squatted) == sync.FAILED
    assert sum(rt.client.requests.values()) == 0  # refused before any request
    row = await pool.fetchrow("SELECT sync_error, access_proven FROM images WHERE id = $1", squatted)
    assert row["access_proven"] is False
    assert row["sync_error"] == (
        f"RegistryAuthError: '{registry.host}/{a}/' is the namespace of the account '{a}' on this service's "
        "own registry: only that account (or an admin) may have images there")
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", squatted) == 0
    assert await sync.sync_image(rt, hers) == sync.SYNCED
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", hers) == 1
