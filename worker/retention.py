"""Retention: the scheduler prunes what nothing needs any more, in bounded batches, every
RETENTION_INTERVAL_SECONDS (and at most RUN_BUDGET seconds per run, so claiming never waits
long for it).

- `hub_inspections` finished (or abandoned) more than HUB_INSPECTION_RETENTION_SECONDS ago:
  the API only reads recent outcomes (a `missing` answer is trusted for minutes).
- processed (`done`, `ignored`) `webhook_events` older than WEBHOOK_EVENT_RETENTION_SECONDS:
  they are the dedupe window and the delete tombstones, so keep this at days, not minutes.
- `builds` first seen more than WEBHOOK_EVENT_RETENTION_SECONDS ago: their order against
  builds as old is settled (a build API still listing one records it again, just before the
  builds listed above it: worker/builds.py).
- `layers` no tag has pointed at for LAYER_RETENTION_SECONDS (never less than MIN_LAYER_GRACE),
  with their `layer_sources` (ON DELETE CASCADE). A pass walks the table in config-digest
  order (a cursor, a batch per step) and stamps unreferenced layers `orphaned_at`; a trigger
  on `tags` clears the stamp when a tag points at the layer again (schema.sql), so the grace
  period runs from the moment a layer lost its last tag.
- the tag history and the notification log: worker/notify_retention.py. A sync that counted on a proven
  layer deleted under it (its repository pointed a tag back at a config unused for the whole
  grace period, in the very seconds of the delete) fails its write once and, on its next
  run, fetches the config again.
"""

from __future__ import annotations

import time

import asyncpg
import structlog

from core import metrics
from core.settings import Settings
from worker import notify_retention

log = structlog.get_logger("worker.retention")

RUN_BUDGET = 2.0  # seconds of pruning per run at most; the rest waits for the next run
MARK_STEPS = 20  # layer batches examined per run
MIN_LAYER_GRACE = 3600.0  # longer than any sync (SYNC_DEADLINE_SECONDS) that read the layer as known

HUB_INSPECTIONS_SQL = """
DELETE FROM hub_inspections WHERE name IN (
    SELECT name FROM hub_inspections
     WHERE COALESCE(finished_at, requested_at) < now() - make_interval(secs => $1)
     LIMIT $2)
"""

WEBHOOK_EVENTS_SQL = """
DELETE FROM webhook_events WHERE id IN (
    SELECT id FROM webhook_events
     WHERE status IN ('done', 'ignored') AND processed_at < now() - make_interval(secs => $1)
     LIMIT $2)
"""

BUILDS_SQL = """
DELETE FROM builds WHERE id IN (
    SELECT id FROM builds
     WHERE first_seen_at < now() - make_interval(secs => $1)
     LIMIT $2)
"""

MARK_ORPHANS_SQL = """
WITH batch AS (
    SELECT config_digest FROM layers WHERE config_digest > $1 ORDER BY config_digest LIMIT $2
), marked AS (
    UPDATE layers AS l SET orphaned_at = now()
      FROM batch AS b
     WHERE l.config_digest = b.config_digest AND l.orphaned_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM tags AS t WHERE t.config_digest = l.config_digest)
    RETURNING 1
)
SELECT (SELECT max(config_digest) FROM batch) AS last, (SELECT count(*) FROM marked) AS marked
"""

# SKIP LOCKED: a layer a sync is pointing a tag at right now (its foreign-key check holds
# the row) is left for the next run, when it is referenced and no longer an orphan.
DELETE_ORPHANS_SQL = """
DELETE FROM layers WHERE config_digest IN (
    SELECT l.config_digest FROM layers AS l
     WHERE l.orphaned_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM tags AS t WHERE t.config_digest = l.config_digest)
     LIMIT $2
       FOR UPDATE SKIP LOCKED)
"""


def _count(status: str) -> int:
    return int(status.split()[-1])


class Retention:
    """Called on every scheduler tick; prunes at most every RETENTION_INTERVAL_SECONDS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._next = 0.0
        self._cursor = ""  # config digest where the orphan-marking pass goes on

    @property
    def layer_grace(self) -> float:
        return max(self.settings.layer_retention_seconds, MIN_LAYER_GRACE)

    async def __call__(self, pool: asyncpg.Pool, *, force: bool = False) -> dict[str, int]:
        now = time.monotonic()
        if not force and now < self._next:
            return {}
        self._next = now + self.settings.retention_interval_seconds
        deadline = now + RUN_BUDGET
        s = self.settings
        batch = max(1, s.retention_batch)
        deleted = {
            "hub_inspections": await _drain(pool, HUB_INSPECTIONS_SQL, s.hub_inspection_retention_seconds, batch,
                                            deadline),
            "webhook_events": await _drain(pool, WEBHOOK_EVENTS_SQL, s.webhook_event_retention_seconds, batch,
                                           deadline),
            "builds": await _drain(pool, BUILDS_SQL, s.webhook_event_retention_seconds, batch, deadline),
        }
        marked = 0
        for _ in range(MARK_STEPS):
            if time.monotonic() > deadline:
                break
            row = await pool.fetchrow(MARK_ORPHANS_SQL, self._cursor, batch)
            marked += row["marked"]
            if row["last"] is None:
                self._cursor = ""  # the pass reached the end: start over next time
                break
            self._cursor = row["last"]
        deleted["layers"] = await _drain(pool, DELETE_ORPHANS_SQL, self.layer_grace, batch, deadline)
        deleted |= await notify_retention.prune(pool, s, batch, deadline)
        for table, n in deleted.items():
            if n:
                metrics.RETENTION_DELETED.labels(table=table).inc(n)
        if any(deleted.values()) or marked:
            log.info("retention.pruned", orphaned_layers_marked=marked, **deleted)
        return deleted


async def _drain(pool: asyncpg.Pool, sql: str, older_than: float, batch: int, deadline: float) -> int:
    """Run a bounded DELETE until it deletes less than a batch or the run's time is up."""
    total = 0
    while True:
        n = _count(await pool.execute(sql, older_than, batch))
        total += n
        if n < batch or time.monotonic() > deadline:
            return total
