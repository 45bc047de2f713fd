"""Request limits per registry host (REGISTRY_LIMITS) and the per-process limiter that
applies them when Redis, which shares them across the fleet, does not answer.

REGISTRY_LIMITS is a JSON object keyed by registry host as the worker reaches it
(`registry-1.docker.io` for Docker Hub, `ghcr.io`, `127.0.0.1:5000`), plus `"*"` for every
other host. Each value names the fields it changes; the others keep their defaults:

    {"*": {"concurrency": 32, "rate": 50},
     "registry-1.docker.io": {"pulls": 5000},
     "registry.internal:5000": {"concurrency": 0, "rate": 0}}

- concurrency: requests in flight across the fleet (0: no limit)
- rate, burst: requests per second across the fleet, and how many may go at once after an
  idle spell (rate 0: no limit)
- pulls, pull_window: manifest GETs per window of seconds (Docker Hub's pull limit: GETs of
  manifests count, HEADs do not; 0: no such limit) of the anonymous requests, which share
  one bucket across the fleet
- credential_pulls: the same for each set of credentials, which has a bucket of its own
  (0: as many as `pulls`)

Defaults keep Docker Hub's published limits: 100 pulls per 6 hours anonymously (per address:
the fleet's), 200 per account with credentials (an image's own, or DOCKER_HUB_USERNAME /
DOCKER_HUB_TOKEN for the catalog). Counting every manifest GET as a pull is on the safe side
(Docker Hub counts an index and its platform manifest as one pull), and the hub's own
`ratelimit-limit` / `ratelimit-remaining` headers correct each bucket fleet-wide (budget.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import orjson

from core.settings import ConfigError

HUB_REGISTRY_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io"})
ANY_HOST = "*"

# outcomes of one attempt to take a request slot
GRANTED, PAUSED, SATURATED, RATE, PULLS = 0, 1, 2, 3, 4
REASONS = {PAUSED: "paused", SATURATED: "concurrency", RATE: "rate", PULLS: "pulls"}


@dataclass(frozen=True)
class HostLimits:
    concurrency: int = 0
    rate: float = 0.0
    burst: int = 1
    pulls: int = 0
    pull_window: float = 21600.0
    credential_pulls: int = 0

    @property
    def shared(self) -> bool:
        """Anything to count across the fleet (otherwise only pauses are checked)."""
        return bool(self.concurrency or self.rate or self.pulls)

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.rate if self.rate > 0 else 0.0

    @property
    def tolerance_ms(self) -> float:
        return (max(self.burst, 1) - 1) * self.interval_ms

    @property
    def pull_per_ms(self) -> float:
        return self.pulls / (self.pull_window * 1000.0) if self.pulls > 0 and self.pull_window > 0 else 0.0


ANY_DEFAULT = HostLimits(concurrency=64, rate=200.0, burst=20)


HUB_DEFAULT = HostLimits(concurrency=8, rate=10.0, burst=5, pulls=100, pull_window=21600.0, credential_pulls=200)


@dataclass(frozen=True)
class LimitTable:
    hosts: dict[str, HostLimits]
    other: HostLimits

    def for_host(self, host: str, authenticated: bool = False) -> HostLimits:
        """The limits of `host`; `authenticated`: with the pull bucket of one set of credentials."""
        limits = self.hosts.get(host.lower(), self.other)
        if authenticated and limits.credential_pulls:
            return dataclasses.replace(limits, pulls=limits.credential_pulls)
        return limits


_FIELDS = {f.name: f.type for f in dataclasses.fields(HostLimits)}


def _override(base: HostLimits, raw: object, where: str) -> HostLimits:
    if raw is None:
        return HostLimits()
    if not isinstance(raw, dict):
        raise ConfigError(f"REGISTRY_LIMITS: {where} must be an object of limits")
    changes: dict[str, float | int] = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            raise ConfigError(f"REGISTRY_LIMITS: {where}: unknown limit {key!r} (known: {', '.join(_FIELDS)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
            raise ConfigError(f"REGISTRY_LIMITS: {where}.{key} must be a number >= 0")
        changes[key] = int(value) if _FIELDS[key] == "int" else float(value)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse_limits(raw: str) -> LimitTable:
    """The limits of every host: defaults overridden field by field by REGISTRY_LIMITS.
    Raises ConfigError naming REGISTRY_LIMITS when it is not valid."""
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"REGISTRY_LIMITS is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("REGISTRY_LIMITS must be a JSON object keyed by registry host")
    other = _override(ANY_DEFAULT, data[ANY_HOST], '"*"') if ANY_HOST in data else ANY_DEFAULT
    hosts = dict.fromkeys(HUB_REGISTRY_HOSTS, HUB_DEFAULT)
    for host, value in data.items():
        if host == ANY_HOST:
            continue
        key = host.strip().lower()
        hosts[key] = _override(hosts.get(key, other), value, repr(host))
    return LimitTable(hosts, other)


class LocalLimiter:
    """The same limits kept in this process only: what a worker applies while Redis is
    unreachable (each process then allows the whole budget: the fleet may send more).
    Concurrency and rate are kept per host, pulls and pauses per bucket (budget.bucket_name:
    the host for anonymous requests, host#key for a set of credentials)."""

    def __init__(self) -> None:
        self._holders: dict[str, int] = {}
        self._tat: dict[str, float] = {}
        # bucket -> (tokens, at ms, capacity, refill per ms): configured, or learned from the host
        self._pulls: dict[str, tuple[float, float, float, float]] = {}
        self._paused: dict[str, float] = {}  # bucket -> until, ms

    @staticmethod
    def _now() -> float:
        return time.monotonic() * 1000.0

    def paused_ms(self, bucket: str) -> float:
        return max(0.0, self._paused.get(bucket, 0.0) - self._now())

    def pause(self, bucket: str, ms: float) -> None:
        until = self._now() + ms
        if until > self._paused.get(bucket, 0.0):
            self._paused[bucket] = until

    def try_acquire(self, host: str, limits: HostLimits, *, pull: bool, max_wait_ms: float,
                    bucket: str | None = None) -> tuple[int, float]:
        """(GRANTED, delay ms before sending) with the slot taken, or (reason, ms) with nothing
        taken. `bucket`: whose pulls and pauses count (default: the host's)."""
        bucket = bucket or host
        now = self._now()
        if (left := self.paused_ms(bucket)) > 0:
            return PAUSED, left
        if limits.concurrency and self._holders.get(host, 0) >= limits.concurrency:
            return SATURATED, 0.0
        tat, delay = now, 0.0
        if limits.interval_ms:
            tat = max(self._tat.get(host, 0.0), now)
            delay = max(0.0, tat - limits.tolerance_ms - now)
            if delay > max_wait_ms:
                return RATE, delay
        tokens: float | None = None
        have, at, cap, per_ms = (
            self._pulls.get(bucket) or (float(limits.pulls), now, float(limits.pulls), limits.pull_per_ms)
        )
        if pull and cap > 0 and per_ms > 0:
            tokens = min(cap, have + (now - at) * per_ms)
            if tokens < 1:
                return PULLS, (1 - tokens) / per_ms
        if limits.concurrency:
            self._holders[host] = self._holders.get(host, 0) + 1
        if limits.interval_ms:
            self._tat[host] = tat + limits.interval_ms
        if tokens is not None:
            self._pulls[bucket] = (tokens - 1, now, cap, per_ms)
        return GRANTED, delay

    def release(self, host: str) -> None:
        if self._holders.get(host, 0) > 0:
            self._holders[host] -= 1

    def note_remaining(self, bucket: str, remaining: float, cap: float, per_ms: float) -> None:
        """The host said how many pulls of `bucket` are left (less the floor): never count more."""
        now = self._now()
        have, at, _, _ = self._pulls.get(bucket, (cap, now, cap, per_ms))
        self._pulls[bucket] = (min(cap, have + (now - at) * per_ms, remaining), now, cap, per_ms)
