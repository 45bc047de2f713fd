"""An event is a fact only within its sender's scope (SPEC §3): the attacks of "forged build
and delete events", with two accounts, the real registry and the API app.

- `shared`: an app configured as before receivers had a scope: one WEBHOOK_SECRET, which every
  tenant who pointed a CI or a registry at the service was given; its operator receivers are
  now bound to the service's own registry (TUTUM_REGISTRY_HOST) only.
- account receivers: a tenant's own events change its own images; for other images of the
  repository they are hints (a sync with those images' own credentials).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core import webhook_auth as whauth
from core import webhooks as wh
from core.settings import Settings
from tests.conftest import MakeUser, User, insert_image, unique
from tests.ops.test_openapi import check
from tests.support.registry import RegistryServer, apush_image, delete_tag
from tests.support.resolver import stub_resolver
from tests.webhooks.conftest import ACCOUNT, EXAMPLE, OPERATOR, Sender, make_sender
from worker import inbox, sync
from worker.runtime import Runtime

SHARED = "the-one-secret-every-tenant-had"
OWN = "own.registry.test:5000"
FAR_FUTURE = "9999-12-31T00:00:00Z"
DIGEST_A, DIGEST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.fixture(scope="module")
async def shared(settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(dataclasses.replace(settings, webhook_secret=SHARED, webhook_secrets="", tutum_registry_host=OWN))
    stub_resolver(app)
    async with TestClient(TestServer(app)) as c:
        yield c


async def apply_all(pool: asyncpg.Pool, settings: Settings) -> None:
    while (await inbox.apply_pending(pool, settings, 0)).applied:
        pass


async def process_all(rt: Runtime) -> None:
    """What the worker does after the messages: apply, then the syncs the batch asked for."""
    while rows := await rt.pool.fetch("SELECT id FROM webhook_events WHERE status = 'pending' ORDER BY id LIMIT 1"):
        await inbox.process_event(rt, rows[0]["id"])


async def tag_states(pool: asyncpg.Pool, image_id: int) -> dict[str, tuple[str, str | None]]:
    rows = await pool.fetch("SELECT name, state, manifest_digest FROM tags WHERE image_id = $1", image_id)
    return {r["name"]: (r["state"], r["manifest_digest"]) for r in rows}


def build_body(image: str, status: str, timestamp: str, tag: str = "latest") -> bytes:
    return orjson.dumps({"image": image, "tag": tag, "status": status, "timestamp": timestamp})


def registry_event(host: str, repo: str, action: str, at: str, tag: str, digest: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"repository": repo, "tag": tag}
    if action == "push":
        target |= {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest}
    return {"events": [{"id": unique("ev"), "timestamp": at, "action": action, "target": target,
                        "request": {"host": host, "method": "DELETE" if action == "delete" else "PUT"}}]}


async def owned(pool: asyncpg.Pool, name: str, user: User | None, tags: dict[str, str] | None = None) -> int:
    """A proven image of `name` for `user` (None: the shared catalog), its tags Success at digests."""
    image_id = await insert_image(pool, name=name, owner_id=user.account.id if user else None, access_proven=True)
    for tag, digest in (tags or {}).items():
        await pool.execute("INSERT INTO tags (image_id, name, state, manifest_digest, build_date, state_at)"
                           " VALUES ($1, $2, 'Success', $3, now(), now() - interval '1 hour')", image_id, tag, digest)
    return image_id


async def test_a_forged_build_failure_for_another_tenants_image_or_the_catalog_changes_nothing(
    shared: TestClient, wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    alice, bob = await make_user(), await make_user()
    ns = unique("victim")
    victim = await owned(pool, f"{EXAMPLE}/{ns}/app", alice, {"latest": DIGEST_A})
    catalog = await owned(pool, f"{EXAMPLE}/{ns}/shared", None, {"latest": DIGEST_A})
    own_catalog = await owned(pool, f"{OWN}/library/{ns}", None, {"latest": DIGEST_A})
    # with the build secret every tenant was given: refused, the secret speaks for the own registry
    for image in (f"{EXAMPLE}/{ns}/app", f"{EXAMPLE}/{ns}/shared"):
        body = build_body(image, "failed", FAR_FUTURE)
        resp = await shared.post("/api/v1/webhooks/build/", data=body,
                                 headers={"X-Signature-256": whauth.sign(body, SHARED)})
        assert resp.status == 403, await resp.text()
        assert OWN in (await resp.json())["error"]
    # on the host it does speak for, never the shared catalog
    body = build_body(f"{OWN}/library/{ns}", "failed", FAR_FUTURE)
    signed = {"X-Signature-256": whauth.sign(body, SHARED)}
    assert (await shared.post("/api/v1/webhooks/build/", data=body, headers=signed)).status == 202
    # with bob's own build receiver: stored, and it changes none of them
    mine = await make_sender(wh_client, ACCOUNT, bob)
    for image in (f"{EXAMPLE}/{ns}/app", f"{EXAMPLE}/{ns}/shared"):
        assert (await mine.post(wh_client, wh.BUILD, build_body(image, "failed", FAR_FUTURE))).status == 202
    await apply_all(pool, wh_settings)
    for image_id in (victim, catalog, own_catalog):
        assert await tag_states(pool, image_id) == {"latest": ("Success", DIGEST_A)}
        assert await pool.fetchval("SELECT state FROM images WHERE id = $1", image_id) == "Success"
    notes = await pool.fetch("SELECT status, note FROM webhook_events WHERE repository LIKE $1", f"%{ns}%")
    assert {r["status"] for r in notes} == {"ignored"}
    assert all("sender's own images, never the shared catalog" in r["note"] for r in notes)


async def test_a_year_9999_build_event_does_not_outrank_later_ones(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    name = f"{EXAMPLE}/{unique('clock')}/app"
    image_id = await owned(pool, name, sender.user, {"latest": DIGEST_A})
    assert (await sender.post(wh_client, wh.BUILD, build_body(name, "failed", FAR_FUTURE))).status == 202
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {"latest": ("Failed", DIGEST_A)}  # its own: a fact
    stored = await pool.fetchval("SELECT occurred_at FROM webhook_events WHERE repository = $1", name.split("/", 1)[1])
    assert stored <= datetime.now(UTC)  # at most its receipt
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert (await sender.post(wh_client, wh.BUILD, build_body(name, "success", later))).status == 202
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {"latest": ("Success", DIGEST_A)}


async def test_a_year_9999_delete_does_not_supersede_later_pushes(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ns = unique("tomb")
    image_id = await owned(pool, f"{EXAMPLE}/{ns}/app", sender.user, {"v1": DIGEST_A})
    delete = registry_event(EXAMPLE, f"{ns}/app", "delete", FAR_FUTURE, "v1")
    assert (await sender.post(wh_client, wh.REGISTRY, delete)).status == 202
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {}
    push = registry_event(EXAMPLE, f"{ns}/app", "push", (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
                          "v1", DIGEST_B)
    assert (await sender.post(wh_client, wh.REGISTRY, push)).status == 202
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {"v1": ("Success", DIGEST_B)}
    assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE repository = $1 AND note IS NOT NULL",
                               f"{ns}/app") == 0  # nothing "superseded by a later delete"


async def test_a_delete_with_the_shared_registry_secret_naming_the_victims_host_changes_nothing(
    shared: TestClient, wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    victim = await make_user()
    ns = unique("victim")
    image_id = await owned(pool, f"{EXAMPLE}/{ns}/app", victim, {"v1": DIGEST_A, "v2": DIGEST_A})
    for action, tag in (("delete", "v1"), ("delete", "v2")):
        body = registry_event(EXAMPLE, f"{ns}/app", action, FAR_FUTURE, tag)  # request.host: the victim's
        resp = await shared.post("/api/v1/webhooks/registry/", json=body, headers={"Authorization": f"Bearer {SHARED}"})
        assert resp.status == 202, await resp.text()
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {"v1": ("Success", DIGEST_A), "v2": ("Success", DIGEST_A)}
    hosts = await pool.fetch("SELECT DISTINCT host, status FROM webhook_events WHERE repository = $1", f"{ns}/app")
    assert [tuple(r) for r in hosts] == [(OWN, "ignored")]  # about the registry its secret is bound to
    # and the victim's genuine pushes are not "superseded by a later delete"
    own = await make_sender(wh_client, ACCOUNT, victim)
    push = registry_event(EXAMPLE, f"{ns}/app", "push", datetime.now(UTC).isoformat(), "v1", DIGEST_B)
    assert (await own.post(wh_client, wh.REGISTRY, push)).status == 202
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {"v1": ("Success", DIGEST_B), "v2": ("Success", DIGEST_A)}


async def test_an_accounts_push_is_a_fact_for_its_images_and_a_hint_for_the_others(
    wh_client: TestClient, pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer, make_user: MakeUser,
) -> None:
    alice, bob = await make_user(), await make_user()
    repo = f"{unique('hint')}/app"
    real = await apush_image(wh_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    name = f"{wh_registry.host}/{repo}"
    mine, theirs, catalog = (await owned(pool, name, alice), await owned(pool, name, bob),
                             await owned(pool, name, None))
    sender = await make_sender(wh_client, ACCOUNT, alice)
    now = datetime.now(UTC).isoformat()
    # a real push, and a forged one (a tag and digest the registry never had)
    for tag, digest in (("v1", real.digest), ("forged", DIGEST_B)):
        event = registry_event(wh_registry.host, repo, "push", now, tag, digest)
        assert (await sender.post(wh_client, wh.REGISTRY, event)).status == 202
    batch = await inbox.apply_pending(pool, runtime.settings, 0)
    assert set(await tag_states(pool, mine)) == {"v1", "forged"}  # a fact for alice's own, at once
    assert await tag_states(pool, theirs) == {} and await tag_states(pool, catalog) == {}
    assert batch.to_sync == {theirs, catalog}  # after the commit (inbox.process_event):
    for image_id in batch.to_sync:  # the hinted images are synced with their own credentials
        assert await sync.sync_image(runtime, image_id) == sync.SYNCED
    for image_id in (theirs, catalog):
        assert await tag_states(pool, image_id) == {"v1": ("Success", real.digest)}  # what the registry has
    requested = await pool.fetch(
        "SELECT id FROM images WHERE id = ANY ($1::bigint[]) AND sync_requested_at IS NOT NULL",
        [mine, theirs, catalog])
    assert {r["id"] for r in requested} == {theirs, catalog}


async def test_an_accounts_delete_removes_others_tags_only_when_the_registry_says_so(
    wh_client: TestClient, pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer, make_user: MakeUser,
) -> None:
    alice, bob = await make_user(), await make_user()
    repo = f"{unique('hintdel')}/app"
    v1 = await apush_image(wh_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    name = f"{wh_registry.host}/{repo}"
    mine, theirs = await owned(pool, name, alice, {"v1": v1.digest}), await owned(pool, name, bob, {"v1": v1.digest})
    sender = await make_sender(wh_client, ACCOUNT, alice)
    forged = registry_event(wh_registry.host, repo, "delete", datetime.now(UTC).isoformat(), "v1")
    assert (await sender.post(wh_client, wh.REGISTRY, forged)).status == 202
    await process_all(runtime)
    assert await tag_states(pool, mine) == {}  # alice's own word about alice's image
    assert set(await tag_states(pool, theirs)) == {"v1"}  # the registry still lists it
    await asyncio.to_thread(delete_tag, wh_registry.url, repo, "v1")
    real = registry_event(wh_registry.host, repo, "delete", datetime.now(UTC).isoformat(), "v1")
    assert (await sender.post(wh_client, wh.REGISTRY, real)).status == 202
    await process_all(runtime)
    assert await tag_states(pool, theirs) == {}


async def test_a_delete_is_a_tombstone_only_where_it_was_a_fact(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    alice, bob = await make_user(), await make_user()
    ns = unique("scoped")
    name = f"{EXAMPLE}/{ns}/app"
    mine, theirs = await owned(pool, name, alice), await owned(pool, name, bob)
    sender = await make_sender(wh_client, ACCOUNT, alice)
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    delete = registry_event(EXAMPLE, f"{ns}/app", "delete", (t0 + timedelta(minutes=1)).isoformat(), "v1")
    assert (await sender.post(wh_client, wh.REGISTRY, delete)).status == 202
    await apply_all(pool, wh_settings)
    # the operator's push of v1, older than alice's delete, delivered late
    operator = await make_sender(wh_client, OPERATOR, alice)
    push = registry_event(EXAMPLE, f"{ns}/app", "push", t0.isoformat(), "v1", DIGEST_A)
    assert (await operator.post(wh_client, wh.REGISTRY, push)).status == 202
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, mine) == {}  # alice said it is gone, later than that push
    assert await tag_states(pool, theirs) == {"v1": ("Success", DIGEST_A)}  # alice's word is not bob's


async def test_no_account_can_store_another_senders_event_first(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    alice, mallory = await make_user(), await make_user()
    name = f"{EXAMPLE}/{unique('dedupe')}/app"
    image_id = await owned(pool, name, alice, {"v1": DIGEST_A})
    body = build_body(name, "failed", (datetime.now(UTC) - timedelta(seconds=5)).isoformat(), tag="v1")
    thief = await make_sender(wh_client, ACCOUNT, mallory)
    assert (await thief.post(wh_client, wh.BUILD, body)).status == 202  # the same delivery, first
    ci = await make_sender(wh_client, ACCOUNT, alice)
    resp = await ci.post(wh_client, wh.BUILD, body)
    assert resp.status == 202 and await resp.json() == {"accepted": 1, "duplicates": 0}
    await apply_all(pool, wh_settings)
    assert await tag_states(pool, image_id) == {"v1": ("Failed", DIGEST_A)}


async def test_an_operator_secret_speaks_only_for_the_hosts_it_is_bound_to(
    wh_client: TestClient, pool: asyncpg.Pool, make_user: MakeUser, wh_registry: RegistryServer,
) -> None:
    sender = await make_sender(wh_client, OPERATOR, await make_user())
    ns = unique("bound")
    # the secret is bound to several registry hosts: the payload chooses among them only
    for host, status in ((EXAMPLE, 202), (wh_registry.host, 202), ("elsewhere.example", 403)):
        resp = await sender.post(wh_client, wh.REGISTRY, registry_event(host, f"{ns}/app", "push",
                                                                         datetime.now(UTC).isoformat(), "v1", DIGEST_A))
        assert resp.status == status, await resp.text()
    # `?host=` chooses among the bindings; one binding then speaks whatever the payload says
    resp = await sender.post(wh_client, wh.REGISTRY, registry_event("elsewhere.example", f"{ns}/pinned", "push",
                                                                     datetime.now(UTC).isoformat(), "v1", DIGEST_A),
                             query=f"?host={EXAMPLE}")
    assert resp.status == 202
    assert await pool.fetchval("SELECT host FROM webhook_events WHERE repository = $1", f"{ns}/pinned") == EXAMPLE
    resp = await sender.post(wh_client, wh.REGISTRY, registry_event(EXAMPLE, f"{ns}/other", "push",
                                                                     datetime.now(UTC).isoformat(), "v1", DIGEST_A),
                             query="?host=unbound.example")
    assert resp.status == 401  # no secret bound to that host: as a wrong secret
    # the build receiver's secret is bound to registry.example.com: another host is refused
    resp = await sender.post(wh_client, wh.BUILD, build_body(f"elsewhere.example/{ns}/app", "failed", FAR_FUTURE))
    assert resp.status == 403
    await check(resp, "/api/v1/webhooks/build/", "POST")  # as the OpenAPI document says
    assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE repository LIKE $1 || '/%'", ns) == 3


async def test_hints_sync_another_accounts_image_at_most_once_per_interval(
    wh_client: TestClient, pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer, make_user: MakeUser,
) -> None:
    """An account that sends events without pause about a repository others registered makes
    their images look once per WEBHOOK_HINT_INTERVAL_SECONDS, not once per event."""
    alice, bob = await make_user(), await make_user()
    repo = f"{unique('hintflood')}/app"
    real = await apush_image(wh_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    name = f"{wh_registry.host}/{repo}"
    theirs = await owned(pool, name, bob)
    sender = await make_sender(wh_client, ACCOUNT, alice)
    settings = dataclasses.replace(runtime.settings, webhook_hint_interval_seconds=60.0)
    synced: list[int] = []
    for n in range(5):
        event = registry_event(wh_registry.host, repo, "push", datetime.now(UTC).isoformat(), f"t{n}", real.digest)
        assert (await sender.post(wh_client, wh.REGISTRY, event)).status == 202
        batch = await inbox.apply_pending(pool, settings, 0)
        for image_id in batch.to_sync:
            assert await sync.sync_image(runtime, image_id) == sync.SYNCED
            synced.append(image_id)
    assert synced == [theirs]  # the first hint; the next four within the interval wait
    row = await pool.fetchrow("SELECT last_synced_at, next_sync_at FROM images WHERE id = $1", theirs)
    assert row["next_sync_at"] == row["last_synced_at"] + timedelta(seconds=60)
