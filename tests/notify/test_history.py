"""Tag history (SPEC §7): every digest a tag pointed at, written by the transaction that
changed it, by webhook and by poll alike; served newest first in the list envelope."""

from __future__ import annotations

import dataclasses

import asyncpg
from aiohttp.test_utils import TestClient

from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.notify.test_deliveries import _push_event
from tests.support.registry import RegistryServer, apush_image, delete_tag
from worker import sync
from worker.retention import Retention
from worker.runtime import Runtime


async def test_history_keeps_every_digest_seen_by_webhook_and_by_poll(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    repo = f"{unique('hist')}/app"
    name = f"{nt_registry.host}/{repo}"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, access_proven=True)
    a = await apush_image(nt_registry.url, repo, "latest", {"created": "2024-01-01T00:00:00Z"})
    await _push_event(nt_runtime, name, "latest", a.digest)  # seen by webhook
    b = await apush_image(nt_registry.url, repo, "latest", {"created": "2024-02-01T00:00:00Z"})
    assert await sync.sync_image(nt_runtime, image_id) == sync.SYNCED  # seen by poll
    c = await apush_image(nt_registry.url, repo, "latest", {"created": "2024-03-01T00:00:00Z"})
    await _push_event(nt_runtime, name, "latest", c.digest)

    resp = await nt_client.get(f"/api/v1/image/{name}/tag/latest/history/", headers=user.headers)
    assert resp.status == 200
    body = await resp.json()
    objects = body["objects"]
    assert [(o["digest"], o["observed_via"]) for o in objects] == [
        (c.digest, "webhook"), (b.digest, "poll"), (a.digest, "webhook")]
    assert objects[0]["until"] is None
    assert objects[1]["until"] == objects[0]["from"] and objects[2]["until"] == objects[1]["from"]
    assert objects[0]["from"].endswith(" +0000")  # Tutum's RFC 2822 dates
    assert body["meta"]["total_count"] == 3

    # paged like every list: following `next` walks the rest, `offset` works too
    first = await (await nt_client.get(f"/api/v1/image/{name}/tag/latest/history/?limit=2",
                                       headers=user.headers)).json()
    assert [o["digest"] for o in first["objects"]] == [c.digest, b.digest]
    rest = await (await nt_client.get(first["meta"]["next"], headers=user.headers)).json()
    assert [o["digest"] for o in rest["objects"]] == [a.digest] and rest["meta"]["next"] is None
    back = await (await nt_client.get(rest["meta"]["previous"], headers=user.headers)).json()
    assert [o["digest"] for o in back["objects"]] == [c.digest, b.digest]
    by_offset = await (await nt_client.get(f"/api/v1/image/{name}/tag/latest/history/?limit=2&offset=2",
                                           headers=user.headers)).json()
    assert [o["digest"] for o in by_offset["objects"]] == [a.digest]

    # a deleted tag closes its entry; its history stays readable
    delete_tag(nt_registry.url, repo, "latest")
    assert await sync.sync_image(nt_runtime, image_id) == sync.SYNCED
    gone = await (await nt_client.get(f"/api/v1/image/{name}/tag/latest/history/", headers=user.headers)).json()
    assert gone["objects"][0]["digest"] == c.digest and gone["objects"][0]["until"] is not None
    # another account sees neither the image nor its history
    other = await make_user()
    resp = await nt_client.get(f"/api/v1/image/{name}/tag/latest/history/", headers=other.headers)
    assert resp.status == 404
    resp = await nt_client.get(f"/api/v1/image/{name}/tag/nosuch/history/", headers=user.headers)
    assert resp.status == 404
    resp = await nt_client.get(f"/api/v1/image/{name}/tag/latest/history/?after=x", headers=user.headers)
    assert resp.status == 400


async def test_a_repository_called_tag_still_routes_to_its_image(
    pool: asyncpg.Pool, nt_client: TestClient, make_user: MakeUser,
) -> None:
    user = await make_user()
    ns = unique("ns")
    # `<ns>/tag/v1/history` is an image name, and also the history of tag v1 of `<ns>`
    await insert_image(pool, name=f"example.com/{ns}", owner_id=user.account.id, tags=["v1"])
    resp = await nt_client.get(f"/api/v1/image/example.com/{ns}/tag/v1/history/", headers=user.headers)
    assert resp.status == 200 and (await resp.json())["objects"] == []
    await insert_image(pool, name=f"example.com/{ns}/tag/v1/history", owner_id=user.account.id)
    resp = await nt_client.get(f"/api/v1/image/example.com/{ns}/tag/v1/history/", headers=user.headers)
    assert resp.status == 200 and (await resp.json())["name"] == f"example.com/{ns}/tag/v1/history"


async def test_retention_keeps_the_last_entries_of_each_tag(
    pool: asyncpg.Pool, settings: Settings, make_user: MakeUser,
) -> None:
    user = await make_user()
    image_id = await insert_image(pool, owner_id=user.account.id)
    await pool.execute("INSERT INTO tags (image_id, name, manifest_digest) VALUES ($1, 'x', 'sha256:0')", image_id)
    for i in range(1, 6):
        await pool.execute("UPDATE tags SET manifest_digest = $2 WHERE image_id = $1", image_id, f"sha256:{i}")
    await Retention(dataclasses.replace(settings, tag_history_keep=2))(pool, force=True)
    rows = await pool.fetch("SELECT digest, valid_until FROM tag_history WHERE image_id = $1 ORDER BY seq", image_id)
    assert [r["digest"] for r in rows] == ["sha256:4", "sha256:5"] and rows[1]["valid_until"] is None
