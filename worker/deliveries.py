"""One delivery attempt by the Standard Webhooks spec (SPEC §7): the body, the signed POST,
and what its answer means. worker/deliverer.py decides what to send and when;
worker/delivery_log.py records the outcomes.

A failed attempt makes the delivery wait (NOTIFY_RETRY_SCHEDULE, jittered; at least a
429/502/503/504's `Retry-After`); after the last attempt it is given up (`failed`). `410 Gone`
disables the subscription. Redirects are not followed (a 3xx is a failure), and every request
passes the registries' address guard (worker/registry/guard.py): a literal-IP URL here, every
name after each DNS answer in the session's connector, so every new connection is checked;
kept-alive connections are reused. The session keeps no cookies: endpoints of different
subscribers on one host learn nothing of each other.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from yarl import URL

from core.address_policy import AddressPolicy
from core.notify import Signer
from worker.registry.errors import ForbiddenTargetError
from worker.registry.guard import Guard, GuardedConnector

EXCERPT_CHARS = 200  # of an answer's body, kept with the attempt
SLOW_DOWN = frozenset({429, 502, 503, 504})  # statuses whose Retry-After is honoured
USER_AGENT = "registry-sync-webhooks/1"


@dataclass(frozen=True)
class Subscription:
    id: int
    url: str
    signer: Signer  # the current secret, then a rotated one still honoured


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (refused, connection failed, timed out)
    duration_ms: float
    excerpt: str = ""
    error: str | None = None
    retry_after: float | None = None  # seconds


def body_of(row: Mapping[str, Any]) -> bytes:
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


def delivery_session(policy: AddressPolicy, *, timeout: float, limit: int) -> aiohttp.ClientSession:
    """The deliverer's one HTTP session: keep-alive connections (up to `limit`) behind the
    address guard, no proxies from the environment (they would bypass the guard's view of the
    destination) and no cookie jar."""
    connector = GuardedConnector(Guard(policy=policy), limit=limit, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": USER_AGENT},
    )


class Sender:
    """POSTs a signed body to a subscriber's endpoint, never following a redirect."""

    CHECKED_MAX = 10_000  # URLs whose literal-address verdict is remembered

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        connector = session.connector
        assert isinstance(connector, GuardedConnector), "the session must be delivery_session()'s"
        self.session = session
        self.guard = connector.guard
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # the guard's verdict on a URL's literal address (names: in the connector, per DNS
        # answer) depends on the URL and the settings alone, so each URL is parsed once
        self._checked: dict[str, str | None] = {}  # URL -> why it is refused (None: it is not)

    def _check(self, url: str) -> None:
        if url not in self._checked:
            if len(self._checked) >= self.CHECKED_MAX:
                self._checked.clear()
            try:
                self.guard.check_url(url)
                self._checked[url] = None
            except ForbiddenTargetError as exc:
                self._checked[url] = str(exc)
        if (refused := self._checked[url]) is not None:
            raise ForbiddenTargetError(refused)

    async def post(self, sub: Subscription, msg_id: str, body: bytes) -> Answer:
        started = time.perf_counter()
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sub.signer.header(msg_id, ts, body),
        }
        try:
            self._check(sub.url)
            async with self.session.post(
                sub.url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout,
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
