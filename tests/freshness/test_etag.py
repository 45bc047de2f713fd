"""ETag / If-None-Match (done-means 4): an unchanged image answers 304 with no body; after a
sync that changed its tags the same validator gets 200 and a new ETag. Tags and lists too."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient

from api.etag import matches
from tests.conftest import MakeUser, User, unique
from tests.freshness.conftest import OpenRuntime
from tests.support.registry import RegistryServer, apush_image
from worker import sync


async def _etag(client: TestClient, user: User, path: str) -> str:
    resp = await client.get(path, headers=user.headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "private, no-cache"
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    return etag


async def _conditional(client: TestClient, user: User, path: str, etag: str) -> tuple[int, bytes, str | None]:
    resp = await client.get(path, headers={**user.headers, "If-None-Match": etag})
    return resp.status, await resp.read(), resp.headers.get("ETag")


async def test_conditional_get_is_304_until_a_sync_changes_the_image(
    client: TestClient, make_user: MakeUser, hub_registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    repo = f"{unique('etag')}/app"
    await apush_image(hub_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    name = f"{hub_registry.host}/{repo}"
    resp = await client.post("/api/v1/image/", json={"name": name}, headers=user.headers)
    assert resp.status == 201
    iid = await pool.fetchval("SELECT id FROM images WHERE name = $1 AND owner_id = $2", name, user.account.id)
    rt = await runtime(hub_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    paths = {
        "image": f"/api/v1/image/{name}/",
        "tag": f"/api/v1/image/{name}/tag/v1/",
        "tags": f"/api/v1/image/{name}/tag/",
        "list": f"/api/v1/image/?name={name}",
    }
    before = {k: await _etag(client, user, p) for k, p in paths.items()}
    for key, path in paths.items():
        status, body, etag = await _conditional(client, user, path, before[key])
        assert (status, body, etag) == (304, b"", before[key]), key
    # a list of validators, and the weak form, match too; HEAD answers 304 as well
    assert (await _conditional(client, user, paths["image"], f'"x", W/{before["image"]}'))[0] == 304
    resp = await client.head(paths["image"], headers={**user.headers, "If-None-Match": before["image"]})
    assert resp.status == 304

    # a sync that changes nothing keeps the validators
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert (await _conditional(client, user, paths["image"], before["image"]))[0] == 304

    await apush_image(hub_registry.url, repo, "v2", {"created": "2024-02-01T00:00:00Z"}, layers=0)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    for key in ("image", "tags", "list"):
        status, body, etag = await _conditional(client, user, paths[key], before[key])
        assert status == 200 and body and etag and etag != before[key], key
    assert (await _conditional(client, user, paths["tag"], before["tag"]))[0] == 304  # v1 itself unchanged

    # another account's view of the same list is another representation
    other = await make_user()
    assert await _etag(client, other, "/api/v1/image/") != await _etag(client, user, "/api/v1/image/")


async def test_errors_carry_no_etag(client: TestClient, make_user: MakeUser) -> None:
    user = await make_user()
    resp = await client.get("/api/v1/image/example.com/nobody/here/", headers=user.headers)
    assert resp.status == 404 and "ETag" not in resp.headers


def test_if_none_match_parsing() -> None:
    assert matches('"a"', '"a"') and matches('W/"a"', '"a"') and matches("*", '"a"')
    assert matches('"b", "a"', '"a"') and not matches('"b"', '"a"') and not matches("", '"a"')
