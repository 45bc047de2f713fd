"""Inspect-on-GET (done-means 1): a Docker Hub name nobody registered is looked up on the hub
(the local registry plays Docker Hub, a fake plays its repository API) by the real worker,
created once in the shared catalog with its tags, and fully synced; unknown names are 404."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, User, unique
from tests.freshness.fake_hub import FakeHub
from tests.support.registry import RegistryServer, apush_image


async def _get(client: TestClient, user: User, path: str, status: int = 200) -> Any:
    resp = await client.get(path, headers=user.headers)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _catalog_rows(pool: asyncpg.Pool, name: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM images WHERE name = $1 AND owner_id IS NULL", name))


async def test_inspecting_an_unknown_hub_name_creates_it_once_with_its_tags(
    hub_client: TestClient, make_user: MakeUser, hub_registry: RegistryServer, fake_hub: FakeHub,
    pool: asyncpg.Pool,
) -> None:
    alice, bob = await make_user(), await make_user()
    repo = f"{unique('hub')}/app"
    await apush_image(hub_registry.url, repo, "1.0", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    await apush_image(hub_registry.url, repo, "latest", {"created": "2024-02-01T00:00:00Z"}, layers=0)
    fake_hub.repos[repo] = {"description": "An app on the hub", "star_count": 42}
    assert await _catalog_rows(pool, repo) == 0

    image = await _get(hub_client, alice, f"/api/v1/image/{repo}/")
    assert image["name"] == repo
    assert image["tags"] == [f"/api/v1/image/{repo}/tag/1.0/", f"/api/v1/image/{repo}/tag/latest/"]
    assert image["is_private_image"] is False
    assert image["public_url"] == f"https://hub.docker.com/r/{repo}/"
    assert image["registry"] == "/api/v1/registry/registry.hub.docker.com/"
    assert (image["description"], image["star_count"]) == ("An app on the hub", 42)
    # the hub listed its tags anonymously: webhook events may apply to it before any sync
    assert await pool.fetchval("SELECT access_proven FROM images WHERE name = $1 AND owner_id IS NULL", repo)

    # A second inspect (another account, the shared catalog) finds it: no duplicate, no new lookup.
    again = await _get(hub_client, bob, f"/api/v1/image/{repo}/")
    assert again["name"] == repo and again["tags"] == image["tags"]
    assert await _catalog_rows(pool, repo) == 1
    assert fake_hub.requests.count(f"/v2/repositories/{repo}/") == 1
    listed = await _get(hub_client, bob, f"/api/v1/image/?name={repo}")
    assert [o["name"] for o in listed["objects"]] == [repo]

    # The full sync was queued: the worker resolves the tags and the state follows.
    deadline = time.monotonic() + 20
    while (await _get(hub_client, alice, f"/api/v1/image/{repo}/"))["state"] != "Success":
        assert time.monotonic() < deadline, "the inspected image was never synced"
        await asyncio.sleep(0.1)
    synced = await _get(hub_client, alice, f"/api/v1/image/{repo}/")
    assert synced["last_build_date"] == "Thu, 1 Feb 2024 00:00:00 +0000"
    tag = await _get(hub_client, alice, f"/api/v1/image/{repo}/tag/latest/")
    assert tag["state"] == "Success" and tag["layer"] is not None


async def test_concurrent_inspects_of_one_name_create_one_image(
    hub_client: TestClient, make_user: MakeUser, hub_registry: RegistryServer, pool: asyncpg.Pool
) -> None:
    users = [await make_user() for _ in range(4)]
    repo = f"{unique('race')}/app"
    await apush_image(hub_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    images = await asyncio.gather(*(_get(hub_client, u, f"/api/v1/image/{repo}/") for u in users))
    assert {i["name"] for i in images} == {repo}
    assert await _catalog_rows(pool, repo) == 1


async def test_official_image_keeps_its_short_name_and_hub_metadata_is_optional(
    hub_client: TestClient, make_user: MakeUser, hub_registry: RegistryServer
) -> None:
    user = await make_user()
    short = unique("off")
    await apush_image(hub_registry.url, f"library/{short}", "latest", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    image = await _get(hub_client, user, f"/api/v1/image/{short}/")
    assert image["name"] == short
    assert image["public_url"] == f"https://hub.docker.com/_/{short}/"
    assert (image["description"], image["star_count"]) == ("", 0)  # the fake hub API has no entry
    assert image["tags"] == [f"/api/v1/image/{short}/tag/latest/"]


async def test_unknown_hub_name_is_404_and_remembered(
    hub_client: TestClient, make_user: MakeUser, fake_hub: FakeHub, pool: asyncpg.Pool
) -> None:
    user = await make_user()
    repo = f"{unique('nobody')}/nothing"
    body = await _get(hub_client, user, f"/api/v1/image/{repo}/", status=404)
    assert repo in body["error"]
    assert await pool.fetchval("SELECT outcome FROM hub_inspections WHERE name = $1", repo) == "missing"
    requested = await pool.fetchval("SELECT requested_at FROM hub_inspections WHERE name = $1", repo)
    started = time.monotonic()
    await _get(hub_client, user, f"/api/v1/image/{repo}/", status=404)
    assert time.monotonic() - started < 0.5
    # answered from the remembered outcome: no second lookup was requested
    assert await pool.fetchval("SELECT requested_at FROM hub_inspections WHERE name = $1", repo) == requested
    assert await _catalog_rows(pool, repo) == 0
    # tag paths of an unknown hub name are 404 too; writes never inspect
    await _get(hub_client, user, f"/api/v1/image/{repo}/tag/latest/", status=404)
    resp = await hub_client.delete(f"/api/v1/image/{unique('never')}/x/", headers=user.headers)
    assert resp.status == 404
