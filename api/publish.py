"""The one place the API sends Celery messages: by task name, after the transaction that
needs them committed, from one publisher thread with one timeout.

A send that fails (Redis down) loses nothing, because each caller's work is also in Postgres:
a requested sync is marked due and the scheduler queues it; a webhook event stays pending
and the scheduler's sweep queues it; a Docker Hub lookup is answered 503 and asked again.
After a failure, sends are skipped for BROKER_PAUSE_SECONDS, so requests are answered at
once instead of each waiting SEND_TIMEOUT_SECONDS for a broker that is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from api.keys import CELERY, POOL, PUBLISHER, SETTINGS
from core.queue import PRIORITY_QUEUE, SYNC_IMAGE_TASK, make_celery

log = structlog.get_logger("api.publish")

SEND_TIMEOUT_SECONDS = 3.0
BROKER_PAUSE_SECONDS = 5.0
# The scheduler runs a requested sync itself after this long if no worker has done it.
FALLBACK_SECONDS = 30.0

MARK_DUE_SQL = "UPDATE images SET next_sync_at = now() WHERE id = $1"


@dataclass
class Outbox:
    """Per app: sends in flight after their answer (awaited on shutdown), the broker pause."""

    paused_until: float = 0.0
    tasks: set[asyncio.Task[bool]] = field(default_factory=set)


OUTBOX = web.AppKey("outbox", Outbox)


async def broker(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the Celery producer and its publisher thread (no I/O until a send)."""
    app[CELERY] = make_celery(app[SETTINGS], name="registry-sync-api")
    app[CELERY].conf.broker_connection_timeout = 2.0
    # Celery's producer is blocking; one thread keeps publishes off the event loop and ordered.
    app[PUBLISHER] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")
    app[OUTBOX] = Outbox()
    yield
    pending = list(app[OUTBOX].tasks)
    if pending:  # let in-flight sends finish before the broker connection closes
        await asyncio.wait(pending, timeout=SEND_TIMEOUT_SECONDS + 1)
    app[PUBLISHER].shutdown(wait=True)
    app[CELERY].close()


async def send_tasks(
    app: web.Application, task: str, args_list: Sequence[list[Any]], *, queue: str = PRIORITY_QUEUE,
    priority: int = 0,
) -> bool:
    """Send `task` once per argument list, in the lane `priority` of the queue (core/queue.py
    LANES; api/account_limits.py picks it). True when the broker took every message; False
    when it failed (logged once, and sends pause) or is paused: the caller's fallback runs."""
    outbox = app[OUTBOX]
    if not args_list:
        return True
    if outbox.paused_until > time.monotonic():
        return False
    celery = app[CELERY]

    lane = {"priority": priority} if priority else {}

    def send_all() -> None:
        for args in args_list:
            celery.send_task(task, args=args, queue=queue, retry=False, **lane)

    try:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(app[PUBLISHER], send_all), SEND_TIMEOUT_SECONDS)
        return True
    except Exception as exc:  # any broker failure: Postgres still has the work
        outbox.paused_until = time.monotonic() + BROKER_PAUSE_SECONDS
        log.warning("queue.send_failed", task=task, messages=len(args_list), error=type(exc).__name__)
        return False


def send_tasks_later(
    app: web.Application, task: str, args_list: Sequence[list[Any]], *, queue: str = PRIORITY_QUEUE
) -> None:
    """send_tasks after the caller has answered (the request does not wait for the broker)."""
    if not args_list or app[OUTBOX].paused_until > time.monotonic():
        return
    outbox = app[OUTBOX]
    pending = asyncio.get_running_loop().create_task(send_tasks(app, task, args_list, queue=queue))
    outbox.tasks.add(pending)
    pending.add_done_callback(outbox.tasks.discard)


async def queue_priority_sync(app: web.Application, image_id: int, *, priority: int = 0) -> bool:
    """Send `sync_image` to the priority queue, in the lane `priority` (what
    api/account_limits.py admit_account_action returned); when that fails, mark the image due
    so the scheduler queues it. True if sent."""
    if await send_tasks(app, SYNC_IMAGE_TASK, [[image_id]], priority=priority):
        return True
    await app[POOL].execute(MARK_DUE_SQL, image_id)
    return False
