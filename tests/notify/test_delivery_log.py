"""The delivery log (worker/delivery_log.py) against Postgres: a batch records attempts and
gives leases back, only for leases it holds, and wakes a subscription again only when the
fan-out added deliveries while it was leased."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from tests.conftest import MakeUser, User, insert_image
from tests.notify.conftest import fanned_out
from worker.deliveries import Answer
from worker.delivery_log import DeliveryLog, Outcome, TurnEnd

TOKEN = "notify:test-log"


async def _subscription_with_a_delivery(pool: asyncpg.Pool, user: User) -> tuple[int, int, int]:
    """(subscription id, image id, its pending delivery id), the subscription leased by TOKEN."""
    image_id = await insert_image(pool, owner_id=user.account.id, access_proven=True)
    await pool.execute("INSERT INTO tags (image_id, name, state, manifest_digest) VALUES ($1, 'v1', 'Success', $2)",
                       image_id, "sha256:" + "0" * 64)
    sub_id = await pool.fetchval(
        "INSERT INTO subscriptions (account_id, url, events, secret, lease_owner, lease_until)"
        " VALUES ($1, 'http://127.0.0.1:9/none', '{tag.moved}', $2, $3, now() + interval '1 minute') RETURNING id",
        user.account.id, os.urandom(32), TOKEN)
    await _change(pool, image_id, 1)
    delivery_id = await pool.fetchval("SELECT id FROM notification_deliveries WHERE subscription_id = $1", sub_id)
    return sub_id, image_id, delivery_id


async def _change(pool: asyncpg.Pool, image_id: int, i: int) -> None:
    """A tag change, fanned out before this returns (by us, or by a deliverer of another test
    that holds the fan-out's lock)."""
    await pool.execute("UPDATE tags SET manifest_digest = $2 WHERE image_id = $1", image_id, f"sha256:{i:064x}")
    await fanned_out(pool, image_id)


async def _write(pool: asyncpg.Pool, *entries: Outcome | TurnEnd, token: str = TOKEN) -> list[tuple[int, float | None]]:
    """Hand `entries` to a log and let it write them; what it reported after each batch."""
    told: list[tuple[int, float | None]] = []
    log = DeliveryLog(pool, token, lambda due, next_in: told.append((due, next_in)))
    for e in entries:
        log.add(e)
    log.close()
    await asyncio.wait_for(log.run(), 10)
    return told


async def test_a_batch_records_the_attempt_and_gives_the_lease_back(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    sub_id, _, delivery_id = await _subscription_with_a_delivery(pool, await make_user())
    enqueued = await pool.fetchval("SELECT enqueued FROM subscriptions WHERE id = $1", sub_id)
    told = await _write(pool, Outcome(sub_id, delivery_id, "delivered", answer=Answer(204, 12.5, "ok"),
                                      started=time.monotonic() - 2.0),
                        TurnEnd(sub_id, seen=enqueued))
    d = await pool.fetchrow("SELECT status, attempts, finished_at FROM notification_deliveries WHERE id = $1",
                            delivery_id)
    assert d["status"] == "delivered" and d["attempts"] == 1 and d["finished_at"] is not None
    a = await pool.fetchrow("SELECT status_code, duration_ms, response, now() - attempted_at AS ago"
                            " FROM notification_attempts WHERE delivery_id = $1", delivery_id)
    assert (a["status_code"], a["duration_ms"], a["response"]) == (204, 12.5, "ok")
    assert 1.5 < a["ago"].total_seconds() < 10  # when the attempt started, not when it was written
    s = await pool.fetchrow("SELECT lease_owner, next_attempt_at FROM subscriptions WHERE id = $1", sub_id)
    assert s["lease_owner"] is None and s["next_attempt_at"] is None  # nothing more came: idle
    assert told == [(0, None)]


async def test_deliveries_added_while_leased_wake_the_subscription(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    sub_id, image_id, delivery_id = await _subscription_with_a_delivery(pool, await make_user())
    seen = await pool.fetchval("SELECT enqueued FROM subscriptions WHERE id = $1", sub_id)
    await _change(pool, image_id, 2)  # fanned out while the turn runs, after it read its queue
    told = await _write(pool, Outcome(sub_id, delivery_id, "delivered", answer=Answer(200, 1.0)),
                        TurnEnd(sub_id, seen=seen))
    due = await pool.fetchval("SELECT next_attempt_at <= now() FROM subscriptions WHERE id = $1", sub_id)
    assert due is True and told == [(1, None)]


async def test_a_failed_attempt_holds_the_subscription_until_its_retry(
    pool: asyncpg.Pool, make_user: MakeUser,
) -> None:
    sub_id, _, delivery_id = await _subscription_with_a_delivery(pool, await make_user())
    told = await _write(pool, Outcome(sub_id, delivery_id, "pending", "attempt 1 failed: HTTP 503", 30.0,
                                      Answer(503, 2.0)),
                        TurnEnd(sub_id, wait=30.0))
    d = await pool.fetchrow("SELECT status, attempts, note, next_attempt_at FROM notification_deliveries"
                            " WHERE id = $1", delivery_id)
    s = await pool.fetchrow("SELECT lease_owner, next_attempt_at FROM subscriptions WHERE id = $1", sub_id)
    assert (d["status"], d["attempts"], d["note"]) == ("pending", 1, "attempt 1 failed: HTTP 503")
    assert s["lease_owner"] is None and s["next_attempt_at"] == d["next_attempt_at"]
    [(due_now, next_in)] = told
    assert due_now == 0 and next_in is not None and 29 < next_in <= 30


async def test_410_disables_and_nothing_is_written_without_the_lease(pool: asyncpg.Pool, make_user: MakeUser) -> None:
    user = await make_user()
    sub_id, _, delivery_id = await _subscription_with_a_delivery(pool, user)
    lost, _, lost_delivery = await _subscription_with_a_delivery(pool, user)
    await pool.execute("UPDATE subscriptions SET lease_owner = 'notify:another' WHERE id = $1", lost)
    await _write(pool, Outcome(sub_id, delivery_id, "pending", "410 Gone", 0.0, Answer(410, 1.0)),
                 TurnEnd(sub_id, disable=True),
                 Outcome(lost, lost_delivery, "delivered", answer=Answer(200, 1.0)), TurnEnd(lost, seen=0))
    s = await pool.fetchrow("SELECT disabled_at, disabled_reason, lease_owner, next_attempt_at FROM subscriptions"
                            " WHERE id = $1", sub_id)
    assert s["disabled_at"] is not None and "410" in s["disabled_reason"]
    assert s["lease_owner"] is None and s["next_attempt_at"] is None
    # the other lease is not ours (it lapsed and another deliverer took it): nothing written
    other = await pool.fetchrow("SELECT lease_owner FROM subscriptions WHERE id = $1", lost)
    assert other["lease_owner"] == "notify:another"
    d = await pool.fetchrow("SELECT status, attempts FROM notification_deliveries WHERE id = $1", lost_delivery)
    assert (d["status"], d["attempts"]) == ("pending", 0)
    assert await pool.fetchval("SELECT count(*) FROM notification_attempts WHERE delivery_id = $1", lost_delivery) == 0
