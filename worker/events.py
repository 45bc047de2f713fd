"""Applying stored webhook events (the inbox filled by api/webhooks.py), and the sweep that
re-queues events nobody processed in time.

An event is applied in one transaction that also marks it done, so a crash anywhere leaves
it pending (the sweep sends it again) and a second delivery of its message finds it done.
Events of one image are applied one at a time (the image rows are locked first), which
keeps "newest wins" exact when a sender delivers out of order.

Matching rule: an event names (registry host, repository); it applies to every image whose
registry has that host and whose repository is that path, whoever registered it. A push to
an unknown repository on the service's own registry (TUTUM_REGISTRY_HOST) creates the image
for the account named by the repository's first path component.

Effects (SPEC §2, §3):
- push (tag + digest): the tag points at the digest, `Success`, build date = push time, at
  once; then an enrichment resolves that digest (config, layer, exact build date). It runs
  after the commit, so it never delays visibility; if it fails, the tag keeps its digest
  without a config and the image's next sync (due within ENRICH_FALLBACK_SECONDS) resolves it.
- delete tag / manifest / repository: the tags go, unless pushed again after the delete.
  A processed delete is also a tombstone: an older push delivered late does not bring it back.
- sync (Docker Hub, Quay: no digest): a top-priority sync of the image.
- build: the tag's state, only if the event is newer than the state it replaces.
The image's aggregate state follows from the trigger in schema.sql.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog

from core import webhooks as wh
from core.names import InvalidNameError, parse_image_name
from core.queue import PROCESS_EVENT_TASK
from core.registries import ensure_registry
from core.settings import Settings
from worker import layers, sync
from worker.registry import RegistryError, Target
from worker.runtime import Runtime

log = structlog.get_logger("worker.events")

DONE, IGNORED, SKIPPED, FAILED = "done", "ignored", "skipped", "failed"
ENRICH_FALLBACK_SECONDS = 60.0  # the image's next sync, at the latest, after a push event
SYNC_FALLBACK_SECONDS = 30.0  # a requested sync the scheduler runs if no worker did
# The sweep: an event still pending this long after it was queued is queued again; the wait
# doubles with each failed attempt up to SWEEP_MAX_WAIT; after MAX_ATTEMPTS it is `failed`.
SWEEP_AFTER_SECONDS = 5.0
SWEEP_MAX_WAIT_SECONDS = 300.0
SWEEP_INTERVAL_SECONDS = 1.0
SWEEP_BATCH = 500
MAX_ATTEMPTS = 20
RETENTION_DAYS = 7  # processed events are kept this long (dedupe window, tombstones)


@dataclass(frozen=True)
class Applied:
    status: str  # DONE, IGNORED, SKIPPED (not pending, or being applied elsewhere)
    kind: str | None = None
    image_ids: list[int] = field(default_factory=list)
    tag: str | None = None
    digest: str | None = None
    note: str | None = None


CLAIM_SQL = "SELECT * FROM webhook_events WHERE id = $1 AND status = 'pending' FOR UPDATE SKIP LOCKED"

MATCH_IMAGES_SQL = """
SELECT i.id FROM images AS i JOIN registries AS r ON r.id = i.registry_id
 WHERE r.host = $1 AND i.repository = $2
 ORDER BY i.id
   FOR UPDATE OF i
"""

FINISH_SQL = """
UPDATE webhook_events SET status = $2, note = $3, processed_at = now(), attempts = attempts + 1
 WHERE id = $1
"""

ACCOUNT_SQL = "SELECT id FROM accounts WHERE username = $1"
CREATE_IMAGE_SQL = """
INSERT INTO images (name, owner_id, registry_id, repository, is_private_image, next_sync_at)
VALUES ($1, $2, $3, $4, true, now())
ON CONFLICT ON CONSTRAINT images_owner_name_key DO NOTHING
"""

# A processed delete newer than the push: the push is history.
SUPERSEDED_SQL = """
SELECT EXISTS (
    SELECT 1 FROM webhook_events
     WHERE repository = $1 AND host = $2 AND occurred_at > $3 AND status = 'done'
       AND kind IN ('delete_tag', 'delete_manifest', 'delete_repository')
       AND (kind = 'delete_repository' OR (kind = 'delete_manifest' AND digest = $4)
            OR (kind = 'delete_tag' AND tag = $5))
)
"""

# `moves`: the push changes the digest and is not older than the push that set the current one.
_MOVES = "(t.manifest_digest IS DISTINCT FROM EXCLUDED.manifest_digest AND (t.pushed_at IS NULL OR t.pushed_at <= EXCLUDED.pushed_at))"  # noqa: E501
# `first`: same digest, but its push time was not known yet (a sync saw the tag first).
_FIRST = "(t.manifest_digest = EXCLUDED.manifest_digest AND t.pushed_at IS NULL)"
_NEWER = "(t.state_at IS NULL OR t.state_at <= EXCLUDED.state_at)"
PUSH_TAG_SQL = f"""
INSERT INTO tags AS t (image_id, name, state, manifest_digest, build_date, pushed_at, state_at)
SELECT i, $2, 'Success', $3, $4, $4, $4 FROM unnest($1::bigint[]) AS i
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET manifest_digest = CASE WHEN {_MOVES} THEN EXCLUDED.manifest_digest ELSE t.manifest_digest END,
       platform_digest = CASE WHEN {_MOVES} THEN NULL ELSE t.platform_digest END,
       config_digest = CASE WHEN {_MOVES} THEN NULL ELSE t.config_digest END,
       sync_note = CASE WHEN {_MOVES} THEN NULL ELSE t.sync_note END,
       build_date = CASE WHEN {_MOVES} THEN EXCLUDED.build_date
                         WHEN {_FIRST} THEN GREATEST(t.build_date, EXCLUDED.pushed_at)
                         ELSE t.build_date END,
       pushed_at = CASE WHEN {_MOVES} OR {_FIRST} THEN EXCLUDED.pushed_at ELSE t.pushed_at END,
       state = CASE WHEN {_NEWER} THEN 'Success' ELSE t.state END,
       state_at = CASE WHEN {_NEWER} THEN EXCLUDED.state_at ELSE t.state_at END,
       updated_at = now()
"""

# The safety net of the enrichment: the image's next sync is due soon.
DUE_SOON_SQL = """
UPDATE images SET next_sync_at = LEAST(next_sync_at, now() + make_interval(secs => $2))
 WHERE id = ANY ($1::bigint[])
"""
REQUEST_SYNC_SQL = """
UPDATE images SET sync_requested_at = now(),
                  next_sync_at = LEAST(next_sync_at, now() + make_interval(secs => $2))
 WHERE id = ANY ($1::bigint[])
"""

# Tags pushed again after the delete (by a later event) stay.
DELETE_TAG_SQL = """
DELETE FROM tags WHERE image_id = ANY ($1::bigint[]) AND name = $2
   AND (pushed_at IS NULL OR pushed_at <= $3)
"""
DELETE_MANIFEST_SQL = """
DELETE FROM tags WHERE image_id = ANY ($1::bigint[]) AND manifest_digest = $2
   AND (pushed_at IS NULL OR pushed_at <= $3)
"""
DELETE_REPOSITORY_SQL = """
DELETE FROM tags WHERE image_id = ANY ($1::bigint[]) AND (pushed_at IS NULL OR pushed_at <= $2)
"""

# Newer wins; on a tie a finished build (Success/Failed) beats Building.
BUILD_STATE_SQL = """
INSERT INTO tags AS t (image_id, name, state, state_at, build_date)
SELECT i, $2, $3, $4, CASE WHEN $3 = 'Success' THEN $4::timestamptz END FROM unnest($1::bigint[]) AS i
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET state = EXCLUDED.state, state_at = EXCLUDED.state_at,
       build_date = CASE WHEN EXCLUDED.state = 'Success'
                         THEN GREATEST(t.build_date, EXCLUDED.state_at) ELSE t.build_date END,
       updated_at = now()
 WHERE t.state_at IS NULL OR t.state_at < EXCLUDED.state_at
    OR (t.state_at = EXCLUDED.state_at AND t.state = 'Building' AND EXCLUDED.state <> 'Building')
"""


async def apply_event(pool: asyncpg.Pool, settings: Settings, event_id: int) -> Applied:
    """Apply one pending event and mark it done or ignored, in one transaction.

    Returns SKIPPED without change when the event is not pending (already applied: a
    duplicate message) or is being applied by another worker right now."""
    async with pool.acquire() as conn, conn.transaction():
        ev = await conn.fetchrow(CLAIM_SQL, event_id)
        if ev is None:
            return Applied(SKIPPED)
        image_ids = [r["id"] for r in await conn.fetch(MATCH_IMAGES_SQL, ev["host"], ev["repository"])]
        note: str | None = None
        if not image_ids:
            image_ids, note = await _create_on_own_registry(conn, settings, ev)
        if not image_ids:
            note = note or f"no image is registered for {ev['host']}/{ev['repository']}"
            await conn.execute(FINISH_SQL, event_id, IGNORED, note)
            log.info("webhook.ignored", event_id=event_id, reason=note)
            return Applied(IGNORED, ev["kind"], note=note)
        kind = ev["kind"]
        if kind == wh.PUSH:
            note = await _push(conn, ev, image_ids)
        elif kind == wh.DELETE_TAG:
            await conn.execute(DELETE_TAG_SQL, image_ids, ev["tag"], ev["occurred_at"])
        elif kind == wh.DELETE_MANIFEST:
            await conn.execute(DELETE_MANIFEST_SQL, image_ids, ev["digest"], ev["occurred_at"])
        elif kind == wh.DELETE_REPOSITORY:
            await conn.execute(DELETE_REPOSITORY_SQL, image_ids, ev["occurred_at"])
        elif kind == wh.SYNC:
            await conn.execute(REQUEST_SYNC_SQL, image_ids, SYNC_FALLBACK_SECONDS)
        elif kind == wh.BUILD_STATE:
            await conn.execute(BUILD_STATE_SQL, image_ids, ev["tag"], ev["build_state"], ev["occurred_at"])
        await conn.execute(FINISH_SQL, event_id, DONE, note)
    return Applied(DONE, kind, image_ids, ev["tag"], ev["digest"], note)


async def _push(conn: asyncpg.Connection, ev: asyncpg.Record, image_ids: list[int]) -> str | None:
    superseded = await conn.fetchval(
        SUPERSEDED_SQL, ev["repository"], ev["host"], ev["occurred_at"], ev["digest"], ev["tag"]
    )
    if superseded:
        return "superseded by a later delete"
    await conn.execute(PUSH_TAG_SQL, image_ids, ev["tag"], ev["digest"], ev["occurred_at"])
    await conn.execute(DUE_SOON_SQL, image_ids, ENRICH_FALLBACK_SECONDS)
    return None


async def _create_on_own_registry(
    conn: asyncpg.Connection, settings: Settings, ev: asyncpg.Record
) -> tuple[list[int], str | None]:
    """A push or build on the service's own registry creates the image (SPEC §1)."""
    own = settings.tutum_registry_host.strip().lower()
    if not own or ev["host"] != own or ev["kind"] not in (wh.PUSH, wh.SYNC, wh.BUILD_STATE):
        return [], None
    owner = ev["repository"].split("/", 1)[0]
    account_id = await conn.fetchval(ACCOUNT_SQL, owner)
    if account_id is None:
        note = f"repository {ev['repository']} on the service's registry: no account named {owner!r}"
        log.warning("webhook.unknown_account", repository=ev["repository"], account=owner)
        return [], note
    try:
        name = parse_image_name(f"{ev['host']}/{ev['repository']}")
    except InvalidNameError as exc:
        return [], f"not a valid image name: {exc}"
    registry_id = await ensure_registry(conn, name.host, settings)
    await conn.execute(CREATE_IMAGE_SQL, name.name, account_id, registry_id, name.repository)
    ids = [r["id"] for r in await conn.fetch(MATCH_IMAGES_SQL, ev["host"], ev["repository"])]
    log.info("webhook.image_created", image=name.name, account=owner)
    return ids, None


# ------------------------------------------------------------------ after the commit


ENRICH_TARGETS_SQL = """
SELECT i.id, r.host, i.registry_id, i.repository, i.credentials
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id
 WHERE i.id = ANY ($1::bigint[])
   AND EXISTS (SELECT 1 FROM tags AS t WHERE t.image_id = i.id AND t.name = $2
                  AND t.manifest_digest = $3 AND t.config_digest IS NULL)
"""

ENRICH_TAG_SQL = """
UPDATE tags
   SET platform_digest = $4, config_digest = $5, sync_note = $6,
       build_date = GREATEST((SELECT created FROM layers WHERE config_digest = $5), pushed_at),
       updated_at = now()
 WHERE image_id = ANY ($1::bigint[]) AND name = $2 AND manifest_digest = $3
"""


async def enrich_push(rt: Runtime, image_ids: Sequence[int], tag: str, digest: str) -> int:
    """Resolve a pushed digest (manifest → platform → config) and complete the tag's layer and
    build date on every image that still has the tag at that digest. Returns how many tags
    were completed; registry errors are logged and leave the tag to the next sync."""
    rows = await rt.pool.fetch(ENRICH_TARGETS_SQL, list(image_ids), tag, digest)
    groups: dict[tuple[str, int, str, bytes | None], list[int]] = {}
    for r in rows:
        groups.setdefault((r["host"], r["registry_id"], r["repository"], r["credentials"]), []).append(r["id"])
    done = 0
    for (host, registry_id, repository, sealed), ids in groups.items():
        try:
            creds = rt.box.open(sealed) if sealed else None
            target = Target(host=rt.network_host(host), repository=repository, credentials=creds)
            res = await rt.client.resolve_tag(target, digest)
        except (RegistryError, ValueError) as exc:
            log.warning("webhook.enrich_failed", tag=tag, digest=digest, error=f"{type(exc).__name__}: {exc}")
            continue
        # config_digest is set only when this repository served or confirmed the config blob
        config = res.config_digest
        async with rt.pool.acquire() as conn, conn.transaction():
            new = [layers.layer_write(config, res.layer)] if config and res.layer is not None else []
            await layers.record(conn, registry_id, repository, new, [config] if config else [])
            status = await conn.execute(ENRICH_TAG_SQL, ids, tag, digest, res.platform_digest, config, res.note)
        done += int(status.split()[-1])
    return done


async def process_event(rt: Runtime, event_id: int) -> str:
    """The task body: apply the event, then its follow-up (enrichment or sync). Returns
    DONE, IGNORED, SKIPPED or FAILED (recorded on the event; the sweep retries it)."""
    started = time.perf_counter()
    try:
        applied = await apply_event(rt.pool, rt.settings, event_id)
    except Exception as exc:  # recorded on the event, retried by the sweep
        message = f"{type(exc).__name__}: {exc}"
        log.exception("webhook.apply_failed", event_id=event_id)
        await _record_failure(rt.pool, event_id, message)
        return FAILED
    if applied.status != DONE:
        return applied.status
    log.info("webhook.applied", event_id=event_id, kind=applied.kind, images=len(applied.image_ids),
             tag=applied.tag, ms=round((time.perf_counter() - started) * 1000, 2), note=applied.note)
    if applied.kind == wh.PUSH and applied.note is None and applied.tag and applied.digest:
        await enrich_push(rt, applied.image_ids, applied.tag, applied.digest)
    elif applied.kind == wh.SYNC:
        await asyncio.gather(*(sync.sync_image(rt, i) for i in applied.image_ids))
    return DONE


RECORD_FAILURE_SQL = """
UPDATE webhook_events SET attempts = attempts + 1, note = $2 WHERE id = $1 AND status = 'pending'
"""


async def _record_failure(pool: asyncpg.Pool, event_id: int, message: str) -> None:
    try:
        await pool.execute(RECORD_FAILURE_SQL, event_id, message[:1000])
    except (OSError, asyncpg.PostgresError):
        pass  # Postgres is down too: the event is pending, the sweep will find it


# ------------------------------------------------------------------ the sweep

SWEEP_SQL = """
WITH due AS (
    SELECT id FROM webhook_events
     WHERE status = 'pending'
       AND queued_at < now() - make_interval(secs => LEAST($2::float8, $1::float8 * power(2, LEAST(attempts, 16))))
     ORDER BY id
     LIMIT $3
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events AS e SET queued_at = now() FROM due WHERE e.id = due.id
RETURNING e.id
"""
GIVE_UP_SQL = """
UPDATE webhook_events SET status = 'failed', processed_at = now()
 WHERE status = 'pending' AND attempts >= $1
"""
PURGE_SQL = """
DELETE FROM webhook_events WHERE id IN (
    SELECT id FROM webhook_events
     WHERE status IN ('done', 'ignored') AND processed_at < now() - make_interval(days => $1)
     LIMIT 1000)
"""

Send = Callable[[str, list], None]


async def sweep_events(
    pool: asyncpg.Pool, send: Send, *, after: float = SWEEP_AFTER_SECONDS,
    max_wait: float = SWEEP_MAX_WAIT_SECONDS, limit: int = SWEEP_BATCH,
) -> int:
    """Queue again the events still pending `after` s (doubling per failed attempt) after
    they were last queued. Returns how many were sent; stops at the first send that fails
    (those rows are due again after `after` s)."""
    await pool.execute(GIVE_UP_SQL, MAX_ATTEMPTS)
    await pool.execute(PURGE_SQL, RETENTION_DAYS)
    ids = [r["id"] for r in await pool.fetch(SWEEP_SQL, after, max_wait, limit)]
    if not ids:
        return 0
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        for event_id in ids:
            await loop.run_in_executor(None, send, PROCESS_EVENT_TASK, [event_id])
            sent += 1
    except Exception as exc:  # broker down: Postgres keeps them pending
        log.warning("webhook.sweep_queue_failed", error=type(exc).__name__, pending=len(ids) - sent)
    if sent:
        log.info("webhook.sweep_queued", events=sent)
    return sent


class EventSweeper:
    """Called on every scheduler tick; sweeps at most every `interval` seconds."""

    def __init__(self, interval: float = SWEEP_INTERVAL_SECONDS, after: float = SWEEP_AFTER_SECONDS) -> None:
        self.interval = interval
        self.after = after
        self._next = 0.0

    async def __call__(self, pool: asyncpg.Pool, send: Send) -> int:
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.interval
        try:
            return await sweep_events(pool, send, after=self.after)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("webhook.sweep_failed", error=str(exc))
            return 0

