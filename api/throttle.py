"""Failed-authentication throttling shared by every web process (SPEC §6), the client
address it is keyed by, and the fixed-window counter in Redis that it (and the per-account
rate limits of api/account_limits.py) count with.

A wrong API key or webhook secret is counted, in Redis, per account name (per receiver for
webhooks), per client address, per client network (/24 or /64) and over the whole service,
each in a fixed window. Once a count passes its limit, further *wrong* attempts of that
name, address or network are answered 429 with Retry-After until the window ends. A correct
key is always checked and served: throttling never refuses it, so neither a neighbour behind
the same NAT nor an attacker spraying a victim's name can lock a valid user out. (Keys and
secrets are long random strings, so a guess that gets through is not the risk; the load and
the noise of a spray are.)

Redis unreachable: counts fall back to this process alone (logged once, and again when Redis
answers), so nobody is locked out and a spray is still slowed per process.

The client address is the TCP peer, unless the peer is a trusted proxy (TRUSTED_PROXIES):
then it is the rightmost `X-Forwarded-For` hop that is not a trusted proxy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from api.errors import ThrottledError
from api.keys import SETTINGS
from core.address_policy import IPNetwork
from core.settings import ConfigError, Settings

log = structlog.get_logger("api.throttle")

REDIS_TIMEOUT = 0.5  # a failed attempt waits at most this long for the shared count
REDIS_RETRY_SECONDS = 5.0  # after a Redis failure, count locally this long before trying again
KEY_PREFIX = "rs:authfail"
# Limits of the wider scopes, as multiples of AUTH_FAILURE_LIMIT.
NETWORK_FACTOR = 5
SERVICE_FACTOR = 50


def parse_trusted_proxies(raw: str) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES: comma- or space-separated CIDRs or addresses."""
    out: list[IPNetwork] = []
    for entry in raw.replace(",", " ").split():
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"TRUSTED_PROXIES entry {entry!r} is not a network or an address") from None
    return tuple(out)


def _hop(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For entry as an address: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:80`."""
    value = raw.strip()
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def client_address(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    """Who sent `request`: its peer, or through trusted proxies the rightmost untrusted hop
    of X-Forwarded-For (hops further left were written by the client itself)."""
    peer = request.remote or "unknown"
    if not trusted:
        return peer
    shown, current = peer, _hop(peer)
    hops = [h for value in request.headers.getall("X-Forwarded-For", ()) for h in value.split(",")]
    while current is not None and hops and any(current in n for n in trusted if n.version == current.version):
        raw = hops.pop().strip()
        current = _hop(raw)
        # a proxy wrote something unreadable: count by what it wrote
        shown = str(current) if current is not None else raw[:64]
    return shown or peer


def _network(address: str) -> str | None:
    ip = _hop(address)
    if ip is None:
        return None
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass
class _LocalCounts:
    """The per-process fallback: the same fixed windows, in memory, bounded."""

    size: int = 100_000
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def incr(self, keys: list[str], window: float) -> list[tuple[int, float]]:
        now = time.monotonic()
        if len(self.windows) > self.size:
            self.windows = {k: v for k, v in self.windows.items() if v[0] > now}
            if len(self.windows) > self.size:  # a spray of names or addresses: forget them all
                self.windows.clear()
        out = []
        for key in keys:
            ends, count = self.windows.get(key, (0.0, 0))
            if ends <= now:
                ends, count = now + window, 0
            self.windows[key] = (ends, count + 1)
            out.append((count + 1, ends - now))
        return out


class WindowCounter:
    """Counts in fixed windows of `window` seconds, shared by every web process through Redis
    (keys under `prefix`); in this process alone while Redis does not answer (logged once,
    and again when it answers)."""

    def __init__(self, redis: aioredis.Redis | None, *, window: float, prefix: str) -> None:
        self.redis = redis
        self.window = window
        self.prefix = prefix
        self.local = _LocalCounts()
        self._redis_down_until = 0.0
        self._redis_down = False

    async def incr(self, keys: list[str]) -> list[tuple[int, float]]:
        """Count one more of each key: (count in its window, seconds until the window ends)."""
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for key in keys:
                        full = f"{self.prefix}:{key}"
                        # the window starts with the first count (SET NX EX: any Redis >= 2.6.12)
                        pipe.set(full, 0, ex=max(1, round(self.window)), nx=True)
                        pipe.incr(full)
                        pipe.ttl(full)
                    replies = await pipe.execute()
            except Exception as exc:  # any Redis failure: count in this process
                self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
                if not self._redis_down:
                    self._redis_down = True
                    log.warning("throttle.redis_unavailable", error=type(exc).__name__, counts=self.prefix)
            else:
                if self._redis_down:
                    self._redis_down = False
                    log.info("throttle.redis_available", counts=self.prefix)
                return [(int(replies[i + 1]), float(max(replies[i + 2], 1))) for i in range(0, len(replies), 3)]
        return self.local.incr(keys, self.window)


class Throttle:
    def __init__(self, redis: aioredis.Redis | None, *, limit: int, window: float) -> None:
        self.limit = limit
        self.counts = WindowCounter(redis, window=window, prefix=KEY_PREFIX)

    async def failed(self, scope: str, name: str, client: str) -> float:
        """Count one wrong attempt; seconds to wait (Retry-After) when it is throttled, else 0."""
        # a name is whatever the caller sent: hashed, so a key's size is bounded
        hashed = hashlib.sha256(name.encode(errors="replace")).hexdigest()[:32]
        limits = {f"{scope}:name:{hashed}": self.limit, f"{scope}:addr:{client}": self.limit,
                  f"{scope}:all": self.limit * SERVICE_FACTOR}
        if (net := _network(client)) is not None:
            limits[f"{scope}:net:{net}"] = self.limit * NETWORK_FACTOR
        keys = list(limits)
        counts = await self.counts.incr(keys)
        waits = [ttl for key, (count, ttl) in zip(keys, counts, strict=True) if count > limits[key]]
        return max(1.0, max(waits)) if waits else 0.0


THROTTLE = web.AppKey("throttle", Throttle)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple)
# what each account made the service do, per ACCOUNT_LIMIT_WINDOW_SECONDS (api/account_limits.py)
ACCOUNT_COUNTS = web.AppKey("account_counts", WindowCounter)


def configure(app: web.Application, settings: Settings) -> None:
    """Parse the settings into the app (no I/O; the Redis client connects on first use)."""
    app[TRUSTED_PROXIES] = parse_trusted_proxies(settings.trusted_proxies)
    app.cleanup_ctx.append(_throttle_ctx)


async def _throttle_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    client = aioredis.Redis.from_url(
        s.redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    app[THROTTLE] = Throttle(client, limit=s.auth_failure_limit, window=s.auth_failure_window_seconds)
    app[ACCOUNT_COUNTS] = WindowCounter(client, window=s.account_limit_window_seconds, prefix="rs:account")
    yield
    await client.aclose()


def request_client(request: web.Request) -> str:
    return client_address(request, request.app[TRUSTED_PROXIES])


async def count_failure(request: web.Request, scope: str, name: str) -> None:
    """Count a wrong attempt of `name` from this request's client; raise 429 when throttled."""
    wait = await request.app[THROTTLE].failed(scope, name, request_client(request))
    if wait:
        raise ThrottledError(
            "too many failed authentication attempts; try again later",
            headers={"Retry-After": str(int(wait + 0.999))},
        )
