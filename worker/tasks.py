"""Thin Celery tasks: take ids, run the sync service on the process's runtime."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog
from celery import Celery, Task

from core.queue import INSPECT_HUB_IMAGE_TASK, PROCESS_EVENT_TASK, SYNC_BATCH_TASK, SYNC_IMAGE_TASK
from worker import hub_lookup, inbox, sync
from worker.runtime import LoopThread, Runtime

T = TypeVar("T")
log = structlog.get_logger("worker.tasks")


async def _with_task_id(task_id: str | None, work: Awaitable[T]) -> T:
    # Bound inside the coroutine: it runs as an asyncio task on the loop thread, whose context
    # is its own (a binding made in the Celery thread would not reach its log lines), and the
    # tasks it gathers inherit it.
    structlog.contextvars.bind_contextvars(task_id=task_id)
    return await work


def register_tasks(app: Celery, runtime: Runtime, loop: LoopThread) -> None:
    """Bind the task implementations to `app`, all sharing this process's runtime. Every log
    line of a task's work carries its `task_id`."""

    def run(task: Task, work: Awaitable[T]) -> T:
        return loop.run(_with_task_id(task.request.id, work))

    @app.task(name=SYNC_IMAGE_TASK, bind=True)
    def sync_image(task: Task, image_id: int) -> str:
        return run(task, sync.sync_image(runtime, int(image_id)))

    @app.task(name=SYNC_BATCH_TASK, bind=True)
    def sync_images(task: Task, image_ids: list[int], claim: str) -> dict[str, int]:
        counts = run(task, sync.sync_many(runtime, [int(i) for i in image_ids], claim))
        log.info("batch.done", task_id=task.request.id, images=len(image_ids), **counts)
        return counts

    @app.task(name=PROCESS_EVENT_TASK, bind=True)
    def process_webhook_event(task: Task, event_id: int) -> str:
        return run(task, inbox.process_event(runtime, int(event_id)))

    @app.task(name=INSPECT_HUB_IMAGE_TASK, bind=True)
    def inspect_hub_image(task: Task, name: str) -> str:
        return run(task, hub_lookup.inspect_and_sync(runtime, str(name)))
