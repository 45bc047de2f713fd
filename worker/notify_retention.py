"""Retention of the tag history and of the notification log, run with the scheduler's other
retention (worker/retention.py), in bounded batches:

- a tag's history keeps its last TAG_HISTORY_KEEP entries (0: all), and closed entries older
  than TAG_HISTORY_RETENTION_SECONDS go (0: kept forever);
- deliveries finished (delivered, failed, dropped) more than NOTIFY_LOG_RETENTION_SECONDS ago
  go with their attempts, then outbox events fanned out that long ago with no delivery left.
"""

from __future__ import annotations

import time

import asyncpg

from core.settings import Settings

# Tags with more than $1 entries are those with an entry numbered above $1 (a short index
# range: only busy tags have any); their entries up to the newest minus $1 go.
HISTORY_KEEP_SQL = """
DELETE FROM tag_history WHERE id IN (
    SELECT h.id
      FROM (SELECT image_id, tag, max(seq) AS top FROM tag_history WHERE seq > $1 GROUP BY image_id, tag) AS m
      JOIN tag_history AS h ON h.image_id = m.image_id AND h.tag = m.tag AND h.seq <= m.top - $1
     LIMIT $2)
"""
HISTORY_AGE_SQL = """
DELETE FROM tag_history WHERE id IN (
    SELECT id FROM tag_history WHERE valid_until < now() - make_interval(secs => $1) LIMIT $2)
"""
DELIVERIES_SQL = """
DELETE FROM notification_deliveries WHERE id IN (
    SELECT id FROM notification_deliveries
     WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1) LIMIT $2)
"""
EVENTS_SQL = """
DELETE FROM notification_events WHERE id IN (
    SELECT e.id FROM notification_events AS e
     WHERE e.fanned_out AND e.occurred_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM notification_deliveries AS d WHERE d.event_id = e.id)
     LIMIT $2)
"""


async def prune(pool: asyncpg.Pool, settings: Settings, batch: int, deadline: float) -> dict[str, int]:
    """Rows deleted per table, each statement repeated while it fills a batch and time is left."""
    deleted = {"tag_history": 0, "notification_deliveries": 0, "notification_events": 0}

    async def drain(table: str, sql: str, arg: float | int) -> None:
        while True:
            n = int((await pool.execute(sql, arg, batch)).split()[-1])
            deleted[table] += n
            if n < batch or time.monotonic() > deadline:
                return

    if settings.tag_history_keep > 0:
        await drain("tag_history", HISTORY_KEEP_SQL, settings.tag_history_keep)
    if settings.tag_history_retention_seconds > 0:
        await drain("tag_history", HISTORY_AGE_SQL, settings.tag_history_retention_seconds)
    await drain("notification_deliveries", DELIVERIES_SQL, settings.notify_log_retention_seconds)
    await drain("notification_events", EVENTS_SQL, settings.notify_log_retention_seconds)
    return deleted
