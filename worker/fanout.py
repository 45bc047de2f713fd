"""Fan-out: the outbox rows (`notification_events`, written by triggers in the transaction of
each change) become one delivery per subscription that hears of them.

Who hears of an event (SPEC §1 tenancy, §7): a subscription without `image` hears of its
account's own images; one with `image` hears of the image of that name as its account sees
it: its own image of the name, else the catalog's (a catalog image the account shadows with
its own is not its). Another account's image is never heard of. The event type must be one
the subscription asked for, and a tag event's tag must match its `tag_pattern`. Visibility
is checked here and again when its deliveries are claimed (worker/deliverer.py).

One fan-out at a time (a transaction-scoped advisory lock; others skip): deliveries are
numbered in the order of the events, which is the order of the changes of each image (its
writers hold its row lock, and the trigger numbers the events after the change), so a
subscription's deliveries, sent in id order, follow the changes of each image in order.

A fan-out is one statement, so it holds its locks (the subscriptions it wakes) for no longer
than it runs. Its snapshot is taken before it gets the advisory lock, so it may still see as
pending the events of the fan-out that held the lock before it: it locks the events it takes
(`FOR UPDATE`), and Postgres reads a row updated since the snapshot afresh, which drops them.
It commits only once its WAL is on disk, whatever the connection's `synchronous_commit`: a
fan-out forgotten by a crash of Postgres would be made again with new webhook-ids.
"""

from __future__ import annotations

import asyncpg

FANOUT_LOCK = 7_305_020  # any fixed number: one fan-out at a time

# Deliveries' msg_id (`webhook-id`): random, so a subscriber learns nothing of the volume of
# others' events from it.
FAN_OUT_SQL = """
WITH turn AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock($2) AS ours
), ev AS MATERIALIZED (
    SELECT e.id, e.image_id, e.type, e.tag FROM notification_events AS e
     WHERE NOT e.fanned_out AND (SELECT ours FROM turn)
     ORDER BY e.id LIMIT $1
       FOR UPDATE
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
), locked AS MATERIALIZED (
    -- in id order, as the deliverer's log locks them (worker/delivery_log.py): no deadlock
    SELECT s.id, a.n FROM subscriptions AS s
      JOIN (SELECT subscription_id, count(*) AS n FROM added GROUP BY subscription_id) AS a ON a.subscription_id = s.id
     ORDER BY s.id
       FOR NO KEY UPDATE OF s
), woken AS (
    UPDATE subscriptions AS s
       SET enqueued = s.enqueued + l.n, next_attempt_at = COALESCE(s.next_attempt_at, now())
      FROM locked AS l WHERE s.id = l.id
    RETURNING 1
), done AS (
    -- by the primary key whatever the planner guesses of `ev` (a batch is small)
    UPDATE notification_events AS e SET fanned_out = true WHERE e.id = ANY (ARRAY(SELECT id FROM ev)) RETURNING 1
)
SELECT (SELECT count(*) FROM done) AS events, (SELECT count(*) FROM added) AS deliveries,
       set_config('synchronous_commit', 'on', true) AS commit_mode
"""


async def fan_out(pool: asyncpg.Pool, limit: int = 1000) -> tuple[int, int]:
    """Fan out up to `limit` events (the oldest first) in one statement. Returns (events,
    deliveries); (0, 0) when another fan-out runs now or nothing waits."""
    row = await pool.fetchrow(FAN_OUT_SQL, limit, FANOUT_LOCK)
    return int(row["events"]), int(row["deliveries"])
