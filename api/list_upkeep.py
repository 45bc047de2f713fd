"""Keeps the name buckets of the lists small (schema.sql, "Lists at scale").

A deep `offset` skips the rows before it inside one bucket, so a bucket that grows past
2 x LIST_BUCKET_SIZE names is split every LIST_UPKEEP_SECONDS by `list_buckets_split`. The
split waits for writers of images in flight (it takes the bucket boundaries exclusively), so
it gives up after a short lock timeout and tries again on the next round; several API
processes may run it, one at a time. Nothing else depends on it: counts and pages stay exact
whatever the bucket sizes, only deep offsets get slower while a bucket is large.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from api.keys import POOL, SETTINGS

log = structlog.get_logger("api.list_upkeep")

SPLIT_SQL = "SELECT list_buckets_split($1)"


async def split_buckets(pool: asyncpg.Pool, size: int, lock_timeout: float = 2.0) -> int:
    """Split the buckets past 2 x `size`; returns the buckets added (0 when it had to wait)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}")
        try:
            added: int = await conn.fetchval(SPLIT_SQL, size)
        except asyncpg.LockNotAvailableError:
            return 0
    return added


async def _loop(pool: asyncpg.Pool, size: int, every: float) -> None:
    while True:
        # jittered, so the API processes started together do not all try at once
        await asyncio.sleep(every * random.uniform(0.5, 1.5))  # noqa: S311 - not security
        try:
            added = await split_buckets(pool, size)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("lists.split_failed", error=type(exc).__name__)
            continue
        if added:
            log.info("lists.buckets_split", added=added)


async def bucket_upkeep(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the periodic split (off with LIST_UPKEEP_SECONDS=0)."""
    s = app[SETTINGS]
    task = None
    if s.list_upkeep_seconds > 0:
        task = asyncio.create_task(_loop(app[POOL], s.list_bucket_size, s.list_upkeep_seconds),
                                   name="list-upkeep")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
