"""The enrichment confirms what a push event claims: a digest the registry never had is
removed within seconds; tags that name metadata are never listed."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from core import webhooks as wh
from core.settings import Settings
from tests.conftest import insert_image, unique
from tests.support.registry import RegistryServer, apush_image
from tests.webhooks.conftest import Sender
from worker import enrich, inbox
from worker.runtime import Runtime

NEVER_PUSHED = "sha256:" + "e" * 64


def push_event(host: str, repository: str, tag: str, digest: str, at: datetime | None = None) -> dict[str, Any]:
    """A CNCF notification envelope with one manifest push, as the registry sends it."""
    return {"events": [{
        "id": str(uuid.uuid4()), "timestamp": (at or datetime.now(UTC)).isoformat(), "action": "push",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 500,
                   "digest": digest, "repository": repository, "tag": tag,
                   "url": f"http://{host}/v2/{repository}/manifests/{digest}"},
        "request": {"id": str(uuid.uuid4()), "host": host, "method": "PUT"},
    }]}


async def receive(sender: Sender, client: TestClient, pool: asyncpg.Pool, body: dict[str, Any]) -> int:
    resp = await sender.post(client, wh.REGISTRY, body)
    assert resp.status == 202, await resp.text()
    return int(await pool.fetchval("SELECT max(id) FROM webhook_events WHERE dedupe_key LIKE '%' || $1",
                                   f"registry:{body['events'][0]['id']}"))


async def tags(pool: asyncpg.Pool, image_id: int) -> dict[str, str | None]:
    rows = await pool.fetch("SELECT name, manifest_digest FROM tags WHERE image_id = $1", image_id)
    return {r["name"]: r["manifest_digest"] for r in rows}


async def test_a_pushed_digest_the_registry_never_had_is_removed_within_seconds(
    wh_client: TestClient, pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer, sender: Sender,
) -> None:
    repo = f"{unique('ghost')}/app"
    real = await apush_image(wh_registry.url, repo, "real", {"created": "2024-01-01T00:00:00Z"})
    image_id = await insert_image(pool, name=f"{wh_registry.host}/{repo}", owner_id=sender.user.account.id,
                                  access_proven=True)
    await receive(sender, wh_client, pool, push_event(wh_registry.host, repo, "real", real.digest))
    ghost_event = await receive(sender, wh_client, pool, push_event(wh_registry.host, repo, "ghost", NEVER_PUSHED))
    started = time.monotonic()
    batch = await inbox.apply_pending(pool, runtime.settings, ghost_event)
    assert await tags(pool, image_id) == {"real": real.digest, "ghost": NEVER_PUSHED}  # visible at once
    pushes = [enrich.Pushed(a.image_ids, a.tag, a.digest) for a in batch.applied if a.digest]
    assert await enrich.enrich_pushes(runtime, pushes) == enrich.Enriched(completed=1, ghosts=1)
    assert time.monotonic() - started < 5
    assert await tags(pool, image_id) == {"real": real.digest}
    state = await pool.fetchrow("SELECT state FROM images WHERE id = $1", image_id)
    assert state["state"] == "Success"


async def test_the_whole_task_confirms_and_a_tag_that_moved_on_stays(
    wh_client: TestClient, pool: asyncpg.Pool, runtime: Runtime, wh_registry: RegistryServer, sender: Sender,
) -> None:
    repo = f"{unique('ghost')}/app"
    image_id = await insert_image(pool, name=f"{wh_registry.host}/{repo}", owner_id=sender.user.account.id,
                                  access_proven=True)
    event = await receive(sender, wh_client, pool, push_event(wh_registry.host, repo, "v1", NEVER_PUSHED))
    assert await inbox.process_event(runtime, event) == inbox.DONE
    assert await tags(pool, image_id) == {}
    # a ghost push, then the real one (newer) before the ghost's enrichment ran
    t0 = datetime.now(UTC)
    real = await apush_image(wh_registry.url, repo, "v2", {"created": "2024-01-01T00:00:00Z"})
    await receive(sender, wh_client, pool, push_event(wh_registry.host, repo, "v2", NEVER_PUSHED, t0))
    await inbox.apply_pending(pool, runtime.settings, 0)
    later = push_event(wh_registry.host, repo, "v2", real.digest, t0 + timedelta(seconds=1))
    await receive(sender, wh_client, pool, later)
    await inbox.apply_pending(pool, runtime.settings, 0)
    done = await enrich.enrich_pushes(runtime, [enrich.Pushed((image_id,), "v2", NEVER_PUSHED)])
    assert done == enrich.Enriched()  # the tag no longer points at the ghost: nothing to confirm
    assert await tags(pool, image_id) == {"v2": real.digest}


async def test_a_pushed_signature_tag_is_recorded_and_ignored(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, wh_registry: RegistryServer, sender: Sender,
) -> None:
    repo = f"{unique('sig')}/app"
    image_id = await insert_image(pool, name=f"{wh_registry.host}/{repo}", owner_id=sender.user.account.id,
                                  access_proven=True)
    signed = "sha256-" + "f" * 64
    for name in (f"{signed}.sig", f"{signed}.att", signed):
        event = await receive(sender, wh_client, pool, push_event(wh_registry.host, repo, name, NEVER_PUSHED))
        batch = await inbox.apply_pending(pool, wh_settings, event)
        [applied] = [a for a in batch.applied if a.event_id == event]
        assert applied.status == inbox.IGNORED and "signature" in (applied.note or "")
    assert await tags(pool, image_id) == {}
    row = await pool.fetchrow("SELECT state, last_build_date FROM images WHERE id = $1", image_id)
    assert (row["state"], row["last_build_date"]) == ("Empty", None)
