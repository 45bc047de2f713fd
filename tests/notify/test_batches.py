"""Delivery in batches (worker/deliverer.py, worker/delivery_log.py, worker/fanout.py): many
subscriptions claimed and logged per statement, yet each subscription's deliveries arrive in
order; a deliverer killed mid-run loses nothing; NOTIFY_PROCESSES deliverers share the work;
concurrent fan-outs make each delivery once; endpoints on one host share no cookies."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient
from yarl import URL

from core.settings import Settings
from tests.conftest import MakeUser, User, insert_image
from tests.notify.conftest import Receiver, eventually, fanned_out, running_deliverer, subscribe
from tests.support.processes import Service, wait_for
from worker.fanout import fan_out


def _digest(i: int) -> str:
    return f"sha256:{i:064x}"


async def _own_image(pool: asyncpg.Pool, user: User) -> int:
    image_id = await insert_image(pool, owner_id=user.account.id, access_proven=True)
    await pool.execute("INSERT INTO tags (image_id, name, state, manifest_digest) VALUES ($1, 'v1', 'Success', $2)",
                       image_id, _digest(0))
    return image_id


async def _move(pool: asyncpg.Pool, image_id: int, i: int) -> None:
    """One change, committed on its own: its `tag.moved` goes to the outbox with it."""
    await pool.execute("UPDATE tags SET manifest_digest = $2 WHERE image_id = $1 AND name = 'v1'", image_id, _digest(i))


async def _all_delivered(pool: asyncpg.Pool, sub_ids: list[int], n: int) -> bool:
    done = await pool.fetchval("SELECT count(*) FROM notification_deliveries WHERE subscription_id = ANY ($1)"
                               " AND status = 'delivered'", sub_ids)
    return int(done) == n


def _env(s: Settings) -> dict[str, str]:
    """The environment of a `registry-sync worker` that delivers like the in-test deliverers."""
    return {"DATABASE_URL": s.database_url, "REDIS_URL": s.redis_url, "SECRET_KEY": s.secret_key,
            "ALLOW_PRIVATE_REGISTRIES": "1", "NOTIFY_RETRY_SCHEDULE": s.notify_retry_schedule,
            "NOTIFY_RETRY_JITTER": "0", "NOTIFY_POLL_SECONDS": "0.05", "LOG_FORMAT": "json", "LOG_LEVEL": "info"}


async def _async(value: Any) -> Any:
    return value


def _first_arrivals(receiver: Receiver, path: str) -> list[str]:
    """The webhook-ids received on `path`, each at its first arrival."""
    seen: dict[str, None] = {}
    for r in receiver.to(path):
        seen.setdefault(r.headers["webhook-id"])
    return list(seen)


async def test_batched_claims_keep_each_subscriptions_order(
    pool: asyncpg.Pool, nt_settings: Settings, nt_client: TestClient, make_user: MakeUser, receiver: Receiver,
) -> None:
    # few slots and short turns: many claims and log batches, each for several subscriptions
    settings = dataclasses.replace(nt_settings, notify_batch=3, notify_concurrency=4)
    user = await make_user()
    image_id = await _own_image(pool, user)
    paths = [f"/o{i}" for i in range(6)]
    receiver.answers["/o2"] = [(500, {}), (200, {})]  # its first attempt fails: the rest wait for it
    subs = [await subscribe(nt_client, user, receiver.url(p), ["tag.moved"]) for p in paths]
    changes = 20
    async with running_deliverer(settings, pool):
        for i in range(1, changes + 1):
            await _move(pool, image_id, i)
        await eventually(lambda: _all_delivered(pool, [s["id"] for s in subs], changes * len(subs)), within=60)
    for p in paths:
        got = receiver.to(p)
        ids = _first_arrivals(receiver, p)
        assert len(ids) == changes
        first = {r.headers["webhook-id"]: r for r in reversed(got)}  # each id's first arrival
        assert [orjson.loads(first[m].body)["data"]["digest"] for m in ids] == [_digest(i) for i in range(1, 21)]
    retried = receiver.to("/o2")
    assert len(retried) == changes + 1 and retried[0].headers["webhook-id"] == retried[1].headers["webhook-id"]


async def test_a_deliverer_killed_mid_run_loses_nothing(
    pool: asyncpg.Pool, nt_settings: Settings, nt_client: TestClient, make_user: MakeUser, receiver: Receiver,
) -> None:
    user = await make_user()
    image_id = await _own_image(pool, user)
    paths = ["/k0", "/k1", "/k2"]
    subs = [await subscribe(nt_client, user, receiver.url(p), ["tag.moved"]) for p in paths]
    sub_ids = [s["id"] for s in subs]
    changes = 20
    receiver.delay = 0.03  # slow enough to be killed with work in flight
    svc = Service(["worker", "--queues", "notify"], _env(nt_settings))  # the deliverer alone
    try:
        await asyncio.to_thread(wait_for, lambda: svc.events("notify.started"), 60, "the deliverer to start")
        for i in range(1, changes + 1):
            await _move(pool, image_id, i)
        await asyncio.to_thread(wait_for, lambda: len(receiver.got) >= 10, 60, "the first deliveries")
    finally:
        svc.kill()  # SIGKILL, as a crashed host: nothing flushed, no lease given back
    assert len(receiver.got) < changes * len(paths), "the deliverer was killed too late to show anything"
    # its leases lapse after their time (a minute); here that minute passes at once
    await pool.execute("UPDATE subscriptions SET lease_until = now() WHERE id = ANY ($1) AND lease_owner IS NOT NULL",
                       sub_ids)
    async with running_deliverer(nt_settings, pool):
        await eventually(lambda: _all_delivered(pool, sub_ids, changes * len(subs)), within=60)
    for sub, p in zip(subs, paths, strict=True):
        made = [r["msg_id"] for r in await pool.fetch(
            "SELECT msg_id FROM notification_deliveries WHERE subscription_id = $1 ORDER BY id", sub["id"])]
        # every delivery arrived, at least once, under its one webhook-id, and in order
        assert _first_arrivals(receiver, p) == made


async def test_deliverer_processes_share_the_work_in_order(
    pool: asyncpg.Pool, nt_settings: Settings, nt_client: TestClient, make_user: MakeUser, receiver: Receiver,
) -> None:
    user = await make_user()
    image_id = await _own_image(pool, user)
    paths = [f"/p{i}" for i in range(4)]
    subs = [await subscribe(nt_client, user, receiver.url(p), ["tag.moved"]) for p in paths]
    sub_ids = [s["id"] for s in subs]
    svc = Service(["worker", "--queues", "notify"], {**_env(nt_settings), "NOTIFY_PROCESSES": "2"})
    try:
        await asyncio.to_thread(wait_for, lambda: len(svc.events("notify.started")) >= 2, 60, "two deliverers")
        for i in range(1, 21):
            await _move(pool, image_id, i)
        await eventually(lambda: _all_delivered(pool, sub_ids, 20 * len(subs)), within=60)
        for sub, p in zip(subs, paths, strict=True):
            made = [r["msg_id"] for r in await pool.fetch(
                "SELECT msg_id FROM notification_deliveries WHERE subscription_id = $1 ORDER BY id", sub["id"])]
            assert _first_arrivals(receiver, p) == made
    finally:
        svc.stop()
        await pool.execute("DELETE FROM subscriptions WHERE id = ANY ($1)", sub_ids)
    assert len(svc.events("notify.started")) == 2 and len(svc.events("notify.stopped")) == 2


async def test_concurrent_fan_outs_make_each_delivery_once(
    pool: asyncpg.Pool, nt_client: TestClient, make_user: MakeUser, receiver: Receiver,
) -> None:
    user = await make_user()
    image_id = await _own_image(pool, user)
    sub = await subscribe(nt_client, user, receiver.url("/f"), ["tag.moved"])
    try:
        for round_ in range(12):
            for i in range(10):
                await _move(pool, image_id, round_ * 10 + i + 1)
            # several deliverers fanning out at once: one statement each, racing for the lock
            await asyncio.gather(*(fan_out(pool, 3) for _ in range(6)))
        await fanned_out(pool, image_id)
        counts = await pool.fetch("SELECT event_id, count(*) AS n FROM notification_deliveries"
                                  " WHERE subscription_id = $1 GROUP BY event_id", sub["id"])
        assert len(counts) == 120 and {r["n"] for r in counts} == {1}
        enqueued = await pool.fetchval("SELECT enqueued FROM subscriptions WHERE id = $1", sub["id"])
        assert enqueued == 120
    finally:
        await pool.execute("DELETE FROM subscriptions WHERE id = $1", sub["id"])


async def test_endpoints_on_one_host_share_no_cookies(
    pool: asyncpg.Pool, nt_client: TestClient, make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    one, other = await make_user(), await make_user()
    image_one, image_other = await _own_image(pool, one), await _own_image(pool, other)
    # a host name, not an address: cookie jars ignore cookies set by an IP address
    def by_name(path: str) -> str:
        return str(URL(receiver.url(path)).with_host("localhost"))

    receiver.answers["/sets-cookie"] = [(200, {"Set-Cookie": "session=of-the-first-subscriber; Path=/"})]
    await subscribe(nt_client, one, by_name("/sets-cookie"), ["tag.moved"])
    await subscribe(nt_client, other, by_name("/reads-cookie"), ["tag.moved"])
    await _move(pool, image_one, 1)
    await eventually(lambda: _async(receiver.to("/sets-cookie")))
    await _move(pool, image_other, 1)
    [got] = await eventually(lambda: _async(receiver.to("/reads-cookie")))
    assert "Cookie" not in got.headers

