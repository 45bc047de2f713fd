"""Applying stored events (worker/inbox.py, worker/enrich.py, worker/sweep.py) against the
real Postgres and registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from api.webhooks import store_events
from core import webhooks as wh
from core.names import parse_image_name
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.support.registry import RegistryServer, apush_image, apush_index
from worker import enrich, inbox, sweep
from worker.runtime import Runtime

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def ev(kind: str, name: str, *, tag: str | None = None, digest: str | None = None,
       state: str | None = None, at: datetime = T0, key: str | None = None) -> wh.WebhookEvent:
    n = parse_image_name(name)
    return wh.WebhookEvent(
        wh.REGISTRY if state is None else wh.BUILD, key or unique("key"), kind, n.host,
        n.repository, tag, digest, state, occurred_at=at, payload={"test": True},
    )


async def apply(pool: asyncpg.Pool, settings: Settings, *evs: wh.WebhookEvent) -> list[str]:
    """Store the events and apply them as the worker does (in batches); their statuses."""
    ids = await store_events(pool, list(evs))
    for i in ids:
        await inbox.apply_pending(pool, settings, i)
    rows = await pool.fetch("SELECT status FROM webhook_events WHERE id = ANY ($1::bigint[]) ORDER BY id", ids)
    return [r["status"] for r in rows]


async def tags(pool: asyncpg.Pool, image_id: int) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch("SELECT * FROM tags WHERE image_id = $1", image_id)
    return {r["name"]: r for r in rows}


async def image_state(pool: asyncpg.Pool, image_id: int) -> tuple[str, datetime | None]:
    row = await pool.fetchrow("SELECT state, last_build_date FROM images WHERE id = $1", image_id)
    return row["state"], row["last_build_date"]


async def test_push_makes_the_tag_visible_then_enrichment_completes_it(
    pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer,
) -> None:
    repo = f"{unique('fx')}/app"
    pushed = await apush_image(wh_registry.url, repo, "v1", {
        "created": "2024-01-01T00:00:00Z", "author": "me", "config": {"Cmd": ["sh"]}})
    name = f"{wh_registry.host}/{repo}"
    image_id = await insert_image(pool, name=name, access_proven=True)
    [event_id] = await store_events(pool, [ev(wh.PUSH, name, tag="v1", digest=pushed.digest)])

    batch = await inbox.apply_pending(pool, runtime.settings, event_id)
    [applied] = [a for a in batch.applied if a.event_id == event_id]
    assert applied.status == inbox.DONE
    tag = (await tags(pool, image_id))["v1"]
    assert (tag["state"], tag["manifest_digest"], tag["build_date"]) == ("Success", pushed.digest, T0)
    assert tag["config_digest"] is None
    assert await image_state(pool, image_id) == ("Success", T0)

    done = await enrich.enrich_pushes(runtime, [enrich.Pushed(applied.image_ids, "v1", pushed.digest)])
    assert done == enrich.Enriched(completed=1)
    tag = (await tags(pool, image_id))["v1"]
    assert tag["config_digest"] == pushed.config_digest
    assert tag["build_date"] == T0  # the push is later than the config's created
    layer = await pool.fetchrow("SELECT * FROM layers WHERE config_digest = $1", pushed.config_digest)
    assert layer["author"] == "me" and layer["run_command"] == "sh"
    # a second message for the same event changes nothing
    assert (await inbox.apply_pending(pool, runtime.settings, event_id)).applied == []


async def test_multiarch_push_is_one_tag_with_the_platform_resolved(
    pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer,
) -> None:
    repo = f"{unique('fx')}/multi"
    idx = await apush_index(wh_registry.url, repo, "1.0")
    name = f"{wh_registry.host}/{repo}"
    image_id = await insert_image(pool, name=name, access_proven=True)
    assert await inbox.process_event(runtime, (await store_events(pool, [
        ev(wh.PUSH, name, tag="1.0", digest=idx.digest)]))[0]) == inbox.DONE
    [tag] = (await tags(pool, image_id)).values()
    assert (tag["name"], tag["manifest_digest"]) == ("1.0", idx.digest)
    assert tag["platform_digest"] == idx.manifests["linux/amd64"].digest
    assert tag["config_digest"] == idx.manifests["linux/amd64"].config_digest


async def test_push_moves_a_tag_and_every_registration_of_the_repository_follows(
    pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    name = f"registry.example.com/{unique('fx')}/app"
    alice, bob = await make_user(), await make_user()
    first = await insert_image(pool, name=name, owner_id=alice.account.id, access_proven=True)
    second = await insert_image(pool, name=name, owner_id=bob.account.id, access_proven=True)
    assert await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_A)) == ["done"]
    later = T0 + timedelta(hours=1)
    assert await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_B, at=later)) == ["done"]
    for image_id in (first, second):
        tag = (await tags(pool, image_id))["v1"]
        assert (tag["manifest_digest"], tag["pushed_at"], tag["build_date"]) == (DIGEST_B, later, later)
    # an older push delivered late does not move it back
    await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_A, at=T0 - timedelta(hours=1)))
    assert (await tags(pool, first))["v1"]["manifest_digest"] == DIGEST_B


async def test_duplicate_keys_have_one_effect(pool: asyncpg.Pool, wh_settings: Settings) -> None:
    name = f"registry.example.com/{unique('fx')}/app"
    image_id = await insert_image(pool, name=name, access_proven=True)
    key = unique("dup")
    assert await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_A, key=key)) == ["done"]
    await pool.execute("DELETE FROM tags WHERE image_id = $1", image_id)
    # the same event again: not stored, not applied
    assert await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_A, key=key)) == []
    assert await tags(pool, image_id) == {}


async def test_deletes_by_tag_by_digest_and_tombstones(pool: asyncpg.Pool, wh_settings: Settings) -> None:
    name = f"registry.example.com/{unique('fx')}/app"
    image_id = await insert_image(pool, name=name, access_proven=True)
    await apply(pool, wh_settings,
                ev(wh.PUSH, name, tag="a", digest=DIGEST_A), ev(wh.PUSH, name, tag="b", digest=DIGEST_A),
                ev(wh.PUSH, name, tag="c", digest=DIGEST_B))
    t1 = T0 + timedelta(minutes=1)
    await apply(pool, wh_settings, ev(wh.DELETE_MANIFEST, name, digest=DIGEST_A, at=t1))
    assert set(await tags(pool, image_id)) == {"c"}
    await apply(pool, wh_settings, ev(wh.DELETE_TAG, name, tag="c", at=t1))
    assert await tags(pool, image_id) == {}
    assert await image_state(pool, image_id) == ("Empty", None)
    # pushes older than the deletes, delivered late, stay deleted; a newer one comes back
    await apply(pool, wh_settings, ev(wh.PUSH, name, tag="a", digest=DIGEST_A),
                ev(wh.PUSH, name, tag="c", digest=DIGEST_B))
    assert await tags(pool, image_id) == {}
    await apply(pool, wh_settings, ev(wh.PUSH, name, tag="c", digest=DIGEST_B, at=t1 + timedelta(seconds=1)))
    assert set(await tags(pool, image_id)) == {"c"}


async def test_build_events_out_of_order_leave_the_newest_state(
    pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    name = f"registry.example.com/{unique('fx')}/app"
    owner = await make_user()  # builds are an account's: never the shared catalog's
    image_id = await insert_image(pool, name=name, tags=["stable"], owner_id=owner.account.id, access_proven=True)
    t = [T0 + timedelta(minutes=i) for i in range(4)]
    await apply(pool, wh_settings, ev(wh.BUILD_STATE, name, tag="v1", state="Building", at=t[1]))
    assert (await image_state(pool, image_id))[0] == "Building"
    await apply(pool, wh_settings, ev(wh.BUILD_STATE, name, tag="v1", state="Failed", at=t[3]))
    # delivered late: older than the failure
    await apply(pool, wh_settings,
                ev(wh.BUILD_STATE, name, tag="v1", state="Success", at=t[2]),
                ev(wh.BUILD_STATE, name, tag="v1", state="Building", at=t[0]))
    v1 = (await tags(pool, image_id))["v1"]
    assert (v1["state"], v1["state_at"]) == ("Failed", t[3])
    assert (await image_state(pool, image_id))[0] == "Failed"
    await apply(pool, wh_settings, ev(wh.BUILD_STATE, name, tag="v1", state="Success", at=t[3] + timedelta(1)))
    assert await image_state(pool, image_id) == ("Success", t[3] + timedelta(1))


async def test_events_of_unknown_images_are_kept_and_ignored(pool: asyncpg.Pool, wh_settings: Settings) -> None:
    name = f"registry.example.com/{unique('fx')}/nobody"
    [status] = await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_A))
    assert status == "ignored"
    row = await pool.fetchrow("SELECT status, note FROM webhook_events WHERE repository = $1",
                              parse_image_name(name).repository)
    assert row["status"] == "ignored" and "no image" in row["note"]


async def test_push_to_the_own_registry_creates_the_image_for_the_account(
    pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    user = await make_user()
    own = wh_settings.tutum_registry_host
    name = f"{own}/{user.account.username}/app"
    assert await apply(pool, wh_settings, ev(wh.PUSH, name, tag="v1", digest=DIGEST_A)) == ["done"]
    row = await pool.fetchrow(
        "SELECT i.id, i.owner_id, i.is_private_image, i.access_proven, r.is_tutum_registry FROM images AS i"
        " JOIN registries AS r ON r.id = i.registry_id WHERE i.name = $1", name)
    assert row["owner_id"] == user.account.id and row["is_private_image"] and row["is_tutum_registry"]
    assert row["access_proven"]  # the service runs that registry
    assert set(await tags(pool, row["id"])) == {"v1"}
    stranger = f"{own}/{unique('nouser')}/app"
    assert await apply(pool, wh_settings, ev(wh.PUSH, stranger, tag="v1", digest=DIGEST_A)) == ["ignored"]
    assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", stranger) == 0


async def test_pushes_without_digest_request_a_sync(pool: asyncpg.Pool, wh_settings: Settings) -> None:
    name = f"quay.io/{unique('fx')}/app"
    image_id = await insert_image(pool, name=name, next_sync_at=T0 + timedelta(days=3650), access_proven=True)
    assert await apply(pool, wh_settings, ev(wh.SYNC, name)) == ["done"]
    row = await pool.fetchrow("SELECT sync_requested_at, next_sync_at FROM images WHERE id = $1", image_id)
    assert row["sync_requested_at"] is not None
    assert row["next_sync_at"] < datetime.now(UTC) + timedelta(seconds=inbox.SYNC_FALLBACK_SECONDS + 1)


async def test_sweep_requeues_only_events_pending_too_long(pool: asyncpg.Pool) -> None:
    name = f"registry.example.com/{unique('fx')}/app"
    old, fresh = await store_events(pool, [ev(wh.PUSH, name, tag="a", digest=DIGEST_A),
                                           ev(wh.PUSH, name, tag="b", digest=DIGEST_A)])
    await pool.execute("UPDATE webhook_events SET queued_at = now() - interval '1 minute' WHERE id = $1", old)
    sent: list[tuple[str, list]] = []
    assert await sweep.sweep_events(pool, lambda task, args: sent.append((task, args))) >= 1
    assert ("process_webhook_event", [old]) in sent and ("process_webhook_event", [fresh]) not in sent
    # just re-queued: not again before the wait has passed
    sent.clear()
    await sweep.sweep_events(pool, lambda task, args: sent.append((task, args)))
    assert ("process_webhook_event", [old]) not in sent

    def broken(task: str, args: list) -> None:
        raise ConnectionError("redis is down")

    await pool.execute("UPDATE webhook_events SET queued_at = now() - interval '1 minute' WHERE id = $1", old)
    await sweep.sweep_events(pool, broken)  # logged; the event stays pending
    assert await pool.fetchval("SELECT status FROM webhook_events WHERE id = $1", old) == "pending"


async def test_a_push_or_build_of_a_tag_the_policy_excludes_is_ignored(
    pool: asyncpg.Pool, settings: Settings,
) -> None:
    name = f"registry.example.com/{unique('pol')}/app"
    kept = await insert_image(pool, name=name, access_proven=True)
    policy = {"include": ["v*"], "exclude": ["*-rc*"], "max_tags": None}
    await pool.execute("UPDATE images SET tag_policy = $2 WHERE id = $1", kept, policy)
    assert await apply(pool, settings,
                       ev(wh.PUSH, name, tag="v2-rc1", digest=DIGEST_A),
                       ev(wh.PUSH, name, tag="nightly", digest=DIGEST_A),
                       ev(wh.BUILD_STATE, name, tag="nightly", state="Building"),
                       ev(wh.PUSH, name, tag="v2", digest=DIGEST_B)) == ["ignored", "ignored", "ignored", "done"]
    assert list(await tags(pool, kept)) == ["v2"]
