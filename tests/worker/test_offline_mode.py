"""OFFLINE (`registry-sync dev --offline`): Docker Hub is never contacted. A sync of a Docker
Hub image fails at once with a sentence saying why, before any request or DNS lookup; a GET
of a Docker Hub name nobody registered is a 404 without a lookup; other registries sync."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.support.registry import RegistryServer, apush_image
from tests.worker.conftest import OpenRuntime
from worker import sync


async def test_offline_never_contacts_docker_hub_and_says_so(
    settings: Settings, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    hub_id = await insert_image(pool, name=f"{unique('hub')}/app", access_proven=True)  # a catalog image
    local = f"{unique('local')}/app"
    await apush_image(registry.url, local, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    local_id = await insert_image(pool, name=f"{registry.host}/{local}", owner_id=user.account.id)
    rt = await runtime(registry.host, with_settings={"offline": True})

    assert await sync.sync_image(rt, hub_id) == sync.FAILED
    row = await pool.fetchrow("SELECT sync_error, access_proven, next_sync_at - now() AS due FROM images"
                              " WHERE id = $1", hub_id)
    assert row["sync_error"].startswith("OfflineError: Docker Hub is not contacted")
    assert "registry-sync dev --offline" in row["sync_error"]
    assert row["access_proven"], "nothing was asked: nothing learnt about access"
    assert row["due"] > timedelta(minutes=50), "waits like a permanent error"
    assert sum(rt.client.requests.values()) == 0, "not a single request"

    assert await sync.sync_image(rt, local_id) == sync.SYNCED  # this machine's registries still sync

    app = create_app(dataclasses.replace(settings, offline=True))
    async with TestClient(TestServer(app)) as c:
        name = unique("never")
        resp = await c.get(f"/api/v1/image/{name}/app/", headers=user.headers)
        assert resp.status == 404
        assert "Docker Hub is not asked" in (await resp.json())["error"]
    assert await pool.fetchval("SELECT count(*) FROM hub_inspections WHERE name = $1", f"{name}/app") == 0
