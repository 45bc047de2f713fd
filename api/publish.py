"""Queue work for the worker, by task name, after the transaction that needs it committed.

If Redis cannot take the message, nothing is lost: the image is marked due in Postgres and
the scheduler queues it on its next tick (SPEC §4).
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from aiohttp import web

from api.keys import CELERY, POOL, PUBLISHER
from core.queue import PRIORITY_QUEUE, SYNC_IMAGE_TASK

log = structlog.get_logger("api.publish")

# The scheduler runs a requested sync itself after this long if no worker has done it.
FALLBACK_SECONDS = 30.0

MARK_DUE_SQL = "UPDATE images SET next_sync_at = now() WHERE id = $1"


async def queue_priority_sync(app: web.Application, image_id: int) -> bool:
    """Send `sync_image` to the priority queue; on failure mark the image due. True if sent."""
    send = partial(
        app[CELERY].send_task, SYNC_IMAGE_TASK, args=[image_id], queue=PRIORITY_QUEUE, retry=False
    )
    try:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(app[PUBLISHER], send), timeout=3.0)
        return True
    except Exception as exc:  # any broker failure: Postgres still has the work
        log.warning("sync.queue_failed", image_id=image_id, error=type(exc).__name__)
        await app[POOL].execute(MARK_DUE_SQL, image_id)
        return False
