"""Polling at scale, in one process against real registries: Docker Hub credentials for the
catalog, tag policies (the API's extension field and the sync's filter, Docker Hub's recency
default), adaptive intervals, read marks and retention."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.read_marks import READ_MARKS
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.freshness.fake_hub import FakeHub
from tests.support.registry import RegistryServer, apush_image
from tests.support.token_server import TokenServer
from tests.worker.conftest import BOB, OpenRuntime
from worker import sync
from worker.retention import Retention


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub().start()
    yield hub
    hub.stop()


async def tag_names(pool: asyncpg.Pool, image_id: int) -> list[str]:
    return [r["name"] for r in await pool.fetch("SELECT name FROM tags WHERE image_id = $1 ORDER BY name", image_id)]


# ------------------------------------------------------------------ Docker Hub credentials


async def test_catalog_images_on_docker_hub_are_polled_with_the_services_credentials(
    token_registry: RegistryServer, token_server: TokenServer, runtime: OpenRuntime, pool: asyncpg.Pool,
    make_user: MakeUser,
) -> None:
    """"Docker Hub" is the real registry behind a token service that follows Docker's token
    spec: Basic credentials buy a bearer token for the repository. The repository is not
    public, so only the service's account can read it."""
    repo = f"{unique('hubns')}/app"
    await apush_image(token_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, auth=BOB)
    hub = {"docker_hub_registry_url": token_registry.url}
    catalog = await insert_image(pool, name=repo)  # a Hub name in the shared catalog
    anonymous = await runtime(with_settings=hub)
    assert await sync.sync_image(anonymous, catalog) == sync.FAILED
    assert (await pool.fetchval("SELECT sync_error FROM images WHERE id = $1", catalog)).startswith("RegistryAuthError")

    token_server.requests.clear()
    with_account = await runtime(with_settings={**hub, "docker_hub_username": BOB[0], "docker_hub_token": BOB[1]})
    assert with_account.limits.for_host("registry-1.docker.io", authenticated=True).pulls == 200  # per account
    await pool.execute("UPDATE images SET next_sync_at = now(), sync_failures = 0 WHERE id = $1", catalog)
    assert await sync.sync_image(with_account, catalog) == sync.SYNCED
    assert await tag_names(pool, catalog) == ["v1"]
    assert (BOB[0], f"repository:{repo}:pull") in token_server.requests
    assert BOB[1] not in repr(with_account.settings)  # a secret setting

    # an account's own image of the same repository never borrows the service's account
    user = await make_user()
    own = await insert_image(pool, name=repo, owner_id=user.account.id)
    assert await sync.sync_image(with_account, own) == sync.FAILED


# ------------------------------------------------------------------ tag policies


async def test_tag_policy_is_an_extension_field_validated_and_shown_at_sync(
    client: TestClient, make_user: MakeUser, registry: RegistryServer,
) -> None:
    user = await make_user()
    name = f"{registry.host}/{unique('pol')}/app"
    policy = {"include": ["v*", "latest"], "exclude": ["*-rc*"], "max_tags": 20}
    resp = await client.post("/api/v1/image/", json={"name": name, "tag_policy": policy}, headers=user.headers)
    assert resp.status == 201, await resp.text()
    image = await resp.json()
    assert "tag_policy" not in image  # the Tutum wire format is exact
    status = await (await client.get(f"/api/v1/image/{name}/sync/", headers=user.headers)).json()
    assert status["tag_policy"] == {**policy, "default": False}
    assert status["poll_interval_seconds"] == 300

    for bad, says in [
        ({"include": "v*"}, "include must be a list"),
        ({"include": ["v 1"]}, "invalid pattern"),
        ({"max_tags": 0}, "max_tags must be a whole number"),
        ({"keep": 3}, "unknown key 'keep'"),
        ("v*", "must be an object"),
    ]:
        resp = await client.patch(f"/api/v1/image/{name}/", json={"tag_policy": bad}, headers=user.headers)
        assert resp.status == 400
        body = await resp.json()
        assert says in body["error"] and "tag_policy" in body["error"], body

    resp = await client.patch(f"/api/v1/image/{name}/", json={"tag_policy": None}, headers=user.headers)
    assert resp.status == 200 and "tag_policy" not in await resp.json()
    status = await (await client.get(f"/api/v1/image/{name}/sync/", headers=user.headers)).json()
    assert status["tag_policy"] == {"include": [], "exclude": [], "max_tags": None, "default": True}


async def test_sync_keeps_only_the_tags_the_policy_allows(
    registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool, make_user: MakeUser,
) -> None:
    user = await make_user()
    repo = f"{unique('filtered')}/app"
    for tag in ("v1.9", "v1.10", "v2.0-rc1", "latest", "nightly"):
        await apush_image(registry.url, repo, tag, {"created": "2024-01-01T00:00:00Z"}, layers=0)
    iid = await insert_image(pool, name=f"{registry.host}/{repo}", owner_id=user.account.id,
                             tag_policy={"include": ["v*", "latest"], "exclude": ["*-rc*"]})
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await tag_names(pool, iid) == ["latest", "v1.10", "v1.9"]
    # max_tags off Docker Hub: the greatest in natural order (v1.10 after v1.9)
    await pool.execute("UPDATE images SET tag_policy = $2, next_sync_at = now() WHERE id = $1", iid,
                       {"include": ["v*"], "exclude": ["*-rc*"], "max_tags": 1})
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await tag_names(pool, iid) == ["v1.10"]  # the others are no longer synced: removed


async def test_docker_hub_images_default_to_their_most_recent_tags(
    registry: RegistryServer, fake_hub: FakeHub, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    """A huge Hub repository (here 12 tags, the default cap lowered to 4): only the 4 most
    recently pushed tags, as Docker Hub's tags API orders them (a page of 3 at a time here)."""
    name = unique("huge")
    repo = f"library/{name}"
    tags = [f"t{i}" for i in range(12)]
    for t in tags:
        await apush_image(registry.url, repo, t, {"created": "2024-01-01T00:00:00Z"}, layers=0)
    # pushed in an order that is neither name order nor list order
    recency = ["t3", "t11", "t0", "t7"]
    fake_hub.tags[repo] = {t: f"2024-01-{10 + i:02d}T00:00:00Z" for i, t in enumerate(tags)}
    fake_hub.tags[repo].update({t: f"2024-06-{30 - i:02d}T00:00:00Z" for i, t in enumerate(recency)})
    iid = await insert_image(pool, name=name)
    hub = {"docker_hub_registry_url": registry.url, "docker_hub_api_url": fake_hub.url, "hub_default_max_tags": 4}
    rt = await runtime(with_settings=hub)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await tag_names(pool, iid) == sorted(recency)
    assert any(f"/v2/repositories/{repo}/tags?ordering=last_updated" in r for r in fake_hub.requests)
    # the hub's API unavailable: the greatest tags in natural order instead
    del fake_hub.tags[repo]
    await pool.execute("UPDATE images SET next_sync_at = now() WHERE id = $1", iid)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await tag_names(pool, iid) == ["t10", "t11", "t8", "t9"]


# ------------------------------------------------------------------ adaptive intervals


async def due_in(pool: asyncpg.Pool, image_id: int) -> float:
    return float((await pool.fetchval("SELECT next_sync_at - now() FROM images WHERE id = $1", image_id))
                 .total_seconds())


async def test_an_image_that_changes_is_polled_more_often_than_one_that_does_not(
    registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool, make_user: MakeUser,
) -> None:
    user = await make_user()
    busy, calm = f"{unique('busy')}/app", f"{unique('calm')}/app"
    for repo in (busy, calm):
        await apush_image(registry.url, repo, "v0", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    ids = {repo: await insert_image(pool, name=f"{registry.host}/{repo}", owner_id=user.account.id)
           for repo in (busy, calm)}
    rt = await runtime(registry.host, with_settings={
        "sync_interval_seconds": 300.0, "sync_interval_min": 60.0, "sync_interval_max": 3600.0})
    intervals: dict[str, list[float]] = {busy: [], calm: []}
    for i in range(1, 8):
        await apush_image(registry.url, busy, f"v{i}", {"created": f"2024-01-0{min(i, 9)}T00:00:00Z"}, layers=0)
        for repo, iid in ids.items():
            assert await sync.sync_image(rt, iid) == sync.SYNCED
            intervals[repo].append(await pool.fetchval("SELECT sync_interval FROM images WHERE id = $1", iid))
            due = await due_in(pool, iid)
            assert 0.89 * intervals[repo][-1] <= due <= 1.11 * intervals[repo][-1]
    print(f"\nintervals, changing every sync: {intervals[busy]}\n           never changing:   {intervals[calm]}")
    assert intervals[busy] == [300, 150, 75, 60, 60, 60, 60]  # halved per change, down to the minimum
    assert intervals[calm] == [300, 450, 675, 1012.5, 1518.75, 2278.125, 3417.1875]
    await apush_image(registry.url, calm, "late", {"created": "2024-02-01T00:00:00Z"}, layers=0)
    assert await sync.sync_image(rt, ids[calm]) == sync.SYNCED
    assert await pool.fetchval("SELECT sync_interval FROM images WHERE id = $1", ids[calm]) == 3417.1875 / 2
    for _ in range(3):
        assert await sync.sync_image(rt, ids[calm]) == sync.SYNCED
    assert await pool.fetchval("SELECT sync_interval FROM images WHERE id = $1", ids[calm]) == 3600  # the maximum


async def test_webhook_fed_and_unread_catalog_images_are_polled_rarely(
    client: TestClient, registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    fed, unread = f"{unique('fed')}/app", f"{unique('unread')}/app"
    for repo in (fed, unread):
        await apush_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    fed_id = await insert_image(pool, name=f"{registry.host}/{fed}", owner_id=user.account.id)
    await pool.execute(
        "INSERT INTO webhook_events (source, dedupe_key, kind, host, repository, tag, occurred_at, payload, status)"
        " VALUES ('registry', $1, 'push', $2, $3, 'v1', now(), '{}', 'done')", unique("ev"), registry.host, fed)
    unread_id = await insert_image(pool, name=f"{registry.host}/{unread}",
                                   created_at=await pool.fetchval("SELECT now() - interval '30 days'"))
    rt = await runtime(registry.host, with_settings={"sync_interval_max": 3600.0, "sync_interval_idle": 86400.0})
    for iid in (fed_id, unread_id):
        assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert 0.89 * 3600 <= await due_in(pool, fed_id) <= 1.11 * 3600  # webhooks feed it: SYNC_INTERVAL_MAX
    assert 0.89 * 86400 <= await due_in(pool, unread_id) <= 1.11 * 86400  # nobody reads it: SYNC_INTERVAL_IDLE

    # a GET marks it read (flushed in a batch, not per request); the next sync is routine again
    resp = await client.get(f"/api/v1/image/{registry.host}/{unread}/", headers=user.headers)
    assert resp.status == 200
    assert await client.server.app[READ_MARKS].flush(pool) >= 1
    assert await pool.fetchval("SELECT read_at > now() - interval '1 minute' FROM images WHERE id = $1", unread_id)
    assert await sync.sync_image(rt, unread_id) == sync.SYNCED
    assert await due_in(pool, unread_id) < 1.11 * 450


# ------------------------------------------------------------------ retention


async def test_retention_prunes_old_rows_in_bounded_batches(settings: Settings, pool: asyncpg.Pool) -> None:
    ns = unique("ret")
    old, recent = "now() - interval '3 days'", "now() - interval '1 minute'"
    for i in range(5):
        await pool.execute(f"INSERT INTO hub_inspections (name, requested_at, finished_at, outcome)"
                           f" VALUES ($1, {old}, {old}, 'missing')", f"{ns}/old{i}")
    await pool.execute(f"INSERT INTO hub_inspections (name, finished_at, outcome) VALUES ($1, {recent}, 'found')",
                       f"{ns}/new")
    for status, at in [("done", old), ("ignored", old), ("done", recent), ("pending", None)]:
        await pool.execute(
            "INSERT INTO webhook_events (source, dedupe_key, kind, host, repository, occurred_at, payload, status,"
            f" processed_at) VALUES ('registry', $1, 'push', 'ret.test', $2, now(), '{{}}', $3, {at or 'NULL'})",
            unique("dk"), ns, status)
    digests = {k: f"sha256:{ns}{k}" for k in ("used", "gone_long", "gone_now", "unmarked")}
    for d in digests.values():
        await pool.execute("INSERT INTO layers (config_digest) VALUES ($1)", d)
    iid = await insert_image(pool, name=f"ret.test/{ns}/app")
    await pool.execute("INSERT INTO tags (image_id, name, config_digest) VALUES ($1, 'v1', $2)", iid, digests["used"])
    await pool.execute(f"UPDATE layers SET orphaned_at = {old} WHERE config_digest = $1", digests["gone_long"])
    await pool.execute(f"UPDATE layers SET orphaned_at = {recent} WHERE config_digest = $1", digests["gone_now"])

    retention = Retention(dataclasses.replace(
        settings, retention_batch=2, hub_inspection_retention_seconds=86400,
        webhook_event_retention_seconds=86400, layer_retention_seconds=86400,
    ))
    deleted = Counter(await retention(pool, force=True))
    # The orphan-marking pass walks the whole (shared) layers table two rows a step, 20 steps
    # a run: other tests' layers may come before ours, so run until the pass reached them.
    for _ in range(500):
        if await pool.fetchval("SELECT orphaned_at IS NOT NULL FROM layers WHERE config_digest = $1",
                               digests["unmarked"]):
            break
        deleted.update(await retention(pool, force=True))
    assert deleted["hub_inspections"] >= 5 and deleted["webhook_events"] >= 2 and deleted["layers"] >= 1
    left = await pool.fetch("SELECT name FROM hub_inspections WHERE name LIKE $1", f"{ns}/%")
    assert [r["name"] for r in left] == [f"{ns}/new"]
    assert sorted(r["status"] for r in await pool.fetch(
        "SELECT status FROM webhook_events WHERE repository = $1", ns)) == ["done", "pending"]
    layers = {r["config_digest"]: r["orphaned_at"] for r in await pool.fetch(
        "SELECT config_digest, orphaned_at FROM layers WHERE config_digest LIKE $1", f"sha256:{ns}%")}
    assert set(layers) == {digests["used"], digests["gone_now"], digests["unmarked"]}
    assert layers[digests["used"]] is None and layers[digests["unmarked"]] is not None  # stamped by the pass
    # a tag pointing at an orphan again clears its stamp: the grace starts over when it is let go
    await pool.execute("UPDATE tags SET config_digest = $2 WHERE image_id = $1", iid, digests["gone_now"])
    assert await pool.fetchval("SELECT orphaned_at FROM layers WHERE config_digest = $1", digests["gone_now"]) is None
    assert retention.layer_grace >= 2 * 3600 and timedelta(seconds=retention.layer_grace) >= timedelta(hours=2)
