"""When the API last served each shared-catalog image, for the adaptive schedule
(worker/schedule.py: catalog images nobody reads are polled rarely). The first read of a
catalog image that was never synced (loaded with next_sync_at 'infinity': core/catalog.py)
makes it due: catalog images are synced lazily, when someone wants them.

A GET never writes: it adds the image's id to this process's set, and a background task
writes the set every READ_MARK_FLUSH_SECONDS in one UPDATE (which also skips rows marked
within the hour, so a hot image costs one row version per hour, not one per request). A
mark lost in a crash costs nothing but an image polled a little less often for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from api.keys import POOL, SETTINGS

log = structlog.get_logger("api.read_marks")

MARK_READ_SQL = """
UPDATE images SET read_at = now(),
                  next_sync_at = CASE WHEN next_sync_at = 'infinity' THEN now() ELSE next_sync_at END
 WHERE id = ANY ($1::bigint[]) AND (read_at IS NULL OR read_at < now() - interval '1 hour')
"""


class ReadMarks:
    def __init__(self) -> None:
        self._ids: set[int] = set()

    def add(self, image_id: int) -> None:
        self._ids.add(image_id)

    async def flush(self, pool: asyncpg.Pool) -> int:
        """Write the marks gathered so far; on failure they are kept for the next flush."""
        if not self._ids:
            return 0
        ids, self._ids = self._ids, set()
        try:
            await pool.execute(MARK_READ_SQL, list(ids))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._ids |= ids
            log.warning("read_marks.flush_failed", error=type(exc).__name__, images=len(ids))
            return 0
        return len(ids)


READ_MARKS = web.AppKey("read_marks", ReadMarks)


def mark(app: web.Application, image: Mapping[str, Any]) -> None:
    """Note that `image` was served (only catalog images' reads matter)."""
    if image["owner_id"] is None and READ_MARKS in app:
        app[READ_MARKS].add(image["id"])


async def keep(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the marks and the task that flushes them."""
    marks = app[READ_MARKS] = ReadMarks()
    every = app[SETTINGS].read_mark_flush_seconds

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(every)
            await marks.flush(app[POOL])

    task = asyncio.create_task(flush_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await marks.flush(app[POOL])
