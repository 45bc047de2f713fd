"""503 while Postgres is unreachable (SPEC §6), one log line when an outage starts and one
when it ends, and recovery without a restart.

A request that fails because the database cannot be reached is answered 503 with
Retry-After (api/errors.py) and reported here. The first report starts a probe that runs
`SELECT 1` every PROBE_EVERY seconds: if the first probe fails, the outage is logged
(`database.unavailable`) and, until a probe succeeds, API requests are answered 503 at once
instead of each waiting for a connection attempt; the probe that succeeds logs
`database.available` with the outage's length and the number of refused requests. A single
failed request whose probe succeeds at once is logged as `database.request_errors`. During a
known outage, asyncpg's own warning with a traceback each time its pool fails to reconnect
is dropped: it would repeat every second and say nothing new.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import ClientConnectionResetError, web

from api.keys import POOL

log = structlog.get_logger("api.outage")

PROBE_EVERY = 1.0
PROBE_TIMEOUT = 2.0
RETRY_AFTER_SECONDS = 2

_UNAVAILABLE = (
    ConnectionError,  # refused, reset while connecting (a server shutting down), aborted
    socket.gaierror,  # its name does not resolve
    TimeoutError,  # connecting (or a pool acquire) takes too long
    asyncpg.PostgresConnectionError,  # the connection broke or was refused (class 08)
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # a connection the server dropped mid-query can be handed out once more before asyncpg
    # notices ("another operation is in progress"); the probe tells an outage from a bug
    asyncpg.InternalClientError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached (rather than a bug or bad data)."""
    if isinstance(exc, ClientConnectionResetError):
        return False  # our own client went away: not the database
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


class DatabaseWatch(logging.Filter):
    """The outage state of one app; also a filter of the `asyncpg.pool` logger."""

    def __init__(self) -> None:
        super().__init__()
        self.down_since: float | None = None
        self.refused = 0
        self._error = ""
        self._probe: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, app: web.Application, exc: BaseException | None = None) -> None:
        """A request was refused because of the database; start the probe if it is not running."""
        self.refused += 1
        if exc is not None and not self._error:
            self._error = type(exc).__name__
        if self._probe is None or self._probe.done():
            # a context of its own: the probe's lines are not the request's
            self._probe = asyncio.get_running_loop().create_task(
                self._watch(app[POOL]), context=contextvars.Context()
            )

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.down and record.levelno < logging.ERROR)

    async def _watch(self, pool: asyncpg.Pool) -> None:
        while True:
            try:
                await pool.fetchval("SELECT 1", timeout=PROBE_TIMEOUT)
            except Exception as exc:  # the database still cannot be reached
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    log.warning("database.unavailable", error=self._error or type(exc).__name__)
                await asyncio.sleep(PROBE_EVERY)
                continue
            if self.down_since is not None:
                log.info(
                    "database.available", down_seconds=round(time.monotonic() - self.down_since, 1),
                    refused=self.refused,
                )
            else:
                log.warning("database.request_errors", refused=self.refused, error=self._error)
            self.down_since, self.refused, self._error = None, 0, ""
            return

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)


DATABASE_WATCH = web.AppKey("database_watch", DatabaseWatch)


async def watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the probe ends with the app."""
    watch = app[DATABASE_WATCH] = DatabaseWatch()
    pool_logger = logging.getLogger("asyncpg.pool")
    pool_logger.addFilter(watch)
    yield
    pool_logger.removeFilter(watch)
    await watch.stop()


def unavailable_body() -> tuple[str, dict[str, str]]:
    return (
        "the database is unreachable; try again shortly",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
