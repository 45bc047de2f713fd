"""Thin Celery tasks: take ids, run the sync service on the process's runtime."""

from __future__ import annotations

import structlog
from celery import Celery, Task

from core.queue import INSPECT_HUB_IMAGE_TASK, PROCESS_EVENT_TASK, SYNC_BATCH_TASK, SYNC_IMAGE_TASK
from worker import events, inspect, sync
from worker.runtime import LoopThread, Runtime

log = structlog.get_logger("worker.tasks")


def register_tasks(app: Celery, runtime: Runtime, loop: LoopThread) -> None:
    """Bind the task implementations to `app`, all sharing this process's runtime."""

    @app.task(name=SYNC_IMAGE_TASK, bind=True)
    def sync_image(task: Task, image_id: int) -> str:
        structlog.contextvars.bind_contextvars(task_id=task.request.id)
        try:
            return loop.run(sync.sync_image(runtime, int(image_id)))
        finally:
            structlog.contextvars.unbind_contextvars("task_id")

    @app.task(name=SYNC_BATCH_TASK, bind=True)
    def sync_images(task: Task, image_ids: list[int], claim: str) -> dict[str, int]:
        structlog.contextvars.bind_contextvars(task_id=task.request.id)
        try:
            counts = loop.run(sync.sync_many(runtime, [int(i) for i in image_ids], claim))
            log.info("batch.done", images=len(image_ids), **counts)
            return counts
        finally:
            structlog.contextvars.unbind_contextvars("task_id")

    @app.task(name=PROCESS_EVENT_TASK, bind=True)
    def process_webhook_event(task: Task, event_id: int) -> str:
        structlog.contextvars.bind_contextvars(task_id=task.request.id)
        try:
            return loop.run(events.process_event(runtime, int(event_id)))
        finally:
            structlog.contextvars.unbind_contextvars("task_id")

    @app.task(name=INSPECT_HUB_IMAGE_TASK, bind=True)
    def inspect_hub_image(task: Task, name: str) -> str:
        structlog.contextvars.bind_contextvars(task_id=task.request.id)
        try:
            return loop.run(inspect.inspect_and_sync(runtime, str(name)))
        finally:
            structlog.contextvars.unbind_contextvars("task_id")
