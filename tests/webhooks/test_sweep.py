"""The sweep with a backlog in the priority queue: messages nobody consumes. Each re-send of a
pending event waits twice as long as the one before, so the queue grows by a few messages
per event, not by one every few seconds; processed events are purged after the retention."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter

import asyncpg
import redis

from api.webhooks import store_events
from core import webhooks as wh
from core.queue import PRIORITY_QUEUE, SYNC_IMAGE_TASK, make_celery
from core.settings import Settings
from tests.conftest import unique
from tests.support.services import redis_db
from worker import scheduler, sweep

EVENTS = 20
AFTER = 0.1  # the first re-send's wait, scaled down from 5 s
SECONDS = 3.0


async def test_a_backlog_in_the_queue_does_not_breed_duplicates(
    pool: asyncpg.Pool, settings: Settings, redis_server_url: str,
) -> None:
    redis_url = f"{redis_server_url}/{redis_db('spare')}"
    queue = redis.Redis.from_url(redis_url)
    queue.flushdb()
    here = dataclasses.replace(settings, redis_url=redis_url)
    send = scheduler.celery_sender(here)  # the scheduler's: webhook events go to the priority queue
    producer = make_celery(here, name="backlog")
    for i in range(100):  # the backlog: priority work queued before, no consumer running
        producer.send_task(SYNC_IMAGE_TASK, args=[i], queue=PRIORITY_QUEUE)
    name = f"registry.example.com/{unique('sweep')}/app"
    evs = [wh.WebhookEvent(wh.REGISTRY, unique("sweep-ev"), wh.PUSH, "registry.example.com",
                           name.split("/", 1)[1], f"t{i}", "sha256:" + "a" * 64) for i in range(EVENTS)]
    ours = set(await store_events(pool, evs))
    for event_id in sorted(ours):  # what the API sends after storing them
        send("process_webhook_event", [event_id])
    sent: Counter[int] = Counter()  # every re-send (other tests may have left events pending)

    def counting(task: str, args: list) -> None:
        sent[args[0]] += 1
        send(task, args)

    start = time.monotonic()
    halfway: int | None = None
    while (elapsed := time.monotonic() - start) < SECONDS:
        await sweep.sweep_events(pool, counting, after=AFTER)
        if halfway is None and elapsed >= SECONDS / 2:
            halfway = sum(sent.values())
        await asyncio.sleep(0.02)
    # re-sends of one event at AFTER·(1, 3, 7, 15, …): at most log2(SECONDS/AFTER + 1) of them;
    # the old fixed wait would have re-sent each event SECONDS/AFTER = 30 times
    bound = math.ceil(math.log2(SECONDS / AFTER + 1))
    assert ours <= set(sent) and max(sent.values()) <= bound, sent
    assert halfway is not None and sum(sent.values()) - halfway <= len(sent)  # slowing down
    assert queue.llen(PRIORITY_QUEUE) == 100 + EVENTS + sum(sent.values())
    assert await pool.fetchval(
        "SELECT max(sweeps) FROM webhook_events WHERE id = ANY ($1::bigint[])", list(ours)) <= bound
    await pool.execute("UPDATE webhook_events SET status = 'done' WHERE id = ANY ($1::bigint[])", list(ours))
