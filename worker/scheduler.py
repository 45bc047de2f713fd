"""`registry-sync beat`: claims due images from Postgres and queues them (SPEC §4).

Postgres holds each image's next sync time. Each tick claims a batch of due, unleased images
with `FOR UPDATE SKIP LOCKED` and sets a claim lease, then sends them to the routine queue in
batches. Only one scheduler is active at a time (a session advisory lock); a second one started
by mistake waits as a standby. If Redis refuses a batch, its claims are released and the
images are due again on the next tick: losing Redis loses no work.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from core import metrics
from core.db import create_pool
from core.queue import PRIORITY_QUEUE, PROCESS_EVENT_TASK, ROUTINE_QUEUE, SYNC_BATCH_TASK
from core.settings import Settings
from worker import store
from worker.sweep import EventSweeper

log = structlog.get_logger("worker.beat")

# Any fixed number: the lock that makes the scheduler a singleton across hosts.
BEAT_LOCK = 7_305_002

CLAIM_DUE_SQL = """
WITH due AS (
    -- a lease still set here has lapsed: its worker died or overran (counted as a metric)
    SELECT id, lease_owner IS NOT NULL AS lapsed FROM images
     WHERE next_sync_at <= now() AND (lease_until IS NULL OR lease_until < now())
     ORDER BY next_sync_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE images AS i
   SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
  FROM due WHERE i.id = due.id
RETURNING i.id, due.lapsed
"""

RELEASE_CLAIM_SQL = "UPDATE images SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1"


async def claim_due(conn: asyncpg.Pool | asyncpg.Connection, limit: int, lease_seconds: float) -> tuple[str, list[int]]:
    """Claim up to `limit` due images: (claim token, ids)."""
    token = f"{store.CLAIM_PREFIX}{uuid.uuid4().hex}"
    rows = await conn.fetch(CLAIM_DUE_SQL, limit, token, lease_seconds)
    if lapsed := sum(1 for r in rows if r["lapsed"]):
        metrics.LEASE_EXPIRIES.inc(lapsed)
        log.info("beat.leases_lapsed", images=lapsed)
    return token, [r["id"] for r in rows]


Send = Callable[[str, list], None]


async def tick(pool: asyncpg.Pool, settings: Settings, send: Send) -> int:
    """One round: claim due images, queue them in batches. Returns how many were queued."""
    token, ids = await claim_due(pool, settings.beat_batch_size, settings.lease_seconds)
    if not ids:
        return 0
    loop = asyncio.get_running_loop()
    batches = _chunks(ids, settings.task_batch_size)
    try:
        for batch in batches:
            await loop.run_in_executor(None, send, SYNC_BATCH_TASK, [batch, token])
    except Exception as exc:  # broker down: hand the claims back, they stay due
        await pool.execute(RELEASE_CLAIM_SQL, token)
        log.warning("beat.queue_failed", error=type(exc).__name__, images=len(ids))
        return 0
    log.info("beat.queued", images=len(ids), batches=len(batches))
    return len(ids)


def celery_sender(settings: Settings) -> Send:
    """A `send` that publishes to the routine queue and fails fast when Redis is down."""
    from core.queue import make_celery

    app = make_celery(settings, name="registry-sync-beat")
    app.conf.broker_connection_timeout = 3.0

    def send(task: str, args: list) -> None:
        queue = PRIORITY_QUEUE if task == PROCESS_EVENT_TASK else ROUTINE_QUEUE  # webhook sweep
        app.send_task(task, args=args, queue=queue, retry=False)

    return send


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), max(size, 1))]


async def run_beat(settings: Settings, send: Send, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT): standby until the lock is ours, then tick."""
    stop = stop or _stop_on_signals()
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as lock_conn:
            while not stop.is_set():
                if await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", BEAT_LOCK):
                    break
                log.info("beat.standby", reason="another scheduler holds the lock")
                await _wait(stop, 5.0)
            if stop.is_set():
                return
            log.info("beat.active")
            sweep_webhooks = EventSweeper(settings)  # re-queues webhook events nobody processed
            try:
                while not stop.is_set():
                    try:
                        queued = await tick(pool, settings, send)
                        await sweep_webhooks(pool, send)
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("beat.tick_failed", error=str(exc))
                        queued = 0
                    # a full batch means more is due: go again at once
                    if queued < settings.beat_batch_size:
                        await _wait(stop, settings.beat_interval_seconds)
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", BEAT_LOCK)
                log.info("beat.stopped")
    finally:
        await pool.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
