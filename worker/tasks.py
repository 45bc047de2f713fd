"""Thin Celery tasks: take ids, hand the service coroutine to the process's event loop
(worker/dispatch.py) and return; the message is acknowledged once the work has started."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
import structlog
from celery import Celery, Task
from celery.exceptions import Reject

from core.queue import (
    INSPECT_HUB_IMAGE_TASK,
    POLL_BUILDS_TASK,
    PROCESS_EVENT_TASK,
    SYNC_BATCH_TASK,
    SYNC_IMAGE_TASK,
)
from worker import hub_lookup, inbox, quay_builds, sync
from worker.dispatch import Dispatcher, Release, ShuttingDownError
from worker.runtime import Runtime

T = TypeVar("T")
log = structlog.get_logger("worker.tasks")

STARTED = "started"  # what a task returns: its work runs on after the message is acknowledged


async def _with_task_id(task_id: str | None, work: Awaitable[T]) -> T:
    # Bound inside the coroutine: it runs as an asyncio task on the loop thread, whose context
    # is its own (a binding made in the Celery thread would not reach its log lines), and the
    # tasks it gathers inherit it.
    structlog.contextvars.bind_contextvars(task_id=task_id)
    return await work


RELEASE_CLAIMS_SQL = """
UPDATE images SET lease_owner = NULL, lease_until = NULL WHERE id = ANY ($1::bigint[]) AND lease_owner = $2
"""
# The batch's images whose syncs have not taken their run lease yet (they still hold the claim).
KEEP_CLAIMS_SQL = """
UPDATE images SET lease_until = now() + make_interval(secs => $3) WHERE id = ANY ($1::bigint[]) AND lease_owner = $2
"""


async def _keep_claims(rt: Runtime, image_ids: Sequence[int], claim: str) -> None:
    """Renew the claims of a batch this process holds until every sync took its run lease.
    Beat renews a claim only while its message waits in the queue; once a worker took the
    message, a sync still waiting for a database connection (a busy process) must not let
    the claim lapse, or beat would claim and queue the image again."""
    lease = rt.settings.lease_seconds
    while True:
        await asyncio.sleep(lease / 3)
        try:
            await rt.pool.execute(KEEP_CLAIMS_SQL, list(image_ids), claim, lease)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # tried again next turn
            log.warning("batch.claims_not_renewed", error=type(exc).__name__)


async def sync_batch(rt: Runtime, image_ids: Sequence[int], claim: str, release: Release) -> dict[str, int]:
    """Sync a routine batch concurrently, giving back one unit of the process's capacity as
    each image's sync ends. Cancelled (SIGTERM past the drain time): the claims of the images
    not started yet are released, so they are due again at once. Counts by outcome."""

    async def one(image_id: int) -> str:
        try:
            return await sync.sync_image(rt, image_id, claim)
        finally:
            release()

    keeper = asyncio.create_task(_keep_claims(rt, image_ids, claim))
    try:
        outcomes = await asyncio.gather(*(one(i) for i in image_ids), return_exceptions=True)
    except asyncio.CancelledError:
        await asyncio.shield(rt.pool.execute(RELEASE_CLAIMS_SQL, list(image_ids), claim))
        raise
    finally:
        keeper.cancel()
    counts = _counted(image_ids, outcomes, "sync.crashed")
    log.info("batch.done", images=len(image_ids), **counts)
    return counts


def _counted(image_ids: Sequence[int], outcomes: Sequence[object], crashed: str) -> dict[str, int]:
    """Outcomes by name; an error is logged as `crashed` and counted as "crashed"; a
    cancellation is raised again."""
    counts: dict[str, int] = {}
    for image_id, o in zip(image_ids, outcomes, strict=True):
        if isinstance(o, asyncio.CancelledError):
            raise o
        if isinstance(o, BaseException):
            log.error(crashed, image_id=image_id, exc_info=o)
            o = "crashed"
        counts[str(o)] = counts.get(str(o), 0) + 1
    return counts


async def poll_builds(rt: Runtime, image_ids: Sequence[int], claim: str, release: Release) -> dict[str, int]:
    """Read the builds of a batch of images whose builds are due (worker/quay_builds.py), each
    followed by a sync when one of its builds newly completed; gives back one unit of capacity
    as each image is done. Counts by outcome."""

    async def one(image_id: int) -> str:
        try:
            polled = await quay_builds.poll(rt, image_id, claim)
            if polled.completed:  # a priority sync now, rather than the scheduler's next round
                await sync.sync_image(rt, image_id)
            return polled.outcome
        finally:
            release()

    outcomes = await asyncio.gather(*(one(i) for i in image_ids), return_exceptions=True)
    return _counted(image_ids, outcomes, "builds.poll_crashed")


def register_tasks(app: Celery, runtime: Runtime, dispatcher: Dispatcher) -> None:
    """Bind the task implementations to `app`, all sharing this process's runtime and
    capacity. Every log line of a task's work carries its `task_id`."""

    def start(task: Task, units: int, work: Callable[[Release], Awaitable[object]]) -> str:
        task_id = task.request.id
        try:
            dispatcher.start(units, lambda release: _with_task_id(task_id, work(release)))
        except ShuttingDownError:
            raise Reject("the worker is shutting down", requeue=True) from None
        return STARTED

    @app.task(name=SYNC_IMAGE_TASK, bind=True)
    def sync_image(task: Task, image_id: int) -> str:
        return start(task, 1, lambda _: sync.sync_image(runtime, int(image_id)))

    @app.task(name=SYNC_BATCH_TASK, bind=True)
    def sync_images(task: Task, image_ids: list[int], claim: str) -> str:
        ids = [int(i) for i in image_ids]
        return start(task, len(ids), lambda release: sync_batch(runtime, ids, str(claim), release))

    @app.task(name=POLL_BUILDS_TASK, bind=True)
    def poll_builds_task(task: Task, image_ids: list[int], claim: str) -> str:
        ids = [int(i) for i in image_ids]
        return start(task, len(ids), lambda release: poll_builds(runtime, ids, str(claim), release))

    @app.task(name=PROCESS_EVENT_TASK, bind=True)
    def process_webhook_event(task: Task, event_id: int) -> str:
        return start(task, 1, lambda _: inbox.process_event(runtime, int(event_id)))

    @app.task(name=INSPECT_HUB_IMAGE_TASK, bind=True)
    def inspect_hub_image(task: Task, name: str) -> str:
        return start(task, 1, lambda _: hub_lookup.inspect_and_sync(runtime, str(name)))

