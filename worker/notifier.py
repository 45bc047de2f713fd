"""The deliverer process: fans out the outbox and delivers notifications (worker/fanout.py,
worker/deliveries.py). `registry-sync worker` runs one beside its consumers
(NOTIFY_IN_WORKER); any number of them share the work through Postgres (leases, SKIP LOCKED).

It wakes on `NOTIFY registry_sync_outbox` (sent by the triggers that write the outbox) and
when a turn ends, and looks at least every NOTIFY_POLL_SECONDS (a notification is lost with
its connection) or when the next retry is due, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import asyncpg
import structlog

from core.address_policy import AddressPolicy
from core.crypto import CredentialBox
from core.db import create_pool
from core.logs import configure_logging
from core.settings import Settings
from worker.beat_lock import DB_ERRORS
from worker.deliveries import USER_AGENT, Deliverer, Sender
from worker.fanout import fan_out
from worker.registry.guard import GuardedConnector, make_session

log = structlog.get_logger("worker.notifier")

CHANNEL = "registry_sync_outbox"
FANOUT_BATCH = 1000


async def run_deliverer(settings: Settings, stop: asyncio.Event, *, pool: asyncpg.Pool | None = None) -> None:
    """Fan out and deliver until `stop` is set, then let the turns in flight finish
    (WORKER_DRAIN_SECONDS). `pool`: the caller's (tests); else one of its own."""
    own_pool = pool is None
    if pool is None:
        pool = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max)
    session = make_session(policy=AddressPolicy.from_settings(settings), timeout=settings.notify_timeout_seconds,
                           limit=max(settings.notify_concurrency, 10), user_agent=USER_AGENT)
    connector = session.connector
    assert isinstance(connector, GuardedConnector)
    deliverer = Deliverer(pool, settings, Sender(session, connector.guard, settings.notify_timeout_seconds),
                          CredentialBox(settings.secret_key, settings.secret_keys_old))
    listener: asyncpg.Connection | None = None
    log.info("notify.started", token=deliverer.token)
    try:
        while not stop.is_set():
            if listener is None or listener.is_closed():
                listener = await _listen(settings.database_url, deliverer.wake)
            wait = settings.notify_poll_seconds
            try:
                while (await fan_out(pool, FANOUT_BATCH))[0] == FANOUT_BATCH:
                    pass
                await deliverer.claim()
                due_in = await deliverer.next_due_in()
                if due_in is not None:
                    wait = min(wait, max(due_in, 0.01))
            except DB_ERRORS as exc:
                log.warning("notify.round_failed", error=f"{type(exc).__name__}: {exc}")
            deliverer.wake.clear()
            waiters = [asyncio.ensure_future(e.wait()) for e in (deliverer.wake, stop)]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
    finally:
        await deliverer.drain(settings.worker_drain_seconds)
        if listener is not None:
            with contextlib.suppress(*DB_ERRORS):
                await listener.close()
        await session.close()
        if own_pool:
            await pool.close()
        log.info("notify.stopped")


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
