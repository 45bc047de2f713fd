"""Build events (Quay, the generic build event) and the end of builds that never finish.

Rules (SPEC §2), per tag:
- Events of one build (same build id) only move forward: queued/started (`Building`) →
  success / failed / cancelled. A late `started`, or a second terminal event, changes nothing.
- Of two builds, the one whose id the database first saw later wins, whatever the order
  its events arrive in (Quay's bodies carry no time, so the database's receipt time of the
  first event of each build id is the only order there is; the inbox keeps it).
- An event without a build id (the generic event without `build_id`), or one meeting a
  state no build id set, wins when its time is newer than the state's (on equal times, a
  finished build beats `Building`).
- A tag a build event creates counts against MAX_TAGS_PER_IMAGE: an image at the cap takes
  no new one (`…/sync/` then says tags_truncated).
- A tag still `Building` BUILD_TIMEOUT_SECONDS after the build event that set it falls back
  to what the registry shows: a tag with a digest was pushed, so it is `Success` again; a
  tag that only a build event created (no digest) is removed. Either way the image is due
  for a sync at once, which brings back whatever the registry does have. The build is over:
  its later events are recorded and change nothing (a new build id starts afresh).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import structlog

from worker.locks import lock_images

log = structlog.get_logger("worker.builds")

# $1 images, $2 tag, $3 state, $4 the event's time, $5 build id, $6 when it was received,
# $7/$8 repository/host, $9 the sending account (NULL: an operator receiver). Builds are
# ordered by the first sight of their id among the events of the same (repository, host) and
# the same sender: another account's events of a build id cannot move this sender's builds.
BUILD_STATE_SQL = """
INSERT INTO tags AS t (image_id, name, state, state_at, build_date, build_id, build_event_at)
SELECT i, $2, $3, $4, CASE WHEN $3 = 'Success' THEN $4::timestamptz END, $5, $6
  FROM unnest($1::bigint[]) AS i
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET state = EXCLUDED.state, state_at = EXCLUDED.state_at,
       build_date = CASE WHEN EXCLUDED.state = 'Success'
                         THEN GREATEST(t.build_date, EXCLUDED.state_at) ELSE t.build_date END,
       build_id = EXCLUDED.build_id, build_event_at = EXCLUDED.build_event_at, updated_at = now()
 WHERE CASE
    WHEN EXCLUDED.build_id IS NULL OR t.build_id IS NULL THEN
         t.state_at IS NULL OR t.state_at < EXCLUDED.state_at
         OR (t.state_at = EXCLUDED.state_at AND t.state = 'Building' AND EXCLUDED.state <> 'Building')
    WHEN t.build_id = EXCLUDED.build_id THEN t.state = 'Building' AND EXCLUDED.state <> 'Building'
    ELSE (SELECT min(e.received_at) FROM webhook_events AS e
           WHERE e.repository = $7 AND e.host = $8 AND e.build_id = EXCLUDED.build_id
             AND e.account_id IS NOT DISTINCT FROM $9)
         > COALESCE((SELECT min(e.received_at) FROM webhook_events AS e
                      WHERE e.repository = $7 AND e.host = $8 AND e.build_id = t.build_id
                        AND e.account_id IS NOT DISTINCT FROM $9), '-infinity')
 END
RETURNING t.image_id
"""

# Tags that build events create count against MAX_TAGS_PER_IMAGE ($3) like the registry's:
# the images that may take the tag (they have it, or fewer tags than the cap); the others
# are marked cut, so `…/sync/` says tags_truncated.
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


async def apply_build_event(
    conn: asyncpg.Connection, ev: Mapping[str, Any], image_ids: list[int], *, max_tags: int,
) -> str | None:
    """Apply one build event to the tag on these (locked) images: the one place build states
    are written, whatever reported them. `ev` has the columns of a `webhook_events` row: tag,
    build_state, occurred_at, build_id, received_at, repository, host, and account_id (the
    sender; absent or None: an operator's). A tag new to an image that has `max_tags` tags
    is refused (and the image marked cut). Returns None, or a note for the record when it
    changed nothing."""
    room = [r["image_id"] for r in await conn.fetch(ROOM_SQL, image_ids, ev["tag"], max_tags)]
    rows = await conn.fetch(
        BUILD_STATE_SQL, room, ev["tag"], ev["build_state"], ev["occurred_at"], ev["build_id"],
        ev["received_at"], ev["repository"], ev["host"], ev.get("account_id"),
    ) if room else []
    if rows:
        return None
    if not room:
        return f"a new tag: every image of it has MAX_TAGS_PER_IMAGE ({max_tags}) tags"
    if ev["build_id"] is None:
        return "older than the tag's state"
    return "the tag's state is from a later build or a later phase of this build"


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
