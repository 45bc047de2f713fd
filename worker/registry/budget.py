"""The request budget of each registry host, shared by every worker replica (SPEC §4 Fair
sharing), kept in Redis by three small Lua scripts.

Per host (limits.py, REGISTRY_LIMITS):
- concurrency: a counting semaphore whose holders expire, so a killed worker's slots come
  back by themselves;
- rate: GCRA with reservations: each request reserves the next free send time and sleeps
  exactly until then, so waiting requests never poll and the fleet's sends stay spaced;
- pulls: a token bucket of manifest GETs; Docker Hub's `ratelimit-limit` /
  `ratelimit-remaining` headers set its size and lower it to what the hub says is left;
- pause: a 429 pauses the host for the whole fleet for its Retry-After.

Pulls and pauses are kept per *bucket*: anonymous requests share the host's bucket, and each
set of credentials has its own (keyed by a hash of the user name, never the secret:
`credential_key`), learned from the answers to its own requests. Docker Hub counts pulls per
account (anonymous ones per address), so one account's exhausted quota, or a 429 earned by
its own token, pauses only the syncs that use those credentials; everyone else's requests go
on. Concurrency and rate stay per host: they protect the registry, whoever asks.

A wait of at most REGISTRY_WAIT_MAX_SECONDS is slept; a longer one raises HostBusyError
(not retried by the client), and the sync hands its image back due when the host can be
asked again, without holding worker capacity meanwhile. Redis down: every process applies
the same limits by itself (LocalLimiter), says so once, and goes back to Redis when it
answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from core import metrics
from core.crypto import Credentials
from worker.registry.errors import HostBusyError
from worker.registry.limits import GRANTED, PAUSED, PULLS, REASONS, SATURATED, HostLimits, LimitTable, LocalLimiter

log = structlog.get_logger("worker.budget")

DEFAULT_PAUSE = 10.0  # a 429 without Retry-After pauses its host this long
SATURATED_RETRY = 5.0  # a sync handed back because its host's slots are all taken: due in ~this
REDIS_RETRY_AFTER = 5.0  # after a Redis failure, limits stay local this long before trying again
PAUSE_CHECK_EVERY = 0.2  # hosts without fleet limits: how stale this process's view of a pause may be
RATELIMIT_FLOOR = 10  # Docker Hub pulls kept in reserve (for people pulling by hand)

# KEYS: holders (zset), tat (string), pulls (hash), pause (string)
# ARGV: holder id, concurrency, interval ms, tolerance ms, hold ms, max wait ms, pull (0/1),
#       pull capacity, pull refill per ms
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[4])
if paused > 0 then return {1, paused} end
local conc = tonumber(ARGV[2])
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= conc then return {2, 0} end
end
local interval = tonumber(ARGV[3])
local tat = now
local delay = 0
if interval > 0 then
  tat = math.max(tonumber(redis.call('GET', KEYS[2]) or 0), now)
  delay = math.max(0, tat - tonumber(ARGV[4]) - now)
  if delay > tonumber(ARGV[6]) then return {3, math.ceil(delay)} end
end
local tokens = nil
local cap, per_ms
if ARGV[7] == '1' then
  local b = redis.call('HMGET', KEYS[3], 'tokens', 'ts', 'cap', 'per_ms')
  cap = tonumber(b[3] or ARGV[8])
  per_ms = tonumber(b[4] or ARGV[9])
  if cap > 0 and per_ms > 0 then
    tokens = math.min(cap, tonumber(b[1] or cap) + (now - tonumber(b[2] or now)) * per_ms)
    if tokens < 1 then return {4, math.ceil((1 - tokens) / per_ms)} end
  end
end
if conc > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]) + 1000)
end
if interval > 0 then
  redis.call('SET', KEYS[2], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000)
end
if tokens then
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - 1), 'ts', now,
             'cap', tostring(cap), 'per_ms', tostring(per_ms))
  redis.call('PEXPIRE', KEYS[3], math.ceil(cap / per_ms) + 60000)
end
return {0, math.ceil(delay)}
"""

# KEYS: pause. ARGV: ms. Never shortens a longer pause. Returns the pause now in force, ms.
PAUSE_LUA = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return tonumber(ARGV[1])
end
return left
"""

# KEYS: pulls. ARGV: pulls left (after the floor), capacity, refill per ms.
REMAINING_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local cap = tonumber(ARGV[2])
local per_ms = tonumber(ARGV[3])
local tokens = math.min(cap, tonumber(b[1] or cap) + (now - tonumber(b[2] or now)) * per_ms, tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now,
           'cap', tostring(cap), 'per_ms', tostring(per_ms))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / per_ms) + 60000)
return math.floor(tokens)
"""


def credential_key(credentials: Credentials | None) -> str | None:
    """The budget bucket of `credentials`: a hash of the user name (never of the secret, which
    must not reach Redis or the logs), the same in every worker process; None: anonymous."""
    if credentials is None:
        return None
    return hashlib.sha256(credentials.username.encode(errors="replace")).hexdigest()[:24]


def bucket_name(host: str, credential: str | None) -> str:
    """How this process names the bucket of `credential` on `host` (the host: anonymous)."""
    return host if credential is None else f"{host}#{credential}"


def _keys(host: str, credential: str | None = None) -> list[str]:
    base = f"rs:budget:{{{host}}}"  # one hash slot per host (Redis Cluster)
    bucket = base if credential is None else f"{base}:cred:{credential}"
    return [f"{base}:hold", f"{base}:tat", f"{bucket}:pulls", f"{bucket}:pause"]


@dataclass
class Permit:
    """One request's slot; `release()` once the answer is in."""

    budget: Budget
    host: str
    holder: str | None  # the Redis holder id, None when nothing is held in Redis
    local: bool  # held in this process's LocalLimiter
    credential: str | None = None  # the bucket (credential_key) the request was counted in

    async def release(self) -> None:
        await self.budget._release(self)


class Budget:
    def __init__(self, table: LimitTable, redis_url: str | None, *, wait_max: float, hold_seconds: float) -> None:
        """`hold_seconds`: how long a holder counts if its worker dies (above a request's
        total time). Without `redis_url` the limits are per process only."""
        self.table = table
        self.wait_max = wait_max
        self._hold_ms = int(hold_seconds * 1000)
        self._local = LocalLimiter()
        self._redis = (
            aioredis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
            if redis_url else None
        )
        if self._redis is not None:
            self._acquire = self._redis.register_script(ACQUIRE_LUA)
            self._pause = self._redis.register_script(PAUSE_LUA)
            self._remaining = self._redis.register_script(REMAINING_LUA)
        self._redis_down_until = 0.0 if redis_url else float("inf")
        self._pause_seen: dict[str, tuple[float, float]] = {}  # bucket -> (checked at, paused until)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    # ------------------------------------------------------------------ Redis or local

    def _use_redis(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: BaseException) -> None:
        if self._redis_down_until == 0.0:  # once per outage
            log.warning("budget.redis_unavailable", error=type(exc).__name__,
                        fallback="registry limits apply per process until Redis answers")
            metrics.BUDGET_FALLBACKS.inc()
        self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER

    def _redis_answered(self) -> None:
        if self._redis_down_until != 0.0:
            log.info("budget.redis_back")
            self._redis_down_until = 0.0

    async def _try(self, host: str, limits: HostLimits, holder: str, pull: bool,
                   credential: str | None) -> tuple[int, float, bool]:
        """(outcome, ms, local) of one attempt."""
        max_wait_ms = self.wait_max * 1000
        if self._redis is not None and self._use_redis():
            args: list[str | int | float] = [
                holder, limits.concurrency, limits.interval_ms, limits.tolerance_ms, self._hold_ms + max_wait_ms,
                max_wait_ms, int(pull), limits.pulls, limits.pull_per_ms,
            ]
            try:
                outcome, ms = await self._acquire(keys=_keys(host, credential), args=args)
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
            else:
                self._redis_answered()
                return int(outcome), float(ms), False
        outcome, ms = self._local.try_acquire(host, limits, pull=pull, max_wait_ms=max_wait_ms,
                                              bucket=bucket_name(host, credential))
        return outcome, ms, True

    async def _paused_ms(self, host: str, credential: str | None = None, *, fresh: bool = False) -> float:
        """How long `host` (for `credential`'s requests) stays paused, as Redis (else this
        process) knows it; asked at most every PAUSE_CHECK_EVERY seconds per bucket unless
        `fresh`."""
        now = time.monotonic()
        bucket = bucket_name(host, credential)
        checked, until = self._pause_seen.get(bucket, (0.0, 0.0))
        if fresh or now - checked >= PAUSE_CHECK_EVERY:
            until = now + self._local.paused_ms(bucket) / 1000
            if self._redis is not None and self._use_redis():
                try:
                    ms = await self._redis.pttl(_keys(host, credential)[3])
                except (RedisError, OSError) as exc:
                    self._redis_failed(exc)
                else:
                    self._redis_answered()
                    until = max(until, now + max(int(ms), 0) / 1000)
            self._pause_seen[bucket] = (now, until)
        return max(0.0, until - now) * 1000

    # ------------------------------------------------------------------ the API

    async def acquire(self, host: str, *, pull: bool = False, credential: str | None = None) -> Permit:
        """A slot for one request to `host` (`pull`: a manifest GET) sent with the credentials
        keyed `credential` (None: anonymous), whose own pulls and pauses count. Sleeps a short
        wait; raises HostBusyError (give_up: not retried by the client) for a long one."""
        limits = self.table.for_host(host, credential is not None)
        started = time.monotonic()
        deadline = started + self.wait_max
        holder = uuid.uuid4().hex
        poll = 0.01
        while True:
            if limits.shared:
                outcome, ms, local = await self._try(host, limits, holder, pull, credential)
            else:
                ms = await self._paused_ms(host, credential)
                outcome, local = (PAUSED if ms > 0 else GRANTED), False
            if outcome == GRANTED:
                permit = Permit(self, host, None if local or not limits.concurrency else holder, local, credential)
                metrics.BUDGET_IN_FLIGHT.labels(registry=host).inc()
                if ms > 0:
                    turn = time.monotonic() + ms / 1000
                    await asyncio.sleep(ms / 1000)
                    # a 429 may have paused the host while this request waited for its turn
                    if await self._paused_ms(host, credential, fresh=True) > 0:
                        await permit.release()
                        continue
                    # Woken a whole interval after its turn (this process was busy): sent now
                    # it would crowd the turns of the requests after it, and the host would
                    # see more than its rate in that second. It takes a new turn instead.
                    if limits.rate > 0 and time.monotonic() - turn > limits.interval_ms / 1000:
                        await permit.release()
                        metrics.BUDGET_LATE.labels(registry=host).inc()
                        continue
                waited = time.monotonic() - started
                if waited > 0.001:
                    metrics.BUDGET_WAIT.labels(registry=host).observe(waited)
                return permit
            wait = ms / 1000
            if outcome == SATURATED:
                wait, poll = poll * random.uniform(0.5, 1.5), min(poll * 2, 0.2)  # noqa: S311 - jitter
            if time.monotonic() + wait > deadline:
                retry = SATURATED_RETRY * random.uniform(0.5, 1.5) if outcome == SATURATED else wait  # noqa: S311
                metrics.BUDGET_BUSY.labels(registry=host, reason=REASONS[outcome]).inc()
                own = credential is not None and outcome in (PAUSED, PULLS)
                whose = "the budget of these credentials" if own else "the registry's budget"
                err = HostBusyError(
                    f"{host}: {whose} is used ({REASONS[outcome]}); ask again in {retry:.0f}s",
                    retry_after=max(retry, 1.0),
                )
                err.give_up = True
                raise err
            await asyncio.sleep(wait)

    async def _release(self, permit: Permit) -> None:
        metrics.BUDGET_IN_FLIGHT.labels(registry=permit.host).dec()
        if permit.local:
            self._local.release(permit.host)
        elif permit.holder is not None and self._redis is not None:
            try:
                await self._redis.zrem(_keys(permit.host)[0], permit.holder)
            except (RedisError, OSError) as exc:  # the holder expires by itself
                self._redis_failed(exc)

    async def pause(self, host: str, seconds: float, cause: str, credential: str | None = None) -> float:
        """Pause `host` for the whole fleet (never shortening a longer pause): its anonymous
        requests, or with `credential` only the requests sent with those credentials.
        Returns the pause in force, seconds."""
        ms = max(1, int(seconds * 1000))
        bucket = bucket_name(host, credential)
        self._local.pause(bucket, ms)
        self._pause_seen.pop(bucket, None)
        in_force = float(ms)
        if self._redis is not None and self._use_redis():
            try:
                in_force = float(await self._pause(keys=[_keys(host, credential)[3]], args=[ms]))
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
        metrics.BUDGET_PAUSES.labels(registry=host, cause=cause if credential is None else f"{cause}_credentials").inc()
        log.warning("budget.host_paused", registry=host, seconds=round(in_force / 1000, 1), cause=cause,
                    bucket=credential or "anonymous")
        return in_force / 1000

    async def paused_for(self, host: str, credential: str | None = None) -> float:
        """Seconds left of a pause of `host` for requests with the credentials keyed
        `credential` (None: anonymous requests); 0 when they may be sent."""
        return await self._paused_ms(host, credential) / 1000

    async def note_ratelimit(self, host: str, limit_header: str | None, remaining_header: str | None,
                             credential: str | None = None) -> None:
        """Docker Hub's `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600`
        on an answer to a request sent with the credentials keyed `credential` (None:
        anonymous): that bucket of `host` never counts more than the hub says is left."""
        remaining = _leading_number(remaining_header)
        if remaining is None:
            return
        if credential is None:  # per credentials it would be a label per account
            metrics.BUDGET_PULLS_REMAINING.labels(registry=host).set(remaining)
        limit, window = _leading_number(limit_header), _window(remaining_header) or _window(limit_header)
        configured = self.table.for_host(host, credential is not None)
        cap = limit if limit else float(configured.pulls)
        window = window or configured.pull_window
        if cap <= 0 or window <= 0:
            return
        per_ms = cap / (window * 1000)
        left = remaining - RATELIMIT_FLOOR
        self._local.note_remaining(bucket_name(host, credential), left, cap, per_ms)
        if self._redis is not None and self._use_redis():
            try:
                await self._remaining(keys=[_keys(host, credential)[2]], args=[left, cap, per_ms])
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)


def _leading_number(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return float(header.split(";")[0].split(",")[0].strip())
    except ValueError:
        return None


def _window(header: str | None) -> float | None:
    for part in (header or "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "w":
            try:
                return float(value)
            except ValueError:
                return None
    return None
