"""Fan-out: the outbox rows (`notification_events`, written by triggers in the transaction of
each change) become one delivery per subscription that hears of them.

Who hears of an event (SPEC §1 tenancy, §7): a subscription without `image` hears of its
account's own images; one with `image` hears of the image of that name as its account sees
it: its own image of the name, else the catalog's (a catalog image the account shadows with
its own is not its). Another account's image is never heard of. The event type must be one
the subscription asked for, and a tag event's tag must match its `tag_pattern`. Visibility
is checked here and again before each attempt (worker/deliveries.py).

One fan-out at a time (a transaction-scoped advisory lock; others skip): deliveries are
numbered in the order of the events, which is the order of the changes of each image (its
writers hold its row lock, and the trigger numbers the events after the change), so a
subscription's deliveries, sent in id order, follow the changes of each image in order.
"""

from __future__ import annotations

import asyncpg

FANOUT_LOCK = 7_305_020  # any fixed number: one fan-out at a time

# Deliveries' msg_id (`webhook-id`): random, so a subscriber learns nothing of the volume of
# others' events from it.
FAN_OUT_SQL = """
WITH ev AS MATERIALIZED (
    SELECT e.id, e.image_id, e.type, e.tag FROM notification_events AS e
     WHERE NOT e.fanned_out ORDER BY e.id LIMIT $1
), matched AS (
    SELECT ev.id AS event_id, s.id AS subscription_id
      FROM ev JOIN images AS i ON i.id = ev.image_id
      JOIN subscriptions AS s ON s.image IS NULL AND s.account_id = i.owner_id
     WHERE s.disabled_at IS NULL AND ev.type = ANY (s.events)
       AND (s.tag_pattern IS NULL OR ev.tag LIKE glob_like(s.tag_pattern))
    UNION ALL
    SELECT ev.id, s.id
      FROM ev JOIN images AS i ON i.id = ev.image_id
      JOIN subscriptions AS s ON s.image = i.name
     WHERE s.disabled_at IS NULL AND ev.type = ANY (s.events)
       AND (s.tag_pattern IS NULL OR ev.tag LIKE glob_like(s.tag_pattern))
       AND (i.owner_id = s.account_id
            OR (i.owner_id IS NULL
                AND NOT EXISTS (SELECT 1 FROM images AS o WHERE o.owner_id = s.account_id AND o.name = i.name)))
), added AS (
    INSERT INTO notification_deliveries (subscription_id, event_id, msg_id)
    SELECT m.subscription_id, m.event_id, 'msg_' || replace(gen_random_uuid()::text, '-', '')
      FROM matched AS m ORDER BY m.event_id, m.subscription_id
    RETURNING subscription_id
), woken AS (
    UPDATE subscriptions AS s
       SET enqueued = s.enqueued + a.n, next_attempt_at = COALESCE(s.next_attempt_at, now())
      FROM (SELECT subscription_id, count(*) AS n FROM added GROUP BY subscription_id) AS a
     WHERE s.id = a.subscription_id
    RETURNING 1
), done AS (
    UPDATE notification_events AS e SET fanned_out = true FROM ev WHERE e.id = ev.id RETURNING 1
)
SELECT (SELECT count(*) FROM done) AS events, (SELECT count(*) FROM added) AS deliveries
"""


async def fan_out(pool: asyncpg.Pool, limit: int = 1000) -> tuple[int, int]:
    """Fan out up to `limit` events (the oldest first) in one transaction. Returns (events,
    deliveries); (0, 0) when another fan-out runs now or nothing waits."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FANOUT_LOCK):
            return 0, 0
        row = await conn.fetchrow(FAN_OUT_SQL, limit)
    return int(row["events"]), int(row["deliveries"])
