"""Events are applied in batches: all pending events in one transaction, in id order; an
event that fails takes nothing else down and is applied alone afterwards."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import redis
from aiohttp.test_utils import TestClient

from api.webhooks import store_events
from core import webhooks as wh
from core.queue import PRIORITY_QUEUE, PROCESS_EVENT_TASK
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.webhooks.conftest import Sender
from worker import inbox
from worker.runtime import Runtime

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "c" * 64


def push(repository: str, tag: str, at: datetime = T0) -> wh.WebhookEvent:
    return wh.WebhookEvent(wh.REGISTRY, unique("batch"), wh.PUSH, "registry.example.com", repository, tag,
                           DIGEST, occurred_at=at)


async def statuses(pool: asyncpg.Pool, ids: list[int]) -> list[tuple[str, int]]:
    rows = await pool.fetch("SELECT status, attempts FROM webhook_events WHERE id = ANY ($1::bigint[]) ORDER BY id",
                            ids)
    return [(r["status"], r["attempts"]) for r in rows]


async def test_a_burst_is_one_transaction_in_arrival_order(pool: asyncpg.Pool, wh_settings: Settings) -> None:
    repos = [f"{unique('burst')}/app{i}" for i in range(5)]
    images = [await insert_image(pool, name=f"registry.example.com/{r}", access_proven=True) for r in repos]
    evs = [push(repos[i % 5], f"t{i}") for i in range(100)]
    # a delete that arrives between two pushes of its tag: the later push brings it back
    evs += [wh.WebhookEvent(wh.REGISTRY, unique("batch"), wh.DELETE_TAG, "registry.example.com", repos[0], "t0",
                            occurred_at=T0 + timedelta(seconds=1)),
            push(repos[0], "t0", T0 + timedelta(seconds=2))]
    ids = await store_events(pool, evs)
    batch = await inbox.apply_pending(pool, wh_settings, ids[-1])
    assert set(ids) <= {a.event_id for a in batch.applied}  # the message of the last applied them all
    assert [a.event_id for a in batch.applied] == sorted(a.event_id for a in batch.applied)
    assert {s for s, _ in await statuses(pool, ids)} == {"done"}
    counts = await pool.fetch("SELECT image_id, count(*) FROM tags WHERE image_id = ANY ($1::bigint[])"
                              " GROUP BY image_id", images)
    assert sorted(c["count"] for c in counts) == [20] * 5
    # every other message of the burst finds its event done and applies none of them again
    again = await inbox.apply_pending(pool, wh_settings, ids[0])
    assert not set(ids) & {a.event_id for a in again.applied}


async def test_a_message_whose_event_was_applied_already_drains_the_later_ones(
    pool: asyncpg.Pool, wh_settings: Settings,
) -> None:
    # The API sends one message for the events stored while a message is on its way; that
    # message names an earlier event, which the previous message's batch may have applied.
    repo = f"{unique('drain')}/app"
    image = await insert_image(pool, name=f"registry.example.com/{repo}", access_proven=True)
    [first] = await store_events(pool, [push(repo, "a")])
    await inbox.apply_pending(pool, wh_settings, first)
    later = await store_events(pool, [push(repo, "b"), push(repo, "c")])
    batch = await inbox.apply_pending(pool, wh_settings, first)
    assert set(later) <= {a.event_id for a in batch.applied}
    assert await statuses(pool, later) == [("done", 1), ("done", 1)]
    assert sorted(r["name"] for r in await pool.fetch("SELECT name FROM tags WHERE image_id = $1", image)) == [
        "a", "b", "c"]


async def test_a_failing_event_fails_alone_and_is_then_applied_alone(
    pool: asyncpg.Pool, wh_settings: Settings, make_user: MakeUser,
) -> None:
    repo = f"{unique('poison')}/app"
    owner = await make_user()  # a build event reaches an account's image, never the catalog's
    await insert_image(pool, name=f"registry.example.com/{repo}", owner_id=owner.account.id, access_proven=True)
    broken = wh.WebhookEvent(wh.BUILD, unique("batch"), wh.BUILD_STATE, "registry.example.com", repo, "v1",
                             build_state=None, occurred_at=T0)  # no state: the tag cannot be written
    ids = await store_events(pool, [push(repo, "a"), broken, push(repo, "b")])
    batch = await inbox.apply_pending(pool, wh_settings, ids[0])
    assert batch.failed == {ids[1]}
    assert await statuses(pool, ids) == [("done", 1), ("pending", 1), ("done", 1)]
    # a new event's batch no longer takes the failed one along; its own message retries it alone
    [later] = await store_events(pool, [push(repo, "c")])
    assert [a.event_id for a in (await inbox.apply_pending(pool, wh_settings, later)).applied] == [later]
    retried = await inbox.apply_pending(pool, wh_settings, ids[1])
    assert retried.applied == [] and retried.failed == {ids[1]}
    assert (await statuses(pool, [ids[1]])) == [("pending", 2)]
    await pool.execute("UPDATE webhook_events SET status = 'failed' WHERE id = $1", ids[1])


async def test_a_burst_of_deliveries_shares_its_messages(
    wh_client: TestClient, pool: asyncpg.Pool, settings: Settings, runtime: Runtime, sender: Sender,
) -> None:
    """The receiver sends one `process_webhook_event` for the events stored while one is
    due; the worker, given only the messages sent, applies every event."""
    queue = redis.Redis.from_url(settings.redis_url)
    before = queue.llen(PRIORITY_QUEUE)
    ns = unique("notice")
    for i in range(20):
        body = {"events": [{
            "id": unique("notice-ev"), "timestamp": T0.isoformat(), "action": "push",
            "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "digest": DIGEST, "repository": f"{ns}/app", "tag": f"t{i}"},
            "request": {"host": "registry.example.com"}}]}
        assert (await sender.post(wh_client, wh.REGISTRY, body)).status == 202
    await asyncio.sleep(0.1)  # the last message is due NOTICE_DELAY_SECONDS after the last event
    raw = queue.lrange(PRIORITY_QUEUE, 0, queue.llen(PRIORITY_QUEUE) - before - 1)
    sent = [orjson.loads(base64.b64decode(m["body"]))[0][0] for m in map(orjson.loads, raw)
            if m["headers"]["task"] == PROCESS_EVENT_TASK]
    assert 1 <= len(sent) < 20
    for event_id in reversed(sent):  # the worker takes them oldest first
        await inbox.process_event(runtime, event_id)
    assert await pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE repository = $1 AND status = 'pending'", f"{ns}/app") == 0
