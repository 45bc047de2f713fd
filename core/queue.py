"""The Celery app, its queues and task names: the contract between the API and the worker.

The API only *sends* tasks by name (it never imports worker code); the worker registers
the implementations on the same app configuration.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from core.settings import Settings

PRIORITY_QUEUE = "priority"  # registrations, webhooks, user-requested syncs
ROUTINE_QUEUE = "routine"  # scheduled polling
QUEUES = (PRIORITY_QUEUE, ROUTINE_QUEUE)

SYNC_IMAGE_TASK = "sync_image"  # args: image_id; priority
SYNC_BATCH_TASK = "sync_images"  # args: [image_id, ...], claim token; routine
PROCESS_EVENT_TASK = "process_webhook_event"  # args: event_id
INSPECT_HUB_IMAGE_TASK = "inspect_hub_image"  # args: image name; priority (a GET waits)
POLL_BUILDS_TASK = "poll_builds"  # args: [image_id, ...], claim token; priority (a build runs)

# Lanes of the priority queue: Celery message priorities, which kombu's Redis transport keeps
# in one list per step (`priority`, then `priority\x06\x163`, …) and consumers empty in
# order, step 0 first. What an account asks for beyond its first few requests of a window
# (api/account_limits.py counts them) goes in a later lane, behind every other account's
# first requests: 300 registrations of one account never queue ahead of another's one.
LANES = (0, 3, 6, 9)
_LANE_UPTO = ((10, 0), (100, 3), (1000, 6))  # requests in the window -> lane
_LANE_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep


def lane_for(count: int) -> int:
    """The lane (message priority) of an account's `count`-th request of the window."""
    return next((lane for upto, lane in _LANE_UPTO if count <= upto), LANES[-1])


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s messages, one per lane (for its depth)."""
    return [queue, *(f"{queue}{_LANE_SEP}{lane}" for lane in LANES[1:])]


def make_celery(settings: Settings, name: str = "registry-sync") -> Celery:
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_default_queue=ROUTINE_QUEUE,
        task_routes={
            SYNC_IMAGE_TASK: {"queue": PRIORITY_QUEUE},
            PROCESS_EVENT_TASK: {"queue": PRIORITY_QUEUE},
            INSPECT_HUB_IMAGE_TASK: {"queue": PRIORITY_QUEUE},
            POLL_BUILDS_TASK: {"queue": PRIORITY_QUEUE},
            SYNC_BATCH_TASK: {"queue": ROUTINE_QUEUE},
        },
        # Long I/O work: ack after the task ran, take one message at a time per consumer,
        # so a killed worker's message is redelivered and no process hoards a backlog.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # A consumer waits for Redis at start-up for as long as it takes; one that loses Redis
        # later exits instead of reconnecting in place, and `registry-sync worker` starts it
        # afresh (worker/main.py): threads-pool consumers can go silent after an in-place
        # reconnect. Postgres leases make the restart lose nothing.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_retry=False,
        # Postgres, not the broker, is the source of truth for due work (SPEC §4): a message
        # lost with Redis is found again by the scheduler, so a short redelivery window is fine.
        broker_transport_options={"visibility_timeout": 600},
        broker_pool_limit=4,
    )
    return app
