"""The deliverer's writes: each attempt's outcome and the end of each turn (the lease given
back), in batches of one statement each (worker/deliverer.py hands them over).

One statement per attempt, plus one per lease given back, was most of what a delivery cost
(docs/benchmarks.md); now one statement records everything finished while the previous one
ran, so the batches grow with the load and the number of statements does not.

What holds:
- A batch is one statement, written in the order handed over: a subscription's attempts are
  written with the end of its turn or before it, never after, so the next turn (claimed only
  once the lease is back) sees them.
- Every write is fenced by the lease token: nothing is written for a subscription whose lease
  this deliverer no longer holds (another one sends its deliveries again, same webhook-id).
- A batch that cannot be written (Postgres away) is tried again, `TRIES` times in all, then
  dropped: its leases lapse and its deliveries go out again. Never lost; at least once.
- The subscription rows are locked in id order, as the fan-out locks them
  (worker/fanout.py), so the two never wait on each other in a cycle.
- A batch commits without waiting for its WAL to reach the disk (`synchronous_commit` off for
  this statement alone; a WAL flush per batch was most of its time): a crash of Postgres
  itself may forget the last fraction of a second of batches, which are then sent again
  under the same webhook-ids, in order. The fan-out, which makes the webhook-ids, waits for
  the disk (worker/fanout.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from worker.beat_lock import DB_ERRORS
from worker.deliveries import Answer

log = structlog.get_logger("worker.delivery_log")

TRIES = 3
RETRY_PAUSE = 0.5  # seconds between tries of a batch that failed
GONE_REASON = "the endpoint answered 410 Gone"


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery in a turn: an attempt (`answer`), or dropped unsent."""

    subscription_id: int
    delivery_id: int
    status: str  # pending (to retry in `wait` s), delivered, failed (given up), dropped
    note: str | None = None
    wait: float = 0.0
    answer: Answer | None = None  # None: dropped without an attempt
    started: float = 0.0  # time.monotonic() when the attempt started


@dataclass(frozen=True)
class TurnEnd:
    """A turn is over: the lease goes back. The subscription is next due at `until`, else in
    `wait` s, else (`seen` = the `enqueued` count read when its queue looked empty) only if
    the fan-out added deliveries since; `seen` None: at once (more may be pending)."""

    subscription_id: int
    until: datetime | None = None
    wait: float | None = None
    seen: int | None = None
    disable: bool = False  # 410 Gone


# $1 the lease token; the outcomes $2..$12 (one array element each: `ago` is how long before
# now the attempt started), the turn ends $13..$17. The main query reads the CTEs in the order
# written, so the subscriptions are locked (`owned`) only at the end, for a short while.
WRITE_SQL = """
WITH o AS MATERIALIZED (
    SELECT o.* FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::float8[], $7::boolean[],
                           $8::float8[], $9::integer[], $10::float8[], $11::text[], $12::text[])
                    WITH ORDINALITY AS o (subscription_id, delivery_id, status, note, wait, attempted,
                                          ago, status_code, duration_ms, response, error, n)
     WHERE EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.id = o.subscription_id AND s.lease_owner = $1)
), attempts AS (
    INSERT INTO notification_attempts (delivery_id, attempted_at, status_code, duration_ms, response, error)
    SELECT o.delivery_id, now() - make_interval(secs => o.ago), o.status_code, o.duration_ms, o.response, o.error
      FROM o WHERE o.attempted ORDER BY o.n
    RETURNING 1
), deliveries AS (
    UPDATE notification_deliveries AS d
       SET attempts = d.attempts + o.attempted::integer, status = o.status, note = o.note,
           next_attempt_at = CASE WHEN o.status = 'pending' THEN now() + make_interval(secs => o.wait)
                                  ELSE d.next_attempt_at END,
           finished_at = CASE WHEN o.status = 'pending' THEN NULL ELSE now() END
      FROM o WHERE d.id = o.delivery_id
    RETURNING 1
), owned AS MATERIALIZED (
    SELECT id FROM subscriptions WHERE id = ANY ($13::bigint[]) AND lease_owner = $1
     ORDER BY id
       FOR NO KEY UPDATE
), ended AS (
    UPDATE subscriptions AS s
       SET lease_owner = NULL, lease_until = NULL,
           -- `s.enqueued` is the row as committed now: a fan-out since `seen` wakes it
           next_attempt_at = CASE WHEN e.disable THEN NULL
                                  WHEN e.until IS NOT NULL THEN e.until
                                  WHEN e.wait IS NOT NULL THEN now() + make_interval(secs => e.wait)
                                  WHEN e.seen IS NULL OR s.enqueued <> e.seen THEN now()
                                  ELSE NULL END,
           disabled_at = CASE WHEN e.disable THEN now() ELSE s.disabled_at END,
           disabled_reason = CASE WHEN e.disable THEN $18 ELSE s.disabled_reason END,
           updated_at = CASE WHEN e.disable THEN now() ELSE s.updated_at END
      FROM unnest($13::bigint[], $14::timestamptz[], $15::float8[], $16::bigint[], $17::boolean[])
           AS e (id, until, wait, seen, disable)
      JOIN owned ON owned.id = e.id
     WHERE s.id = e.id
    RETURNING s.next_attempt_at
)
SELECT (SELECT count(*) FROM attempts) AS attempts,
       (SELECT count(*) FROM deliveries) AS outcomes,
       (SELECT count(*) FROM ended WHERE next_attempt_at <= now()) AS due_now,
       (SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM ended WHERE next_attempt_at > now())
           AS next_due_in,
       set_config('synchronous_commit', 'off', true) AS commit_mode
"""


def _arguments(batch: list[Outcome | TurnEnd], token: str) -> list[Any]:
    outcomes = [e for e in batch if isinstance(e, Outcome)]
    ends = sorted((e for e in batch if isinstance(e, TurnEnd)), key=lambda e: e.subscription_id)
    now = time.monotonic()
    answers = [o.answer for o in outcomes]
    return [
        token,
        [o.subscription_id for o in outcomes], [o.delivery_id for o in outcomes],
        [o.status for o in outcomes], [o.note for o in outcomes], [o.wait for o in outcomes],
        [a is not None for a in answers], [now - o.started for o in outcomes],
        [a.status if a else None for a in answers], [a.duration_ms if a else 0.0 for a in answers],
        [a.excerpt if a else "" for a in answers], [a.error if a else None for a in answers],
        [e.subscription_id for e in ends], [e.until for e in ends], [e.wait for e in ends],
        [e.seen for e in ends], [e.disable for e in ends],
        GONE_REASON,
    ]


class DeliveryLog:
    """Collects outcomes and turn ends and writes them, one batch at a time, from `run()`.
    `written(due_now, next_due_in)` is told, after each batch, how many subscriptions it gave
    back due at once, and in how many seconds the next one it gave back is due (None: none)."""

    def __init__(self, pool: asyncpg.Pool, token: str, written: Callable[[int, float | None], None],
                 gap: float = 0.0) -> None:
        self.pool = pool
        self.token = token
        self.written = written
        self.gap = gap  # seconds at least between the starts of two writes: batches under load
        self._entries: list[Outcome | TurnEnd] = []
        self._kick = asyncio.Event()
        self._closing = False

    def add(self, entry: Outcome | TurnEnd) -> None:
        self._entries.append(entry)
        self._kick.set()

    def close(self) -> None:
        """`run()` writes what it holds, then returns."""
        self._closing = True
        self._kick.set()

    async def run(self) -> None:
        failures, last = 0, 0.0
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._entries:
                if (pause := last + self.gap - time.monotonic()) > 0 and not self._closing:
                    await asyncio.sleep(pause)
                last = time.monotonic()
                batch, self._entries = self._entries, []
                try:
                    row = await self.pool.fetchrow(WRITE_SQL, *_arguments(batch, self.token))
                except DB_ERRORS as exc:
                    failures += 1
                    if failures >= TRIES:
                        # the leases lapse and the deliveries go out again: at least once
                        log.error("notify.log_dropped", entries=len(batch), error=f"{type(exc).__name__}: {exc}")
                        failures = 0
                    else:
                        log.warning("notify.log_failed", entries=len(batch), error=f"{type(exc).__name__}: {exc}")
                        self._entries = batch + self._entries
                        await asyncio.sleep(RETRY_PAUSE)
                    continue
                failures = 0
                due_in = row["next_due_in"]
                self.written(int(row["due_now"]), None if due_in is None else float(due_in))
            if self._closing:
                return
