"""SQL of the subscriptions API (api/subscriptions.py). Every statement names the account: a
subscription of another account is never read or written (the handlers answer 404)."""

from __future__ import annotations

import asyncpg

from api.queries import Conn

SUBSCRIPTION_COLUMNS = """
    s.id, s.url, s.events, s.image, s.tag_pattern, s.disabled_at, s.disabled_reason, s.created_at
"""

COUNT_SQL = "SELECT count(*) FROM subscriptions WHERE account_id = $1"

# The count and the insert in one statement, under a lock of the account's row: two
# concurrent creations cannot both pass the cap.
INSERT_SQL = f"""
WITH me AS (SELECT id FROM accounts WHERE id = $1 FOR UPDATE)
INSERT INTO subscriptions AS s (account_id, url, events, image, tag_pattern, secret)
SELECT me.id, $2, $3, $4, $5, $6 FROM me
 WHERE (SELECT count(*) FROM subscriptions WHERE account_id = $1) < $7
RETURNING {SUBSCRIPTION_COLUMNS}
"""


async def insert(conn: Conn, account_id: int, *, url: str, events: list[str], image: str | None,
                 tag_pattern: str | None, sealed_secret: bytes, cap: int) -> asyncpg.Record | None:
    """The new subscription; None when the account has `cap` already."""
    return await conn.fetchrow(INSERT_SQL, account_id, url, events, image, tag_pattern, sealed_secret, cap)


GET_SQL = f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions AS s WHERE s.id = $1 AND s.account_id = $2"


async def get(conn: Conn, account_id: int, subscription_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(GET_SQL, subscription_id, account_id)


LIST_SQL = f"""
SELECT {SUBSCRIPTION_COLUMNS}, count(*) OVER () AS total_count
  FROM subscriptions AS s WHERE s.account_id = $1
 ORDER BY s.id OFFSET $2 LIMIT $3
"""


async def page(conn: Conn, account_id: int, offset: int, limit: int) -> tuple[list[asyncpg.Record], int]:
    """A page of the account's subscriptions by id (at most NOTIFY_MAX_SUBSCRIPTIONS in all),
    and their number."""
    rows = await conn.fetch(LIST_SQL, account_id, offset, limit)
    total = rows[0]["total_count"] if rows else await conn.fetchval(COUNT_SQL, account_id)
    return list(rows), int(total)


# $3..$7 new values with $8..$11 saying whether the body named url, events, image, tag_pattern;
# $12 enabled (NULL: unchanged). Re-enabling makes pending deliveries due at once.
UPDATE_SQL = f"""
UPDATE subscriptions AS s
   SET url = CASE WHEN $8 THEN $3 ELSE s.url END,
       events = CASE WHEN $9 THEN $4 ELSE s.events END,
       image = CASE WHEN $10 THEN $5 ELSE s.image END,
       tag_pattern = CASE WHEN $11 THEN $6 ELSE s.tag_pattern END,
       disabled_at = CASE WHEN $12::boolean IS NULL THEN s.disabled_at
                          WHEN $12::boolean THEN NULL ELSE COALESCE(s.disabled_at, now()) END,
       disabled_reason = CASE WHEN $12::boolean IS NULL THEN s.disabled_reason
                              WHEN $12::boolean THEN NULL ELSE 'disabled by its owner' END,
       next_attempt_at = CASE WHEN $12::boolean AND s.disabled_at IS NOT NULL THEN now()
                              ELSE s.next_attempt_at END,
       updated_at = now()
 WHERE s.id = $1 AND s.account_id = $2
RETURNING {SUBSCRIPTION_COLUMNS}
"""


async def update(conn: Conn, account_id: int, subscription_id: int, *, url: str | None, events: list[str] | None,
                 image: str | None, tag_pattern: str | None, named: tuple[bool, bool, bool, bool],
                 enabled: bool | None) -> asyncpg.Record | None:
    return await conn.fetchrow(UPDATE_SQL, subscription_id, account_id, url, events, image, tag_pattern, *named,
                               enabled)


DELETE_SQL = "DELETE FROM subscriptions WHERE id = $1 AND account_id = $2"


async def delete(conn: Conn, account_id: int, subscription_id: int) -> bool:
    return bool(await conn.execute(DELETE_SQL, subscription_id, account_id) == "DELETE 1")


# The old secret keeps signing for NOTIFY_ROTATION_GRACE_SECONDS (worker/deliveries.py).
ROTATE_SQL = f"""
UPDATE subscriptions AS s SET previous_secret = s.secret, secret = $3, rotated_at = now(), updated_at = now()
 WHERE s.id = $1 AND s.account_id = $2
RETURNING {SUBSCRIPTION_COLUMNS}
"""


async def rotate(conn: Conn, account_id: int, subscription_id: int, sealed_secret: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(ROTATE_SQL, subscription_id, account_id, sealed_secret)


DELIVERY_COLUMNS = """
    d.id, d.subscription_id, d.msg_id, d.status, d.attempts, d.next_attempt_at, d.created_at,
    d.finished_at, d.note, e.type, e.data
"""

DELIVERIES_SQL = f"""
SELECT {DELIVERY_COLUMNS}, count(*) OVER () AS total_count
  FROM notification_deliveries AS d
  JOIN subscriptions AS s ON s.id = d.subscription_id
  JOIN notification_events AS e ON e.id = d.event_id
 WHERE d.subscription_id = $1 AND s.account_id = $2
 ORDER BY d.id DESC OFFSET $3 LIMIT $4
"""
COUNT_DELIVERIES_SQL = "SELECT count(*) FROM notification_deliveries WHERE subscription_id = $1"
ATTEMPTS_SQL = """
SELECT delivery_id, attempted_at, status_code, duration_ms, response, error
  FROM notification_attempts WHERE delivery_id = ANY ($1::bigint[]) ORDER BY id
"""


async def deliveries(conn: Conn, account_id: int, subscription_id: int, offset: int,
                     limit: int) -> tuple[list[asyncpg.Record], dict[int, list[asyncpg.Record]], int]:
    """A page of a subscription's deliveries, newest first, their attempts by delivery id,
    and the number of deliveries (kept NOTIFY_LOG_RETENTION_SECONDS after they finish)."""
    rows = await conn.fetch(DELIVERIES_SQL, subscription_id, account_id, offset, limit)
    attempts: dict[int, list[asyncpg.Record]] = {}
    if rows:
        for a in await conn.fetch(ATTEMPTS_SQL, [r["id"] for r in rows]):
            attempts.setdefault(a["delivery_id"], []).append(a)
    total = rows[0]["total_count"] if rows else await conn.fetchval(COUNT_DELIVERIES_SQL, subscription_id)
    return list(rows), attempts, int(total)


DELIVERY_SQL = f"""
SELECT {DELIVERY_COLUMNS}
  FROM notification_deliveries AS d
  JOIN subscriptions AS s ON s.id = d.subscription_id
  JOIN notification_events AS e ON e.id = d.event_id
 WHERE d.id = $1 AND d.subscription_id = $2 AND s.account_id = $3
"""


async def delivery(conn: Conn, account_id: int, subscription_id: int,
                   delivery_id: int) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    row = await conn.fetchrow(DELIVERY_SQL, delivery_id, subscription_id, account_id)
    if row is None:
        return None, []
    return row, list(await conn.fetch(ATTEMPTS_SQL, [delivery_id]))


# A redelivery is a new delivery of the same event under the same webhook-id, at the end of
# the subscription's queue (its order stays the order of sending).
REDELIVER_SQL = f"""
WITH old AS (
    SELECT d.event_id, d.msg_id FROM notification_deliveries AS d
      JOIN subscriptions AS s ON s.id = d.subscription_id
     WHERE d.id = $1 AND d.subscription_id = $2 AND s.account_id = $3
), added AS (
    INSERT INTO notification_deliveries AS d (subscription_id, event_id, msg_id)
    SELECT $2, old.event_id, old.msg_id FROM old
    RETURNING d.*
), woken AS (
    UPDATE subscriptions SET enqueued = enqueued + 1, next_attempt_at = COALESCE(next_attempt_at, now())
     WHERE id = $2 AND EXISTS (SELECT 1 FROM added)
)
SELECT {DELIVERY_COLUMNS} FROM added AS d JOIN notification_events AS e ON e.id = d.event_id
"""


async def redeliver(conn: Conn, account_id: int, subscription_id: int, delivery_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(REDELIVER_SQL, delivery_id, subscription_id, account_id)
