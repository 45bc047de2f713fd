"""The deliverer process: fans out the outbox and delivers notifications (worker/fanout.py,
worker/deliverer.py). `registry-sync worker` runs one beside its consumers
(NOTIFY_IN_WORKER); any number of them share the work through Postgres (leases, SKIP LOCKED).

Two loops run side by side. One fans out when `NOTIFY registry_sync_outbox` says the outbox
grew (the triggers that write it send it). The other claims due subscriptions when a fan-out
added deliveries, when the delivery log gave a subscription back due at once or a turn ended
after a claim that filled every slot, and when a retry it scheduled falls due. Each also
runs at least every NOTIFY_POLL_SECONDS whatever it heard (a notification is lost with its
connection; another deliverer's retries and leases that lapsed are found so). Rounds of each
start at least NOTIFY_ROUND_SECONDS apart: under load, what arrived meanwhile is fanned out,
claimed and logged in one statement each (the first change after a quiet spell goes at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import asyncpg
import structlog

from core.address_policy import AddressPolicy
from core.crypto import CredentialBox
from core.db import create_pool
from core.logs import configure_logging
from core.settings import Settings
from worker.beat_lock import DB_ERRORS
from worker.deliverer import Deliverer
from worker.deliveries import Sender, delivery_session
from worker.fanout import fan_out
from worker.waits import first_event

log = structlog.get_logger("worker.notifier")

CHANNEL = "registry_sync_outbox"
FANOUT_BATCH = 1000


async def run_deliverer(settings: Settings, stop: asyncio.Event, *, pool: asyncpg.Pool | None = None) -> None:
    """Fan out and deliver until `stop` is set, then let the turns in flight finish
    (WORKER_DRAIN_SECONDS). `pool`: the caller's (tests); else one of its own."""
    own_pool = pool is None
    if pool is None:
        # stateless: nothing here leaves session state behind (the fan-out's lock is the
        # transaction's, LISTEN has a connection of its own), so no reset query per statement
        pool = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max, stateless=True)
    session = delivery_session(AddressPolicy.from_settings(settings), timeout=settings.notify_timeout_seconds,
                               limit=max(settings.notify_concurrency, 10))
    deliverer = Deliverer(pool, settings, Sender(session, settings.notify_timeout_seconds),
                          CredentialBox(settings.secret_key, settings.secret_keys_old))
    outbox = asyncio.Event()
    deliverer.start()
    log.info("notify.started", token=deliverer.token)
    try:
        async with asyncio.TaskGroup() as loops:  # one failing stops the other
            loops.create_task(_fan_outs(pool, settings, outbox, deliverer.wake, stop))
            loops.create_task(_claims(deliverer, settings, stop))
    finally:
        await deliverer.drain(settings.worker_drain_seconds)
        await session.close()
        if own_pool:
            await pool.close()
        log.info("notify.stopped")


async def _fan_outs(pool: asyncpg.Pool, settings: Settings, outbox: asyncio.Event, claim: asyncio.Event,
                    stop: asyncio.Event) -> None:
    """Fan out when the outbox grew (and every NOTIFY_POLL_SECONDS); `claim` is set when that
    added deliveries. Keeps the LISTEN connection that sets `outbox`."""
    listener: asyncpg.Connection | None = None
    next_poll = 0.0
    try:
        while not stop.is_set():
            if listener is None or listener.is_closed():
                listener = await _listen(settings.database_url, outbox)
            now = time.monotonic()
            if now >= next_poll or outbox.is_set():
                next_poll = now + settings.notify_poll_seconds
                outbox.clear()
                try:
                    while True:
                        events, deliveries = await fan_out(pool, FANOUT_BATCH)
                        if deliveries:
                            claim.set()
                        if events < FANOUT_BATCH:
                            break
                except DB_ERRORS as exc:
                    log.warning("notify.fan_out_failed", error=f"{type(exc).__name__}: {exc}")
            await first_event(outbox, stop, within=next_poll - time.monotonic())
            # pacing: what comes within a round's time waits for the next round, all together
            await first_event(stop, within=now + settings.notify_round_seconds - time.monotonic())
    finally:
        if listener is not None:
            with contextlib.suppress(*DB_ERRORS):
                await listener.close()


async def _claims(deliverer: Deliverer, settings: Settings, stop: asyncio.Event) -> None:
    """Claim due subscriptions when told to (`deliverer.wake`), when a retry this deliverer
    gave back falls due, and every NOTIFY_POLL_SECONDS."""
    next_poll = 0.0
    while not stop.is_set():
        now = time.monotonic()
        due = deliverer.next_due is not None and deliverer.next_due <= now
        if now >= next_poll or due or deliverer.wake.is_set():
            next_poll = now + settings.notify_poll_seconds
            deliverer.wake.clear()
            try:
                await deliverer.claim()
            except DB_ERRORS as exc:
                log.warning("notify.claim_failed", error=f"{type(exc).__name__}: {exc}")
                deliverer.next_due = None  # the next poll looks again
        wake_at = next_poll if deliverer.next_due is None else min(next_poll, deliverer.next_due)
        await first_event(deliverer.wake, stop, within=wake_at - time.monotonic())
        await first_event(stop, within=now + settings.notify_round_seconds - time.monotonic())


async def _listen(dsn: str, wake: asyncio.Event) -> asyncpg.Connection | None:
    """A connection that sets `wake` on every outbox notification; None when Postgres does not
    answer (polling goes on, and the next round tries again)."""
    try:
        conn = await asyncpg.connect(dsn)
        await conn.add_listener(CHANNEL, lambda *_: wake.set())
    except DB_ERRORS as exc:
        log.warning("notify.listen_failed", error=type(exc).__name__)
        return None
    return conn


def run_notifier(settings: Settings) -> None:
    """The process `registry-sync worker` starts (worker/main.py): runs until SIGTERM/SIGINT."""
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_deliverer(settings, stop)

    asyncio.run(main())
