"""Build states: the one writer of a tag's build state, for build events (Quay's and the
generic build webhook, worker/inbox.py) and for builds read from a build API (Quay's,
worker/quay_builds.py), and the end of builds that never finish.

Rules (SPEC §2), per tag:
- Events of one build (same build id) only move forward: queued/started (`Building`) →
  success / failed / cancelled. A late `started`, or a second terminal event, changes nothing.
- Of two builds, the one whose id the database first saw later wins, whatever the order
  its events arrive in. `builds.first_seen_at` is that order, written by both paths: the
  receipt time of a webhook event, the time a build API first listed the build. A listing is
  newest first, so a build first seen in a listing counts as first seen just before the
  builds listed above it (record_listing): a late webhook of an older build that Quay listed
  first never wins over the newer one. Each sender has its own order (SPEC §3, the scope of
  an event): an account's build events are ordered by its own sightings and the registry's
  (operator receivers, build APIs), never by another account's, so an account that reports
  another's next build id first (a CI's build numbers are predictable) moves nothing of it.
- An event without a build id (the generic event without `build_id`), or one meeting a
  state no build id set, wins when its time is newer than the state's (on equal times, a
  finished build beats `Building`).
- A build that ends without a result of its own (Quay's `cancelled`: ENDED) leaves the tag
  as the registry shows it: a tag with a digest is `Success`, one that only a build created
  is removed.
- A tag a build creates counts against MAX_TAGS_PER_IMAGE (`max_tags`) like the registry's:
  an image at the cap takes no new one and is marked cut (`…/sync/` then says tags_truncated).
- A tag still `Building` BUILD_TIMEOUT_SECONDS after the build event that set it falls back
  to what the registry shows: a tag with a digest was pushed, so it is `Success` again; a
  tag that only a build event created (no digest) is removed. Either way the image is due
  for a sync at once, which brings back whatever the registry does have. The build is over:
  its later events are recorded and change nothing (a new build id starts afresh).

Lock order (worker/locks.py): the caller holds the images; `builds` rows are written in
build-id order, then the tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from core.webhooks import BUILDING, ENDED
from worker.locks import lock_images

log = structlog.get_logger("worker.builds")

def _first_seen(build_id: str, repository: str, host: str, sender: str) -> str:
    """When the database first saw the build, as `sender` (an account id, NULL: the
    registry's own word) may know it: its own sightings and the registry's."""
    return (f"(SELECT min(b.first_seen_at) FROM builds AS b"
            f" WHERE b.host = {host} AND b.repository = {repository} AND b.build_id = {build_id}"
            f" AND (b.account_id IS NULL OR b.account_id = {sender}))")


def _wins(state: str, at: str, build_id: str, repository: str, host: str, sender: str) -> str:
    """The rule above as SQL: does a build state (these expressions) win over the tag `t`?"""
    return f"""CASE
    WHEN {build_id} IS NULL OR t.build_id IS NULL THEN
         t.state_at IS NULL OR t.state_at < {at}
         OR (t.state_at = {at} AND t.state = 'Building' AND {state} <> 'Building')
    WHEN t.build_id = {build_id} THEN t.state = 'Building' AND {state} <> 'Building'
    ELSE {_first_seen(build_id, repository, host, sender)}
         > COALESCE({_first_seen("t.build_id", repository, host, sender)}, '-infinity')
 END"""


# $1 images (with room for the tag), $2 tag, $3 state, $4 the event's time, $5 build id,
# $6 when it was received, $7/$8 repository/host (where builds are ordered), $9 the sender.
BUILD_STATE_SQL = f"""
INSERT INTO tags AS t (image_id, name, state, state_at, build_date, build_id, build_event_at)
SELECT i, $2, $3, $4, CASE WHEN $3 = 'Success' THEN $4::timestamptz END, $5, $6
  FROM unnest($1::bigint[]) AS i
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET state = EXCLUDED.state, state_at = EXCLUDED.state_at,
       build_date = CASE WHEN EXCLUDED.state = 'Success'
                         THEN GREATEST(t.build_date, EXCLUDED.state_at) ELSE t.build_date END,
       build_id = EXCLUDED.build_id, build_event_at = EXCLUDED.build_event_at, updated_at = now()
 WHERE {_wins("EXCLUDED.state", "EXCLUDED.state_at", "EXCLUDED.build_id", "$7", "$8", "$9::bigint")}
RETURNING t.image_id
"""

# ENDED: $1 images, $2 tag, $3 state (ENDED), $4 the event's time, $5 build id,
# $6/$7 repository/host, $8 the sender. Only existing tags: the registry shows no tag a build
# never pushed.
BUILD_ENDED_SQL = f"""
WITH won AS (
    SELECT t.id, t.manifest_digest IS NOT NULL AS pushed FROM tags AS t
     WHERE t.image_id = ANY ($1::bigint[]) AND t.name = $2
       AND {_wins("$3::text", "$4::timestamptz", "$5::text", "$6", "$7", "$8::bigint")}
), back AS (
    UPDATE tags SET state = 'Success', state_at = $4, build_id = $5, build_event_at = NULL, updated_at = now()
     WHERE id IN (SELECT id FROM won WHERE pushed)
    RETURNING image_id
), gone AS (
    DELETE FROM tags WHERE id IN (SELECT id FROM won WHERE NOT pushed) RETURNING image_id
)
SELECT image_id FROM back UNION ALL SELECT image_id FROM gone
"""


# Tags that builds create count against MAX_TAGS_PER_IMAGE ($3) like the registry's: the
# images that may take the tag (they have it, or fewer tags than the cap); the others are
# marked cut, so `…/sync/` says tags_truncated.
ROOM_SQL = """
WITH room AS (
    SELECT i AS image_id,
           EXISTS (SELECT 1 FROM tags AS x WHERE x.image_id = i AND x.name = $2)
           OR COALESCE((SELECT c.n FROM tag_counts AS c WHERE c.image_id = i), 0) < $3 AS ok
      FROM unnest($1::bigint[]) AS i
), cut AS (
    UPDATE images SET tags_cut_at = $3
     WHERE id IN (SELECT image_id FROM room WHERE NOT ok) AND tags_cut_at IS DISTINCT FROM $3
)
SELECT image_id FROM room WHERE ok ORDER BY image_id
"""


@dataclass(frozen=True)
class Applied:
    changed: list[int] = field(default_factory=list)  # images whose tag changed
    full: list[int] = field(default_factory=list)  # images that had no room for a new tag


async def apply_build_state(
    conn: asyncpg.Connection, image_ids: list[int], *, tag: str, state: str, at: datetime,
    build_id: str | None, received_at: datetime, host: str, repository: str, sender: int | None,
    max_tags: int | None = None,
) -> Applied:
    """Move `tag` of these images (locked by the caller) to `state` (BUILDING, SUCCESS, FAILED
    or ENDED) as of `at`, if it wins by the rules above, in `sender`'s order (the reporting
    account, None: the registry's own word); `received_at` starts BUILD_TIMEOUT. A build id
    must be noted in `builds` first (note_build, record_listing). With `max_tags`, a tag new to
    an image that has that many takes no room (the image is marked cut)."""
    room = image_ids
    if max_tags is not None and state != ENDED:
        room = [r["image_id"] for r in await conn.fetch(ROOM_SQL, image_ids, tag, max_tags)]
    full = sorted(set(image_ids) - set(room))
    if not room:
        return Applied(full=full)
    if state == ENDED:
        rows = await conn.fetch(BUILD_ENDED_SQL, room, tag, state, at, build_id, repository, host, sender)
    else:
        rows = await conn.fetch(
            BUILD_STATE_SQL, room, tag, state, at, build_id, received_at, repository, host, sender,
        )
    return Applied([r["image_id"] for r in rows], full)


async def apply_build_event(
    conn: asyncpg.Connection, ev: Mapping[str, Any], image_ids: list[int], *, max_tags: int | None = None,
) -> str | None:
    """Apply one build event to the tag on these (locked) images. `ev` has the columns of a
    `webhook_events` row: tag, build_state, occurred_at, build_id, received_at, repository,
    host, and account_id (the sender; absent or None: an operator's). Returns None, or a note
    for the record when it changed nothing."""
    sender = ev.get("account_id")
    if ev["build_id"] is not None:
        ended = ev["occurred_at"] if ev["build_state"] != BUILDING else None
        await note_build(conn, ev["host"], ev["repository"], ev["build_id"], ev["received_at"], ended, sender)
    applied = await apply_build_state(
        conn, image_ids, tag=ev["tag"], state=ev["build_state"], at=ev["occurred_at"], build_id=ev["build_id"],
        received_at=ev["received_at"], host=ev["host"], repository=ev["repository"], sender=sender,
        max_tags=max_tags,
    )
    if applied.changed:
        return None
    if applied.full and len(applied.full) == len(image_ids):
        return f"a new tag: every image of it has MAX_TAGS_PER_IMAGE ({max_tags}) tags"
    if ev["build_id"] is None:
        return "older than the tag's state"
    return "the tag's state is from a later build or a later phase of this build"


# Earlier times win: a build is as old as the first sight of its id, over as of its first end.
NOTE_BUILD_SQL = """
INSERT INTO builds AS b (host, repository, build_id, first_seen_at, ended_at, account_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT ON CONSTRAINT builds_key DO UPDATE
   SET first_seen_at = LEAST(b.first_seen_at, EXCLUDED.first_seen_at),
       ended_at = LEAST(b.ended_at, EXCLUDED.ended_at)
 WHERE b.first_seen_at > EXCLUDED.first_seen_at
    OR (EXCLUDED.ended_at IS NOT NULL AND (b.ended_at IS NULL OR b.ended_at > EXCLUDED.ended_at))
"""


async def note_build(
    conn: asyncpg.Connection, host: str, repository: str, build_id: str, seen_at: datetime,
    ended_at: datetime | None, sender: int | None,
) -> None:
    """Record that `sender` (an account, None: the registry's own word) reported this build
    at `seen_at` (and its end at `ended_at`)."""
    await conn.execute(NOTE_BUILD_SQL, host, repository, build_id, seen_at, ended_at, sender)


@dataclass(frozen=True)
class Seen:
    """What `builds` says of the builds of one listing, after record_listing."""

    now: datetime  # the transaction's time
    first_seen: dict[str, datetime]
    ended: dict[str, datetime | None]


KNOWN_BUILDS_SQL = """
SELECT now() AS now, b.build_id, b.first_seen_at, b.ended_at
  FROM (SELECT 1) AS one
  LEFT JOIN builds AS b ON b.host = $1 AND b.repository = $2 AND b.build_id = ANY ($3::text[])
                       AND b.account_id IS NULL
"""
RECORD_BUILDS_SQL = """
INSERT INTO builds AS b (host, repository, build_id, first_seen_at, ended_at)
SELECT $1, $2, u.build_id, u.first_seen_at, u.ended_at
  FROM unnest($3::text[], $4::timestamptz[], $5::timestamptz[]) AS u (build_id, first_seen_at, ended_at)
 ORDER BY u.build_id
ON CONFLICT ON CONSTRAINT builds_key DO UPDATE
   SET first_seen_at = LEAST(b.first_seen_at, EXCLUDED.first_seen_at),
       ended_at = COALESCE(b.ended_at, EXCLUDED.ended_at)
RETURNING b.build_id, b.first_seen_at, b.ended_at
"""
_JUST_BEFORE = timedelta(microseconds=1)


async def record_listing(
    conn: asyncpg.Connection, host: str, repository: str, listing: Sequence[tuple[str, bool]],
) -> Seen:
    """Record the builds of one read of a build API (the registry's own word, no sender),
    `listing` = [(build id, terminal)] newest first: a build not seen before is first seen
    now, or just before the earliest first sight of the builds listed above it; a terminal
    build's end is now unless known. Call with the image locked (the lock order above)."""
    known = {r["build_id"]: r for r in await conn.fetch(KNOWN_BUILDS_SQL, host, repository,
                                                         [b for b, _ in listing])}
    now: datetime = next(iter(known.values()))["now"]
    known.pop(None, None)
    rows: dict[str, tuple[datetime, datetime | None]] = {}
    cap: datetime | None = None
    for build_id, terminal in listing:
        if build_id in rows:
            continue
        k = known.get(build_id)
        first = k["first_seen_at"] if k else (now if cap is None else min(now, cap - _JUST_BEFORE))
        ended = k["ended_at"] if k and k["ended_at"] else (now if terminal else None)
        rows[build_id] = (first, ended)
        cap = first if cap is None else min(cap, first)
    ids = sorted(rows)
    written = await conn.fetch(
        RECORD_BUILDS_SQL, host, repository, ids, [rows[b][0] for b in ids], [rows[b][1] for b in ids],
    )
    return Seen(now, {r["build_id"]: r["first_seen_at"] for r in written},
                {r["build_id"]: r["ended_at"] for r in written})


# Building since the event that set it (DB clock); a row from before build_event_at existed
# counts from its last write.
_STALE = "state = 'Building' AND COALESCE(build_event_at, updated_at) < now() - make_interval(secs => $1)"
STALE_BUILD_IMAGES_SQL = f"SELECT DISTINCT image_id FROM tags WHERE {_STALE} LIMIT $2"
END_PUSHED_BUILDS_SQL = f"""
UPDATE tags SET state = 'Success', state_at = now(), build_event_at = NULL, updated_at = now()
 WHERE image_id = ANY ($2::bigint[]) AND manifest_digest IS NOT NULL AND {_STALE}
"""
END_BUILD_ONLY_TAGS_SQL = f"""
DELETE FROM tags WHERE image_id = ANY ($2::bigint[]) AND manifest_digest IS NULL AND {_STALE}
"""
RECHECK_SQL = """
UPDATE images SET sync_requested_at = now(), next_sync_at = LEAST(next_sync_at, now())
 WHERE id = ANY ($1::bigint[])
"""


async def end_stale_builds(pool: asyncpg.Pool, timeout_seconds: float, limit: int = 200) -> int:
    """End the builds that have been `Building` longer than the timeout (see the module's
    docstring). Returns how many tags changed; at most `limit` images per call."""
    candidates = [r["image_id"] for r in await pool.fetch(STALE_BUILD_IMAGES_SQL, timeout_seconds, limit)]
    if not candidates:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        ids = sorted(await lock_images(conn, candidates))
        ended = await conn.execute(END_PUSHED_BUILDS_SQL, timeout_seconds, ids)
        removed = await conn.execute(END_BUILD_ONLY_TAGS_SQL, timeout_seconds, ids)
        await conn.execute(RECHECK_SQL, ids)
    counts = int(ended.split()[-1]), int(removed.split()[-1])
    log.info("builds.timed_out", images=len(ids), back_to_success=counts[0], removed=counts[1])
    return sum(counts)
