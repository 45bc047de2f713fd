"""Delivering notifications by the Standard Webhooks spec (SPEC §7), from Postgres alone.

A subscription with a due delivery (`subscriptions.next_attempt_at`) is claimed by one
deliverer with a lease (`FOR UPDATE SKIP LOCKED`, like the scheduler's images), which sends
its pending deliveries one after the other in id order: a subscription's deliveries go out
in order, and a slow or dead endpoint holds only its own turn. A failed attempt makes the
delivery wait (NOTIFY_RETRY_SCHEDULE, jittered; at least a 429/502/503/504's `Retry-After`),
and the deliveries behind it wait with it; after the last attempt it is given up (`failed`)
and the next one goes. `410 Gone` disables the subscription. Redirects are not followed (a
3xx is a failure), and every request passes the registries' address guard
(worker/registry/guard.py). Each attempt is kept (`notification_attempts`).

Visibility is checked again before every attempt: an event about an image the subscriber can
no longer see (deleted, or no longer its own) is dropped, never sent.

Every write is fenced by the lease token: a deliverer whose lease lapsed (it hung past
NOTIFY lease time) writes nothing, and its deliveries go out again under the same
`webhook-id` (at least once).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg
import orjson
import structlog
from yarl import URL

from core import notify
from core.crypto import CredentialBox
from core.settings import Settings
from worker.registry.errors import ForbiddenTargetError
from worker.registry.guard import Guard

log = structlog.get_logger("worker.deliveries")

EXCERPT_CHARS = 200  # of an answer's body, kept with the attempt
SLOW_DOWN = frozenset({429, 502, 503, 504})  # statuses whose Retry-After is honoured
USER_AGENT = "registry-sync-webhooks/1"


@dataclass(frozen=True)
class Subscription:
    id: int
    url: str
    keys: tuple[bytes, ...]  # the current secret, then a rotated one still honoured


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (refused, connection failed, timed out)
    duration_ms: float
    excerpt: str = ""
    error: str | None = None
    retry_after: float | None = None  # seconds


CLAIM_SQL = """
WITH due AS (
    SELECT id FROM subscriptions
     WHERE next_attempt_at <= now() AND disabled_at IS NULL AND (lease_until IS NULL OR lease_until < now())
     ORDER BY next_attempt_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE subscriptions AS s SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
  FROM due WHERE s.id = due.id
RETURNING s.id, s.url, s.secret,
          CASE WHEN s.rotated_at > now() - make_interval(secs => $4) THEN s.previous_secret END AS previous_secret
"""

# The first pending deliveries in order, with what the subscriber may see now; a row with a
# NULL id: none pending (`enqueued` as of the same snapshot); no row: the lease is lost.
PENDING_SQL = """
SELECT s.enqueued, d.id, d.msg_id, d.attempts, d.next_attempt_at, d.next_attempt_at <= now() AS due,
       e.type, e.occurred_at, e.data,
       EXISTS (SELECT 1 FROM images AS i
                WHERE i.id = e.image_id AND (i.owner_id = s.account_id OR i.owner_id IS NULL)) AS visible
  FROM subscriptions AS s
  LEFT JOIN LATERAL (SELECT * FROM notification_deliveries AS d
                      WHERE d.subscription_id = s.id AND d.status = 'pending'
                      ORDER BY d.id LIMIT $3) AS d ON true
  LEFT JOIN notification_events AS e ON e.id = d.event_id
 WHERE s.id = $1 AND s.lease_owner = $2
 ORDER BY d.id
"""

# One attempt and its outcome, only while the lease is ours. $8 status: pending (to retry in
# $9 s), delivered, failed (given up).
RECORD_SQL = """
WITH owned AS (SELECT 1 FROM subscriptions WHERE id = $2 AND lease_owner = $3),
attempt AS (
    INSERT INTO notification_attempts (delivery_id, status_code, duration_ms, response, error)
    SELECT $1, $4, $5, $6, $7 FROM owned
    RETURNING delivery_id
)
UPDATE notification_deliveries AS d
   SET attempts = d.attempts + 1, status = $8,
       next_attempt_at = now() + make_interval(secs => $9),
       finished_at = CASE WHEN $8 = 'pending' THEN NULL ELSE now() END, note = $10
  FROM attempt WHERE d.id = attempt.delivery_id
RETURNING d.next_attempt_at
"""

DROP_SQL = """
UPDATE notification_deliveries SET status = 'dropped', finished_at = now(), note = $3
 WHERE id = $1 AND EXISTS (SELECT 1 FROM subscriptions WHERE id = $4 AND lease_owner = $2)
"""

# $3: the first pending delivery waits until then; else $4: the `enqueued` count read with an
# empty queue (NULL: more may be pending): a fan-out that added deliveries since then wakes it.
RELEASE_SQL = """
UPDATE subscriptions
   SET lease_owner = NULL, lease_until = NULL,
       next_attempt_at = CASE WHEN $3::timestamptz IS NOT NULL THEN $3::timestamptz
                              WHEN $4::bigint IS NULL OR enqueued <> $4::bigint THEN now()
                              ELSE NULL END
 WHERE id = $1 AND lease_owner = $2
"""

DISABLE_SQL = """
UPDATE subscriptions
   SET disabled_at = now(), disabled_reason = $3, lease_owner = NULL, lease_until = NULL,
       next_attempt_at = NULL, updated_at = now()
 WHERE id = $1 AND lease_owner = $2
"""

NEXT_DUE_SQL = """
SELECT min(next_attempt_at) FROM subscriptions WHERE next_attempt_at IS NOT NULL AND disabled_at IS NULL
"""


def body_of(row: asyncpg.Record) -> bytes:
    """The delivery's body: the same bytes on every attempt (the event row does not change)."""
    at: datetime = row["occurred_at"]
    return orjson.dumps({
        "type": row["type"],
        "timestamp": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": row["data"],
    })


def retry_after(raw: str | None) -> float | None:
    """Seconds of a Retry-After header (delta-seconds or an HTTP date), None when absent or bad."""
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(exc: BaseException, url: str, timeout: float) -> str:
    """What went wrong, in words that never carry an address the URL's name resolved to."""
    host = URL(url).host or "the host"
    if isinstance(exc, ForbiddenTargetError):
        return str(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect to {host}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the endpoint closed the connection without answering"
    return f"the request failed ({type(exc).__name__})"


class Sender:
    """POSTs a signed body to a subscriber's endpoint, never following a redirect."""

    def __init__(self, session: aiohttp.ClientSession, guard: Guard, timeout: float) -> None:
        self.session = session
        self.guard = guard
        self.timeout = timeout

    async def post(self, sub: Subscription, msg_id: str, body: bytes) -> Answer:
        started = time.perf_counter()
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": notify.signature_header(sub.keys, msg_id, ts, body),
        }
        try:
            self.guard.check_url(sub.url)  # names are checked after resolution by the session
            async with self.session.post(
                sub.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.content.read(EXCERPT_CHARS * 4)
                return Answer(
                    resp.status, _ms(started), raw.decode("utf-8", "replace")[:EXCERPT_CHARS],
                    retry_after=retry_after(resp.headers.get("Retry-After")),
                )
        except (ForbiddenTargetError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Answer(None, _ms(started), error=_describe(exc, sub.url, self.timeout))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@dataclass(frozen=True)
class Verdict:
    status: str  # pending (retry), delivered, failed (given up)
    wait: float = 0.0  # seconds until the retry
    note: str | None = None
    disable: bool = False


def judge(answer: Answer, attempts_before: int, schedule: Sequence[float], jitter: float,
          retry_after_max: float, rand: Callable[[], float] = random.random) -> Verdict:
    """What an attempt's answer means for its delivery (see the module's docstring)."""
    if answer.status is not None and 200 <= answer.status < 300:
        return Verdict("delivered")
    if answer.status == 410:
        return Verdict("pending", note="410 Gone: the subscription was disabled", disable=True)
    made = attempts_before + 1
    what = f"HTTP {answer.status}" if answer.status is not None else answer.error or "no answer"
    if made >= len(schedule):
        return Verdict("failed", note=f"gave up after {made} attempts (last: {what})")
    wait = schedule[made] * (1 + jitter * (2 * rand() - 1))
    if answer.status in SLOW_DOWN and answer.retry_after is not None:
        wait = max(wait, min(answer.retry_after, retry_after_max))
    return Verdict("pending", wait=wait, note=f"attempt {made} failed: {what}")


class Deliverer:
    """Serves due subscriptions, up to NOTIFY_CONCURRENCY at once in this process."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, sender: Sender, box: CredentialBox) -> None:
        self.pool = pool
        self.settings = settings
        self.sender = sender
        self.box = box
        self.token = f"notify:{uuid.uuid4().hex}"
        self.schedule = settings.notify_schedule
        # long enough for a turn: it starts no new attempt once half of it has gone
        self.lease = max(60.0, 4 * settings.notify_timeout_seconds)
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    async def claim(self) -> int:
        """Start serving due subscriptions while there is room; returns how many started."""
        room = self.settings.notify_concurrency - len(self.tasks)
        if room <= 0:
            return 0
        rows = await self.pool.fetch(CLAIM_SQL, room, self.token, self.lease,
                                     self.settings.notify_rotation_grace_seconds)
        for r in rows:
            try:
                keys = tuple(self.box.open_bytes(k) for k in (r["secret"], r["previous_secret"]) if k is not None)
            except ValueError:
                log.error("notify.secret_unreadable", subscription=r["id"])
                continue  # its lease lapses; rotate-secret with the right SECRET_KEY_OLD fixes it
            task = asyncio.create_task(self.serve(Subscription(r["id"], r["url"], keys)))
            self.tasks.add(task)
            task.add_done_callback(self._done)
        return len(rows)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("notify.serve_crashed", exc_info=exc)

    async def serve(self, sub: Subscription) -> None:
        """One turn of a subscription: its due deliveries in order, then the lease goes back."""
        batch = max(1, self.settings.notify_batch)
        turn_ends = time.monotonic() + self.lease / 2
        rows = await self.pool.fetch(PENDING_SQL, sub.id, self.token, batch)
        if not rows:
            return  # the lease was lost
        pending = [r for r in rows if r["id"] is not None]
        for r in pending:
            if not r["due"]:
                await self._release(sub, wait_until=r["next_attempt_at"])
                return
            if not r["visible"]:
                await self.pool.execute(DROP_SQL, r["id"], self.token,
                                        "the subscriber can no longer see the image", sub.id)
                continue
            answer = await self.sender.post(sub, r["msg_id"], body_of(r))
            verdict = judge(answer, r["attempts"], self.schedule, self.settings.notify_retry_jitter,
                            self.settings.notify_retry_after_max_seconds)
            due_at = await self.pool.fetchval(
                RECORD_SQL, r["id"], sub.id, self.token, answer.status, answer.duration_ms,
                answer.excerpt, answer.error, verdict.status, verdict.wait, verdict.note,
            )
            if due_at is None:
                return  # the lease was lost: another deliverer has the subscription
            if verdict.disable:
                await self.pool.execute(DISABLE_SQL, sub.id, self.token, "the endpoint answered 410 Gone")
                log.info("notify.disabled", subscription=sub.id)
                return
            if verdict.status == "pending":
                await self._release(sub, wait_until=due_at)
                return
            if time.monotonic() > turn_ends:
                await self._release(sub, seen=None)
                return
        await self._release(sub, seen=rows[0]["enqueued"] if len(pending) < batch else None)

    async def _release(self, sub: Subscription, *, wait_until: datetime | None = None, seen: int | None = None) -> None:
        await self.pool.execute(RELEASE_SQL, sub.id, self.token, wait_until, seen)

    async def next_due_in(self) -> float | None:
        """Seconds until the next subscription is due (0 if one is), None if none waits."""
        at = await self.pool.fetchval(NEXT_DUE_SQL)
        if at is None:
            return None
        return max(0.0, (at - datetime.now(UTC)).total_seconds())

    async def drain(self, seconds: float) -> None:
        """Let the turns in flight finish for `seconds`, then cancel them (their leases
        lapse and another deliverer sends what they had not recorded)."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=seconds)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
