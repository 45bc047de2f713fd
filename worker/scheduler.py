"""`registry-sync beat`: claims due images from Postgres and queues them (SPEC §4).

Postgres holds each image's next sync time. Each tick claims a batch of due, unleased images
with `FOR UPDATE SKIP LOCKED` and sets a claim lease, then sends them to the routine queue in
batches. If Redis refuses a batch, its claims are released and the images are due again on
the next tick: losing Redis loses no work.

Only one scheduler is active at a time: it holds a session advisory lock on a connection of
its own (worker/beat_lock.py), checks before every tick that it still does, and goes back to
standby the moment that connection drops (a Postgres restart); a standby keeps trying, and
survives outages of Postgres and Redis alike.

The routine queue stays bounded: beat claims nothing while BEAT_QUEUE_MAX messages wait in
it, and keeps the claims of the batches still waiting there alive, so a backlog never makes
claims lapse and breed duplicate messages. (Redis lists are FIFO and beat is the routine
queue's only producer: when the queue holds L messages, they are beat's last L batches.)
Each tick also runs the webhook inbox sweep, queues the due build polls (worker/quay_builds.py:
images with a running build, to the priority queue) and, every RETENTION_INTERVAL_SECONDS,
retention.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from core import metrics
from core.db import create_pool
from core.queue import POLL_BUILDS_TASK, PRIORITY_QUEUE, PROCESS_EVENT_TASK, ROUTINE_QUEUE, SYNC_BATCH_TASK
from core.registries import InsecureWatch
from core.settings import Settings
from worker import quay_builds, store
from worker.beat_lock import DB_ERRORS, SingletonLock
from worker.retention import Retention
from worker.sweep import EventSweeper
from worker.waits import first_event

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

# Claims whose messages still wait in the queue: renewed once half their lease has gone.
KEEP_CLAIMS_SQL = """
UPDATE images SET lease_until = now() + make_interval(secs => $3)
 WHERE id = ANY ($1::bigint[]) AND lease_owner = ANY ($2::text[])
   AND lease_until < now() + make_interval(secs => $3 / 2)
"""


async def claim_due(conn: asyncpg.Pool | asyncpg.Connection, limit: int, lease_seconds: float) -> tuple[str, list[int]]:
    """Claim up to `limit` due images: (claim token, ids)."""
    token = f"{store.CLAIM_PREFIX}{uuid.uuid4().hex}"
    rows = await conn.fetch(CLAIM_DUE_SQL, limit, token, lease_seconds)
    if lapsed := sum(1 for r in rows if r["lapsed"]):
        metrics.LEASE_EXPIRIES.inc(lapsed)
        log.info("beat.leases_lapsed", images=lapsed)
    return token, [r["id"] for r in rows]


Send = Callable[[str, list], None]


class RoutineQueue:
    """How many messages wait in the routine queue (None when Redis does not answer)."""

    def __init__(self, redis_url: str) -> None:
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)

    async def depth(self) -> int | None:
        try:
            return int(await self._redis.llen(ROUTINE_QUEUE))
        except (RedisError, OSError):
            return None

    async def aclose(self) -> None:
        await self._redis.aclose()


class QueuedClaims:
    """The batches this scheduler sent, newest last, as long as they may still be queued."""

    def __init__(self) -> None:
        self._sent: collections.deque[tuple[str, list[int]]] = collections.deque()

    def add(self, token: str, ids: list[int]) -> None:
        self._sent.append((token, ids))

    async def keep_alive(self, pool: asyncpg.Pool, depth: int, lease_seconds: float) -> int:
        """The queue holds `depth` messages: the last `depth` batches sent. Forget the
        older ones (taken by workers) and renew the claims of those. Returns how many."""
        while len(self._sent) > depth:
            self._sent.popleft()
        if not self._sent:
            return 0
        ids = [i for _, batch in self._sent for i in batch]
        tokens = sorted({token for token, _ in self._sent})
        return int((await pool.execute(KEEP_CLAIMS_SQL, ids, tokens, lease_seconds)).split()[-1])


async def tick(pool: asyncpg.Pool, settings: Settings, send: Send, queue: RoutineQueue | None = None,
               claims: QueuedClaims | None = None) -> int:
    """One round: keep queued claims alive, claim due images while the queue has room, queue
    them in batches. Returns how many were queued."""
    limit = settings.beat_batch_size
    if queue is not None:
        depth = await queue.depth()
        if depth is None:
            return 0  # Redis does not answer: nothing could be queued anyway
        if claims is not None:
            await claims.keep_alive(pool, depth, settings.lease_seconds)
        room = (settings.beat_queue_max - depth) * settings.task_batch_size
        if room <= 0:
            metrics.BEAT_QUEUE_FULL.inc()
            return 0
        limit = min(limit, room)
    token, ids = await claim_due(pool, limit, settings.lease_seconds)
    if not ids:
        return 0
    loop = asyncio.get_running_loop()
    batches = _chunks(ids, settings.task_batch_size)
    try:
        for batch in batches:
            await loop.run_in_executor(None, send, SYNC_BATCH_TASK, [batch, token])
            if claims is not None:
                claims.add(token, batch)
    except Exception as exc:  # broker down: hand the claims back, they stay due
        await pool.execute(RELEASE_CLAIM_SQL, token)
        log.warning("beat.queue_failed", error=type(exc).__name__, images=len(ids))
        return 0
    log.info("beat.queued", images=len(ids), batches=len(batches))
    return len(ids)


async def queue_build_polls(pool: asyncpg.Pool, settings: Settings, send: Send) -> int:
    """Claim the images whose builds are due to be read and queue them in batches; if Redis
    refuses, the claims are released and the polls stay due. Returns how many were queued."""
    token, ids = await quay_builds.claim_due_polls(pool, settings.beat_batch_size, settings.lease_seconds)
    if not ids:
        return 0
    loop = asyncio.get_running_loop()
    try:
        for batch in _chunks(ids, settings.task_batch_size):
            await loop.run_in_executor(None, send, POLL_BUILDS_TASK, [batch, token])
    except Exception as exc:  # broker down
        await quay_builds.release_claim(pool, token)
        log.warning("beat.build_polls_queue_failed", error=type(exc).__name__, images=len(ids))
        return 0
    log.info("beat.build_polls_queued", images=len(ids))
    return len(ids)


def celery_sender(settings: Settings) -> Send:
    """A `send` that publishes to the routine queue and fails fast when Redis is down."""
    from core.queue import make_celery

    app = make_celery(settings, name="registry-sync-beat")
    app.conf.broker_connection_timeout = 3.0

    def send(task: str, args: list) -> None:
        # webhook sweep, build polls
        queue = PRIORITY_QUEUE if task in (PROCESS_EVENT_TASK, POLL_BUILDS_TASK) else ROUTINE_QUEUE
        app.send_task(task, args=args, queue=queue, retry=False)

    return send


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), max(size, 1))]


async def run_beat(settings: Settings, send: Send, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT): standby until the lock is ours, then tick
    for as long as it stays ours; standby again when it is lost."""
    stop = stop or _stop_on_signals()
    lock = SingletonLock(settings.database_url, BEAT_LOCK)
    queue = RoutineQueue(settings.redis_url)
    # no connection at start: a scheduler started while Postgres is down waits in standby
    pool = await create_pool(settings.database_url, min_size=0, max_size=2)
    try:
        while await lock.acquire(stop):
            log.info("beat.active")
            reason = await _active(pool, settings, send, queue, lock, stop)
            await lock.release()
            log.info("beat.inactive", reason=reason)
    finally:
        await lock.release()
        await queue.aclose()
        await pool.close()
        log.info("beat.stopped")


async def _active(pool: asyncpg.Pool, settings: Settings, send: Send, queue: RoutineQueue,
                  lock: SingletonLock, stop: asyncio.Event) -> str:
    """Tick while the lock is held; why it stopped."""
    claims = QueuedClaims()
    sweep_webhooks = EventSweeper(settings)  # re-queues webhook events nobody processed
    retention = Retention(settings)
    insecure = InsecureWatch(settings)  # INSECURE_REGISTRIES_FILE changes: no restart needed
    while not stop.is_set():
        if not await lock.held():
            return "lost the lock (its database connection ended)"
        queued = 0
        try:
            queued = await tick(pool, settings, send, queue, claims)
            await sweep_webhooks(pool, send)
            await queue_build_polls(pool, settings, send)
            await retention(pool)
            await insecure(pool)
        except DB_ERRORS as exc:
            log.warning("beat.tick_failed", error=f"{type(exc).__name__}: {exc}")
        # a full batch means more is due: go again at once
        if queued < settings.beat_batch_size:
            await first_event(stop, lock.lost, within=settings.beat_interval_seconds)
    return "stopping"


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
