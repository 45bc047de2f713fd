"""Applying stored webhook events (the inbox filled by api/webhooks.py), in batches.

Each `process_webhook_event` message applies the pending events in batches: in id order (up
to APPLY_BATCH, skipping those another task holds), in one transaction that locks the images
they are about (in id order, worker/locks.py), applies each event in id order and marks each
done or ignored. A burst of pushes is therefore a few transactions, not one per event (and
a few messages: the API sends one for the events of a burst, api/webhooks.py); a message
whose events another batch applied finds nothing to do. A crash leaves the events
pending (the sweep sends them again); a batch that fails is applied again one event at a
time, so one bad event fails alone (its attempts are counted; from then on it is applied
alone, by its own message).

Which images an event changes, and which it only makes look (a hint: a sync with their own
credentials), is its sender's scope: worker/event_scope.py.

Effects (SPEC §2, §3):
- push (tag + digest): the tag points at the digest, `Success`, build date = push time, at
  once. After the commit, worker/enrich.py confirms the digest with the registry (config,
  layer, exact build date; a digest the registry does not have is removed); the image's
  next sync is due within ENRICH_FALLBACK_SECONDS in case that fails.
- a tag named like a signature, attestation or SBOM (core/artifacts.py): ignored, noted.
- delete tag / manifest / repository: the tags go, unless pushed again after the delete.
  A processed delete is also a tombstone: an older push delivered late stays deleted.
- sync (Docker Hub, Quay: no digest): a top-priority sync of the image, after the commit.
- build: worker/builds.py.
- a hint (an account's event about others' images): a top-priority sync of those images,
  after the commit, and nothing else; the sync reads the tags from the registry. At most one
  hinted sync per image every WEBHOOK_HINT_INTERVAL_SECONDS: a later hint makes the image due
  when that interval ends, so however many events an account sends about a repository, the
  other images of it cost their registries at most one sync per interval.
The image's aggregate state follows from the trigger in schema.sql.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import structlog

from core import metrics
from core import webhooks as wh
from core.settings import Settings
from worker import builds, enrich, event_scope, history, sync
from worker.runtime import Runtime

log = structlog.get_logger("worker.inbox")

DONE, IGNORED, SKIPPED, FAILED = "done", "ignored", "skipped", "failed"
APPLY_BATCH = 500  # events per transaction
ENRICH_FALLBACK_SECONDS = 60.0  # the image's next sync, at the latest, after a push event
SYNC_FALLBACK_SECONDS = 30.0  # a requested sync the scheduler runs if no worker did


@dataclass
class Batch:
    applied: list[Applied] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)  # failed alone; recorded on the event
    to_sync: set[int] = field(default_factory=set)  # images to sync after the commit

    def add(self, other: Batch) -> None:
        self.applied += other.applied
        self.failed |= other.failed
        self.to_sync |= other.to_sync


@dataclass(frozen=True)
class Applied:
    event_id: int
    status: str  # DONE or IGNORED
    kind: str
    image_ids: tuple[int, ...] = ()
    tag: str | None = None
    digest: str | None = None
    note: str | None = None


# An event still pending that failed before (attempts > 0) is applied alone, by its own
# message: it never takes a batch down with it again. Any other message drains the pending
# events, also when its own event was applied already by an earlier batch (the API sends one
# message for the events stored while another was on its way: they rely on it).
CLAIM_BATCH_SQL = """
SELECT * FROM webhook_events
 WHERE status = 'pending'
   AND (id = $1 OR (attempts = 0
                    AND COALESCE((SELECT attempts FROM webhook_events
                                   WHERE id = $1 AND status = 'pending'), 0) = 0))
 ORDER BY id LIMIT $2
   FOR UPDATE SKIP LOCKED
"""
CLAIM_ONE_SQL = "SELECT * FROM webhook_events WHERE id = $1 AND status = 'pending' FOR UPDATE SKIP LOCKED"

FINISH_SQL = """
UPDATE webhook_events AS e
   SET status = f.status, note = f.note, processed_at = now(), attempts = e.attempts + 1
  FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f (id, status, note)
 WHERE e.id = f.id
"""

# `moves`: the push changes the digest and is not older than the push that set the current one.
_MOVES = "(t.manifest_digest IS DISTINCT FROM EXCLUDED.manifest_digest AND (t.pushed_at IS NULL OR t.pushed_at <= EXCLUDED.pushed_at))"  # noqa: E501
# `first`: same digest, but its push time was not known yet (a sync saw the tag first).
_FIRST = "(t.manifest_digest = EXCLUDED.manifest_digest AND t.pushed_at IS NULL)"
_NEWER = "(t.state_at IS NULL OR t.state_at <= EXCLUDED.state_at)"
# No row at all when a processed delete (or one applied earlier in this batch, $7) is newer:
# the push is history. Only deletes that spoke for the image count (worker/event_scope.py):
# an operator's, or its own account's.
PUSH_TAG_SQL = f"""
INSERT INTO tags AS t (image_id, name, state, manifest_digest, build_date, pushed_at, state_at)
SELECT im.id, $2, 'Success', $3, $4, $4, $4 FROM images AS im
 WHERE im.id = ANY ($1::bigint[]) AND NOT EXISTS (
    SELECT 1 FROM webhook_events AS d
     WHERE d.repository = $5 AND d.host = $6 AND d.occurred_at > $4
       AND d.kind IN ('delete_tag', 'delete_manifest', 'delete_repository')
       AND (d.status = 'done' OR d.id = ANY ($7::bigint[]))
       AND (d.account_id IS NULL OR d.account_id = im.owner_id)
       AND (d.kind = 'delete_repository' OR (d.kind = 'delete_manifest' AND d.digest = $3)
            OR (d.kind = 'delete_tag' AND d.tag = $2)))
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET manifest_digest = CASE WHEN {_MOVES} THEN EXCLUDED.manifest_digest ELSE t.manifest_digest END,
       platform_digest = CASE WHEN {_MOVES} THEN NULL ELSE t.platform_digest END,
       config_digest = CASE WHEN {_MOVES} THEN NULL ELSE t.config_digest END,
       sync_note = CASE WHEN {_MOVES} THEN NULL ELSE t.sync_note END,
       sync_error = CASE WHEN {_MOVES} THEN NULL ELSE t.sync_error END,
       build_date = CASE WHEN {_MOVES} THEN EXCLUDED.build_date
                         WHEN {_FIRST} THEN GREATEST(t.build_date, EXCLUDED.pushed_at)
                         ELSE t.build_date END,
       pushed_at = CASE WHEN {_MOVES} OR {_FIRST} THEN EXCLUDED.pushed_at ELSE t.pushed_at END,
       state = CASE WHEN {_NEWER} THEN 'Success' ELSE t.state END,
       state_at = CASE WHEN {_NEWER} THEN EXCLUDED.state_at ELSE t.state_at END,
       updated_at = now()
RETURNING t.image_id
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
# Hinted images ($2: WEBHOOK_HINT_INTERVAL_SECONDS): synced at once unless one synced within
# the interval; then due when it ends, without `sync_requested_at` (which would make a sync
# running now go again at once: hints sent without pause would keep the image syncing).
HINT_SQL = """
WITH hinted AS (
    SELECT id, COALESCE(last_synced_at, '-infinity') <= now() - make_interval(secs => $2) AS at_once
      FROM images WHERE id = ANY ($1::bigint[])
)
UPDATE images AS i
   SET sync_requested_at = CASE WHEN h.at_once THEN now() ELSE i.sync_requested_at END,
       next_sync_at = LEAST(i.next_sync_at,
                            CASE WHEN h.at_once THEN now() + make_interval(secs => $3)
                                 ELSE i.last_synced_at + make_interval(secs => $2) END)
  FROM hinted AS h WHERE i.id = h.id
RETURNING i.id, h.at_once
"""


async def apply_pending(pool: asyncpg.Pool, settings: Settings, event_id: int) -> Batch:
    """Apply a batch of pending events (see the module's docstring) and mark each done or
    ignored. Nothing applied: nothing was pending (a duplicate message), or another task
    holds the events. A batch that fails is applied one event at a time; an event that fails
    alone has its failure recorded and is in `failed`. Raises when Postgres is unreachable
    (or fails before any event was claimed)."""
    claimed: list[int] = []
    try:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM_BATCH_SQL, event_id, APPLY_BATCH)
            claimed = [r["id"] for r in rows]
            return await _apply(conn, settings, rows)
    except (OSError, asyncpg.InterfaceError):
        raise
    except Exception as exc:
        if not claimed:
            raise
        if len(claimed) == 1:
            log.exception("webhook.apply_failed", event_id=claimed[0])
            await record_failure(pool, claimed[0], f"{type(exc).__name__}: {exc}")
            return Batch(failed=set(claimed))
        log.warning("webhook.batch_failed", events=len(claimed), exc_info=True)
    batch = Batch()
    for one in claimed:
        try:
            async with pool.acquire() as conn, conn.transaction():
                batch.add(await _apply(conn, settings, await conn.fetch(CLAIM_ONE_SQL, one)))
        except (OSError, asyncpg.InterfaceError):
            raise
        except Exception as exc:
            log.exception("webhook.apply_failed", event_id=one)
            await record_failure(pool, one, f"{type(exc).__name__}: {exc}")
            batch.failed.add(one)
    return batch


async def _apply(conn: asyncpg.Connection, settings: Settings, events: list[asyncpg.Record]) -> Batch:
    if not events:
        return Batch()
    await history.mark_observed(conn, history.WEBHOOK)
    scope = await event_scope.Scope.lock(conn, settings, events)
    to_sync = set(scope.to_sync)
    hinted: set[int] = set()
    out: list[Applied] = []
    applied_deletes: list[int] = []
    pushed: set[int] = set()
    for ev in events:
        kind, reach = ev["kind"], scope.reach(ev)
        hinted.update(reach.hints)
        ids, note = reach.facts, reach.note
        if not ids:
            out.append(Applied(ev["id"], DONE if reach.applied else IGNORED, kind, note=note))
            continue
        if kind == wh.PUSH:
            written = await conn.fetch(
                PUSH_TAG_SQL, ids, ev["tag"], ev["digest"], ev["occurred_at"], ev["repository"], ev["host"],
                applied_deletes,
            )
            note = None if written else "superseded by a later delete"
            pushed.update(r["image_id"] for r in written)
        elif kind == wh.DELETE_TAG:
            await conn.execute(DELETE_TAG_SQL, ids, ev["tag"], ev["occurred_at"])
        elif kind == wh.DELETE_MANIFEST:
            await conn.execute(DELETE_MANIFEST_SQL, ids, ev["digest"], ev["occurred_at"])
        elif kind == wh.DELETE_REPOSITORY:
            await conn.execute(DELETE_REPOSITORY_SQL, ids, ev["occurred_at"])
        elif kind == wh.SYNC:
            await conn.execute(REQUEST_SYNC_SQL, ids, SYNC_FALLBACK_SECONDS)
            to_sync.update(ids)
        elif kind == wh.BUILD_STATE:
            note = await builds.apply_build_event(conn, ev, ids, max_tags=settings.max_tags_per_image)
        if kind in (wh.DELETE_TAG, wh.DELETE_MANIFEST, wh.DELETE_REPOSITORY):
            applied_deletes.append(ev["id"])
        out.append(Applied(ev["id"], DONE, kind, tuple(ids), ev["tag"], ev["digest"], note))
    if hinted:
        rows = await conn.fetch(HINT_SQL, sorted(hinted), settings.webhook_hint_interval_seconds,
                                SYNC_FALLBACK_SECONDS)
        to_sync |= {r["id"] for r in rows if r["at_once"]}
    if pushed:
        await conn.execute(DUE_SOON_SQL, sorted(pushed), ENRICH_FALLBACK_SECONDS)
    await conn.execute(FINISH_SQL, [a.event_id for a in out], [a.status for a in out], [a.note for a in out])
    return Batch(out, to_sync=to_sync)


async def process_event(rt: Runtime, event_id: int) -> str:
    """The task body: apply the pending events in batches (this one among them if it is
    still pending; the API sends one message for the events stored while the previous one
    was on its way), then, after the commits, enrich the pushes and run the requested
    syncs. Returns this event's outcome: DONE, IGNORED, SKIPPED (applied already, or held by
    another task) or FAILED (recorded on the event; the sweep retries it)."""
    started = time.perf_counter()
    try:
        batch = last = await apply_pending(rt.pool, rt.settings, event_id)
        while len(last.applied) >= APPLY_BATCH:  # a backlog: one message drains it
            last = await apply_pending(rt.pool, rt.settings, event_id)
            batch.add(last)
    except Exception as exc:  # recorded on the event, retried by the sweep
        log.exception("webhook.apply_failed", event_id=event_id)
        await record_failure(rt.pool, event_id, f"{type(exc).__name__}: {exc}")
        return FAILED
    for a in batch.applied:
        metrics.webhook_event("worker", a.status)
    if batch.applied:
        log.info("webhook.applied", event_id=event_id, events=len(batch.applied),
                 ignored=sum(a.status == IGNORED for a in batch.applied),
                 ms=round((time.perf_counter() - started) * 1000, 2))
    pushes = [
        enrich.Pushed(a.image_ids, a.tag, a.digest) for a in batch.applied
        if a.kind == wh.PUSH and a.status == DONE and a.note is None and a.tag and a.digest
    ]
    # After the commit: a failure here leaves the events done and the images due for a sync.
    # While more events wait (a burst), the pushes' enrichment waits too (enrich.Deferred).
    newest = max((a.event_id for a in batch.applied), default=event_id)
    busy = bool(pushes) and bool(await rt.pool.fetchval(MORE_PENDING_SQL, newest))
    followups = await asyncio.gather(
        enrich.enrich_or_defer(rt, pushes, inbox_busy=busy), *(sync.sync_image(rt, i) for i in sorted(batch.to_sync)),
        return_exceptions=True,
    )
    for outcome in followups:
        if isinstance(outcome, Exception):
            log.error("webhook.followup_failed", event_id=event_id, exc_info=outcome)
    if event_id in batch.failed:
        return FAILED
    return next((a.status for a in batch.applied if a.event_id == event_id), SKIPPED)


# A burst is on: events that arrived after the batch, within the last second, still wait (an
# old event stuck pending, failing again and again, does not count).
MORE_PENDING_SQL = """
SELECT EXISTS (SELECT 1 FROM webhook_events
                WHERE status = 'pending' AND queued_at > now() - interval '1 second' AND id > $1)
"""

RECORD_FAILURE_SQL = """
UPDATE webhook_events SET attempts = attempts + 1, note = $2 WHERE id = $1 AND status = 'pending'
"""


async def record_failure(pool: asyncpg.Pool, event_id: int, message: str) -> None:
    """Count a failed attempt on a pending event; never raises (Postgres may be down too:
    then the event stays pending as it was, and the sweep finds it)."""
    try:
        await pool.execute(RECORD_FAILURE_SQL, event_id, message[:1000])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pass
