"""Delivering notifications (SPEC §7) from Postgres alone: which subscription sends what, when.

A subscription with a due delivery (`subscriptions.next_attempt_at`) is claimed by one
deliverer with a lease (`FOR UPDATE SKIP LOCKED`, like the scheduler's images); one statement
claims every due subscription there is room for, with its first NOTIFY_BATCH pending
deliveries. Each claimed subscription then gets a turn: its deliveries one after the other in
id order, so they go out in order, and a slow or dead endpoint holds only its own turn. A
failed attempt ends the turn: the deliveries behind it wait with it (worker/deliveries.py
judges the answer). What the turns did is written in batches (worker/delivery_log.py), the
lease given back last; only then can the subscription be claimed again.

Visibility is checked again when the deliveries are claimed: an event about an image the
subscriber can no longer see (deleted, or no longer its own) is dropped, never sent.

Every write is fenced by the lease token, and a turn starts no attempt once half its lease
has gone (an attempt ends within NOTIFY_TIMEOUT_SECONDS): a deliverer that hung or died loses
its leases when they lapse, writes nothing after that, and its unrecorded deliveries go out
again under the same `webhook-id` (at least once).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from core.crypto import CredentialBox
from core.notify import Signer
from core.settings import Settings
from worker.deliveries import Sender, Subscription, body_of, judge
from worker.delivery_log import DeliveryLog, Outcome, TurnEnd

log = structlog.get_logger("worker.deliverer")

SIGNERS_MAX = 10_000  # subscriptions whose opened secrets are kept between turns
UNSEEN = "the subscriber can no longer see the image"

# `s` is the row as of the statement's snapshot, not `claimed`'s new version, so `enqueued`
# and the pending deliveries read with it agree (a fan-out committed meanwhile wakes it again
# when the lease goes back, worker/delivery_log.py). A subscription with nothing pending has
# one row whose delivery columns are NULL. A claim commits without waiting for the disk: one
# that a crash of Postgres forgets only means its deliveries are sent again (same ids).
CLAIM_SQL = """
WITH due AS (
    SELECT id FROM subscriptions
     WHERE next_attempt_at <= now() AND disabled_at IS NULL AND (lease_until IS NULL OR lease_until < now())
     ORDER BY next_attempt_at
     LIMIT $1
       FOR NO KEY UPDATE SKIP LOCKED
), claimed AS (
    UPDATE subscriptions AS s SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
      FROM due WHERE s.id = due.id
    RETURNING s.id
)
SELECT s.id AS subscription_id, s.url, s.secret,
       CASE WHEN s.rotated_at > now() - make_interval(secs => $4) THEN s.previous_secret END AS previous_secret,
       s.enqueued, d.id, d.msg_id, d.attempts, d.next_attempt_at, d.next_attempt_at <= now() AS due,
       e.id AS event_id, e.type, e.occurred_at, e.data,
       EXISTS (SELECT 1 FROM images AS i
                WHERE i.id = e.image_id AND (i.owner_id = s.account_id OR i.owner_id IS NULL)) AS visible,
       set_config('synchronous_commit', 'off', true) AS commit_mode
  FROM claimed AS c
  JOIN subscriptions AS s ON s.id = c.id
  LEFT JOIN LATERAL (SELECT * FROM notification_deliveries AS d
                      WHERE d.subscription_id = s.id AND d.status = 'pending'
                      ORDER BY d.id LIMIT $5) AS d ON true
  LEFT JOIN notification_events AS e ON e.id = d.event_id
 ORDER BY s.id, d.id
"""


@dataclass(frozen=True)
class Turn:
    sub: Subscription
    enqueued: int  # read with `deliveries`
    deliveries: list[asyncpg.Record]  # pending, in id order (at most NOTIFY_BATCH)
    bodies: dict[int, bytes]  # event id -> body, shared by the turns of one claim


class Deliverer:
    """Serves due subscriptions, up to NOTIFY_CONCURRENCY at once in this process. `start()`
    before claiming; `drain()` at the end."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, sender: Sender, box: CredentialBox) -> None:
        self.pool = pool
        self.settings = settings
        self.sender = sender
        self.box = box
        self.token = f"notify:{uuid.uuid4().hex}"
        self.schedule = settings.notify_schedule
        self.batch = max(1, settings.notify_batch)
        # long enough for a turn: it starts no new attempt once half of it has gone
        self.lease = max(60.0, 4 * settings.notify_timeout_seconds)
        self.tasks: set[asyncio.Task[None]] = set()
        self.log = DeliveryLog(pool, self.token, self._written, settings.notify_round_seconds)
        self._log_task: asyncio.Task[None] | None = None
        # set when claiming again may find work: a subscription went back due at once, or a
        # turn ended after a claim that filled every slot
        self.wake = asyncio.Event()
        self.next_due: float | None = None  # time.monotonic() when a subscription given back is due
        self._full = False
        self._signers: dict[tuple[bytes, bytes | None], Signer] = {}

    def start(self) -> None:
        self._log_task = asyncio.create_task(self.log.run())

    async def claim(self) -> int:
        """Start a turn for every due subscription there is room for; returns how many."""
        if self.next_due is not None and self.next_due <= time.monotonic():
            self.next_due = None  # looked for now (or, when full, once a turn ends)
        room = self.settings.notify_concurrency - len(self.tasks)
        if room <= 0:
            self._full = True
            return 0
        rows = await self.pool.fetch(CLAIM_SQL, room, self.token, self.lease,
                                     self.settings.notify_rotation_grace_seconds, self.batch)
        bodies: dict[int, bytes] = {}
        started = 0
        for sub_id, group in itertools.groupby(rows, key=lambda r: r["subscription_id"]):
            first, *rest = group
            signer = self._signer(first)
            if signer is None:
                continue  # its lease lapses; rotate-secret with the right SECRET_KEY_OLD fixes it
            deliveries = [r for r in (first, *rest) if r["id"] is not None]
            turn = Turn(Subscription(sub_id, first["url"], signer), first["enqueued"], deliveries, bodies)
            task = asyncio.create_task(self.serve(turn))
            self.tasks.add(task)
            task.add_done_callback(self._done)
            started += 1
        self._full = started >= room
        return started

    def _signer(self, row: asyncpg.Record) -> Signer | None:
        sealed = (bytes(row["secret"]), None if row["previous_secret"] is None else bytes(row["previous_secret"]))
        signer = self._signers.get(sealed)
        if signer is None:
            try:
                signer = Signer(self.box.open_bytes(k) for k in sealed if k is not None)
            except ValueError:
                log.error("notify.secret_unreadable", subscription=row["subscription_id"])
                return None
            if len(self._signers) >= SIGNERS_MAX:
                self._signers.clear()
            self._signers[sealed] = signer
        return signer

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._full:
            self._full = False
            self.wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("notify.serve_crashed", exc_info=exc)

    def _written(self, due_now: int, next_due_in: float | None) -> None:
        if due_now:
            self.wake.set()
        if next_due_in is not None:
            at = time.monotonic() + next_due_in
            self.next_due = at if self.next_due is None else min(self.next_due, at)

    async def serve(self, turn: Turn) -> None:
        """One turn: the subscription's due deliveries in order; the lease goes back last."""
        sub_id = turn.sub.id
        turn_ends = time.monotonic() + self.lease / 2
        try:
            for r in turn.deliveries:
                if not r["due"]:
                    self.log.add(TurnEnd(sub_id, until=r["next_attempt_at"]))
                    return
                if not r["visible"]:
                    self.log.add(Outcome(sub_id, r["id"], "dropped", UNSEEN))
                    continue
                if time.monotonic() > turn_ends:
                    self.log.add(TurnEnd(sub_id, wait=0.0))
                    return
                body = turn.bodies.get(r["event_id"])
                if body is None:
                    body = turn.bodies[r["event_id"]] = body_of(r)
                started = time.monotonic()
                answer = await self.sender.post(turn.sub, r["msg_id"], body)
                verdict = judge(answer, r["attempts"], self.schedule, self.settings.notify_retry_jitter,
                                self.settings.notify_retry_after_max_seconds)
                self.log.add(Outcome(sub_id, r["id"], verdict.status, verdict.note, verdict.wait, answer, started))
                if verdict.disable:
                    self.log.add(TurnEnd(sub_id, disable=True))
                    log.info("notify.disabled", subscription=sub_id)
                    return
                if verdict.status == "pending":
                    self.log.add(TurnEnd(sub_id, wait=verdict.wait))
                    return
            self.log.add(TurnEnd(sub_id, seen=turn.enqueued if len(turn.deliveries) < self.batch else None))
        except asyncio.CancelledError:
            # stopping: what was sent is recorded; an attempt cut short goes out again
            self.log.add(TurnEnd(sub_id, wait=0.0))
            raise

    async def drain(self, seconds: float) -> None:
        """Let the turns in flight finish for `seconds`, then cancel them (their subscriptions
        go back due, and another deliverer sends what was not recorded), and write the log."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=seconds)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self._log_task is not None:
            self.log.close()
            await asyncio.wait({self._log_task}, timeout=10.0)
            if not self._log_task.done():
                self._log_task.cancel()
