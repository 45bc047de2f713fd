"""The scheduler's singleton lock: a Postgres session advisory lock on a connection of its own.

The lock lives as long as its connection: Postgres releases it when the session ends (a
restart, a killed backend, a network cut). So the connection is watched: asyncpg calls
a termination listener the moment the socket closes, and the active scheduler also checks
before every tick that its session still holds the lock. A scheduler that loses the lock
stops being active at once and goes back to standby; a standby (or a scheduler whose
database is down) keeps trying to connect and to take the lock, and never dies of it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

log = structlog.get_logger("worker.beat")

# What "Postgres is unreachable or its connection broke" looks like from asyncpg
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
CHECK_TIMEOUT = 5.0

HOLDS_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                  AND classid = 0 AND objid = $1 AND objsubid = 1)
"""


class SingletonLock:
    def __init__(self, dsn: str, key: int, *, retry_seconds: float = 1.0) -> None:
        self.dsn = dsn
        self.key = key
        self.retry_seconds = retry_seconds
        self.lost = asyncio.Event()  # set when the held lock's connection goes away
        self._conn: asyncpg.Connection | None = None
        self._standby_reason: str | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lock (True) or `stop` is set (False). Survives
        any database outage; logs each change of reason for waiting once."""
        while not stop.is_set():
            reason = await self._try()
            if reason is None:
                self._standby_reason = None
                return True
            if reason != self._standby_reason:
                log.info("beat.standby", reason=reason)
                self._standby_reason = reason
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.retry_seconds)
            except TimeoutError:
                pass
        return False

    async def _try(self) -> str | None:
        """None when the lock is now held, else why not."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn, timeout=CHECK_TIMEOUT)
            got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key, timeout=CHECK_TIMEOUT)
        except DB_ERRORS as exc:
            await self._drop()
            return f"database unreachable ({type(exc).__name__})"
        if not got:
            return "another scheduler holds the lock"
        self.lost.clear()
        self._conn.add_termination_listener(self._on_termination)
        return None

    def _on_termination(self, _: asyncpg.Connection) -> None:
        self.lost.set()

    async def held(self) -> bool:
        """Whether this session still holds the lock (False on any doubt)."""
        if self.lost.is_set() or self._conn is None or self._conn.is_closed():
            return False
        try:
            return bool(await self._conn.fetchval(HOLDS_SQL, self.key, timeout=CHECK_TIMEOUT))
        except DB_ERRORS:
            return False

    async def release(self) -> None:
        """Give the lock up (if the connection still works) and close the connection."""
        conn = self._conn
        if conn is not None and not conn.is_closed() and not self.lost.is_set():
            conn.remove_termination_listener(self._on_termination)
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", self.key, timeout=CHECK_TIMEOUT)
            except DB_ERRORS:
                pass
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_termination)
        if not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), CHECK_TIMEOUT)
            except DB_ERRORS:
                conn.terminate()
