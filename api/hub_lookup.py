"""Inspect-on-GET (SPEC §1 Public images): `GET /api/v1/image/<hub name>/` for a Docker Hub
name the catalog does not have yet.

The API does no registry I/O (the registry client is the worker's): it records the request
in `hub_inspections`, sends the priority task `inspect_hub_image(name)` by name, and waits,
at most INSPECT_TIMEOUT_SECONDS, for the worker's outcome in the same table. The worker
writes the outcome (and, when found, the catalog image with its tags) in one transaction
that NOTIFYs `registry_sync_inspect`; the process's events connection wakes the waiting
requests (api/stream.py), with a poll as a fallback for a missed notification.

- found   → the image, as the caller sees it (its tags; state Empty until the sync, which
            the worker runs at once)
- missing → 404, remembered for MISSING_TTL seconds so repeated GETs do not ask the hub again
- failed, or no answer in time → 503 with Retry-After (the next GET asks again)
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from aiohttp import web

from api import queries
from api.errors import UnavailableError
from api.keys import POOL, SETTINGS
from api.publish import send_tasks
from api.stream import EVENT_HUB
from core.names import ImageName
from core.queue import INSPECT_HUB_IMAGE_TASK

log = structlog.get_logger("api.hub_lookup")

MISSING_TTL = 300.0  # a name the hub does not have is looked up again after this long
FAILED_TTL = 5.0  # after a failed lookup, GETs within this long answer 503 without asking
POLL_EVERY = 0.5

# Exactly one of several concurrent GETs of a new name gets a row back and sends the task
# (the upsert's WHERE is evaluated under the row lock); the others wait for its outcome.
REQUEST_SQL = """
INSERT INTO hub_inspections AS h (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE
   SET requested_at = now(), finished_at = NULL, outcome = NULL, error = NULL
 WHERE (h.outcome IS NULL AND h.requested_at < now() - make_interval(secs => $2))
    OR (h.outcome = 'missing' AND h.finished_at < now() - make_interval(secs => $3))
    OR (h.outcome = 'failed' AND h.finished_at < now() - make_interval(secs => $4))
    OR h.outcome = 'found'
RETURNING true
"""

STATUS_SQL = "SELECT outcome, error FROM hub_inspections WHERE name = $1"

QUEUE_FAILED_SQL = """
UPDATE hub_inspections SET outcome = 'failed', finished_at = now(), error = $2
 WHERE name = $1 AND outcome IS NULL
"""


async def _send(app: web.Application, name: str, priority: int) -> None:
    if not await send_tasks(app, INSPECT_HUB_IMAGE_TASK, [[name]], priority=priority):
        # nobody will answer this lookup
        await app[POOL].execute(QUEUE_FAILED_SQL, name, "the task queue is unavailable")
        raise UnavailableError(
            "cannot look the image up on Docker Hub right now (the task queue is unavailable)",
            headers={"Retry-After": "5"},
        )


async def inspect_hub_image(app: web.Application, account_id: int, name: ImageName,
                            priority: int = 0) -> asyncpg.Record | None:
    """The image after looking `name` up on Docker Hub, as `account_id` sees it; None when the
    hub does not have it. Raises UnavailableError when the lookup failed or took too long.
    `priority`: the lane of the look-up task (api/account_limits.py)."""
    pool = app[POOL]
    timeout = app[SETTINGS].inspect_timeout_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with app[EVENT_HUB].inspection(name.name) as woken:
        # The worker's own timeout is the same, so a request older than twice that is lost.
        if await pool.fetchval(REQUEST_SQL, name.name, 2 * timeout, MISSING_TTL, FAILED_TTL):
            log.info("inspect.requested", image=name.name)
            await _send(app, name.name, priority)
        while True:
            image = await queries.get_image(pool, account_id, name.name)
            if image is not None:
                return image
            status = await pool.fetchrow(STATUS_SQL, name.name)
            outcome = status["outcome"] if status else None
            if outcome == "found":
                # committed between the two reads above; None only if deleted since
                return await queries.get_image(pool, account_id, name.name)
            if outcome == "missing":
                return None
            if outcome == "failed":
                raise UnavailableError(
                    "Docker Hub did not answer the lookup of this image; try again shortly",
                    headers={"Retry-After": str(int(FAILED_TTL))},
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UnavailableError(
                    f"the lookup of this image on Docker Hub takes longer than {timeout:g} s; "
                    "try again shortly",
                    headers={"Retry-After": "2"},
                )
            if woken.done():
                await asyncio.sleep(min(POLL_EVERY, remaining))
            else:
                await asyncio.wait({woken}, timeout=min(POLL_EVERY, remaining))
