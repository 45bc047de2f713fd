"""Sweeping the webhook inbox, from the scheduler's loop (`registry-sync beat`).

- An event still pending SWEEP_AFTER_SECONDS after it was queued is sent to the priority
  queue again (its message may have been lost with Redis). Each re-send of the same event
  waits twice as long as the one before, up to SWEEP_MAX_WAIT_SECONDS, whether or not
  anything failed: while the queue has a backlog the event's message is most likely still
  in it, and re-sending it every few seconds would only breed duplicates.
- An event that failed MAX_ATTEMPTS times is marked `failed` (kept, for an operator).
- Processed events are deleted by worker/retention.py after WEBHOOK_EVENT_RETENTION_SECONDS:
  they are the dedupe window,
  the delete tombstones and the first sight of build ids, so keep them longer than any
  sender's redelivery and any build.
- Builds that never finished end after BUILD_TIMEOUT_SECONDS (worker/builds.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import structlog

from core.queue import PROCESS_EVENT_TASK
from core.settings import Settings
from worker import builds

log = structlog.get_logger("worker.sweep")

SWEEP_AFTER_SECONDS = 5.0
SWEEP_MAX_WAIT_SECONDS = 300.0
SWEEP_INTERVAL_SECONDS = 1.0
HOUSEKEEPING_INTERVAL_SECONDS = 30.0  # build timeouts (processed events: worker/retention.py)
SWEEP_BATCH = 500
MAX_ATTEMPTS = 20

SWEEP_SQL = """
WITH due AS (
    SELECT id FROM webhook_events
     WHERE status = 'pending'
       AND queued_at < now() - make_interval(secs => LEAST($2::float8, $1::float8 * power(2, LEAST(sweeps, 16))))
     ORDER BY id
     LIMIT $3
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events AS e SET queued_at = now(), sweeps = e.sweeps + 1 FROM due WHERE e.id = due.id
RETURNING e.id
"""
GIVE_UP_SQL = """
UPDATE webhook_events SET status = 'failed', processed_at = now()
 WHERE status = 'pending' AND attempts >= $1
"""

Send = Callable[[str, list], None]


async def sweep_events(
    pool: asyncpg.Pool, send: Send, *, after: float = SWEEP_AFTER_SECONDS,
    max_wait: float = SWEEP_MAX_WAIT_SECONDS, limit: int = SWEEP_BATCH,
) -> int:
    """Queue again the pending events whose wait is over (`after` s after they were queued,
    doubling with every re-send, at most `max_wait`), and give up on those that failed too
    often. Returns how many were sent; stops at the first send that fails (those rows wait
    their next, longer turn)."""
    await pool.execute(GIVE_UP_SQL, MAX_ATTEMPTS)
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
    """Called on every scheduler tick: sweeps at most every `interval` seconds and ends stale
    builds at most every HOUSEKEEPING_INTERVAL_SECONDS."""

    def __init__(self, settings: Settings, interval: float = SWEEP_INTERVAL_SECONDS,
                 after: float = SWEEP_AFTER_SECONDS) -> None:
        self.settings = settings
        self.interval = interval
        self.after = after
        self._next = 0.0
        self._next_housekeeping = 0.0

    async def __call__(self, pool: asyncpg.Pool, send: Send) -> int:
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.interval
        try:
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_SECONDS
                await builds.end_stale_builds(pool, self.settings.build_timeout_seconds)
            return await sweep_events(pool, send, after=self.after)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("webhook.sweep_failed", error=str(exc))
            return 0
