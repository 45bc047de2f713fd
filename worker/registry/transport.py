"""One HTTP exchange with a registry host: guard, per-host concurrency in this process, the
fleet-wide budget of the host (budget.py, when the worker's Runtime sets one), timeout,
manual redirects, size limits, 429 pauses and Docker Hub rate-limit headers. No auth and no
retries (client.py)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from core import metrics
from worker.registry.budget import DEFAULT_PAUSE, Budget, bucket_name
from worker.registry.errors import RegistryProtocolError, RegistryUnavailableError, parse_retry_after
from worker.registry.guard import Guard

MAX_REDIRECTS = 5
RATELIMIT_FLOOR = 10  # Docker Hub ratelimit-remaining below this: slow down
RATELIMIT_PAUSE = 2.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str  # after redirects


def where(method: str, url: str) -> str:
    """ "GET host/path" for messages: never the query string."""
    parts = urlsplit(url)
    return f"{method} {parts.netloc}{parts.path}"


class Transport:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        guard: Guard,
        *,
        timeout: float,
        per_host_limit: int,
    ) -> None:
        self._session = session
        self.guard = guard
        self.timeout = timeout
        self.per_host_limit = per_host_limit
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        # last Docker Hub reading per bucket (budget.bucket_name: the host when anonymous)
        self.ratelimit_remaining: dict[str, int] = {}
        self.ratelimit_floor = RATELIMIT_FLOOR
        self.ratelimit_pause = RATELIMIT_PAUSE
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._slow_until: dict[str, float] = {}  # by bucket
        # Set by the worker's Runtime: the fleet-wide budget of each host. None: this
        # process's per-host semaphore is the only limit (a client used on its own).
        self.budget: Budget | None = None
        # host -> monotonic time of its last timeout or connection failure (fair sharing
        # gives recently failing hosts a smaller share: worker/shares.py)
        self.last_failure: dict[str, float] = {}

    def _semaphore(self, host: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(host)
        if sem is None:
            sem = self._semaphores[host] = asyncio.Semaphore(self.per_host_limit)
        return sem

    def _note_ratelimit(self, bucket: str, headers: Mapping[str, str]) -> None:
        raw = headers.get("ratelimit-remaining")
        if not raw:
            return
        try:
            remaining = int(raw.split(";")[0].strip())
        except ValueError:
            return
        self.ratelimit_remaining[bucket] = remaining
        if remaining < self.ratelimit_floor:
            self._slow_until[bucket] = time.monotonic() + self.ratelimit_pause

    async def send(
        self,
        method: str,
        url: str,
        kind: str,
        headers: dict[str, str],
        host: str,
        limit: int,
        *,
        credential: str | None = None,
    ) -> Reply:
        """One request, following redirects by hand: every hop passes the guard, and
        Authorization is dropped once a hop leaves the origin. Any status is returned.
        `credential`: the budget bucket of the credentials it is sent with (budget.py
        credential_key; None: anonymous), whose pulls, pauses and rate-limit headers count."""
        delay = self._slow_until.get(bucket_name(host, credential), 0.0) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async with self._semaphore(host):
            # HostBusyError from here: the host may not be asked now (not retried)
            pull = method == "GET" and kind == "manifest"  # what Docker Hub counts as a pull
            permit = await self.budget.acquire(host, pull=pull, credential=credential) if self.budget else None
            try:
                return await self._exchange(method, url, kind, headers, host, limit, credential)
            finally:
                if permit is not None:
                    await permit.release()

    async def _exchange(
        self, method: str, url: str, kind: str, headers: dict[str, str], host: str, limit: int,
        credential: str | None,
    ) -> Reply:
        origin = urlsplit(url)[:2]
        hop_headers = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            self.guard.check_url(url)
            self.guard.check_hop(url, host)
            self.requests[(method, kind)] += 1
            try:
                async with self._session.request(
                    method,
                    URL(url, encoded=True),
                    headers=hop_headers,
                    allow_redirects=False,
                    timeout=self._client_timeout,
                ) as resp:
                    metrics.registry_request(host, resp.status)
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        url = urljoin(url, location)
                        if urlsplit(url)[:2] != origin:
                            hop_headers.pop("Authorization", None)
                        continue
                    body = b"" if method == "HEAD" else await _read(resp, limit, url)
                    self._note_ratelimit(bucket_name(host, credential), resp.headers)
                    if self.budget is not None:
                        await self._tell_budget(host, kind, resp.status, resp.headers, credential)
                    return Reply(resp.status, resp.headers, body, url)
            except TimeoutError as exc:
                self.last_failure[host] = time.monotonic()
                metrics.registry_request(host, "timeout")
                raise RegistryUnavailableError(
                    f"{where(method, url)}: no answer within {self.timeout:g}s"
                ) from exc
            except aiohttp.ClientError as exc:
                self.last_failure[host] = time.monotonic()
                metrics.registry_request(host, "connection_error")
                hint = ""
                if isinstance(exc, aiohttp.ClientSSLError) and urlsplit(url).scheme == "https":
                    # what a registry that serves plain HTTP looks like over TLS
                    hint = (f": TLS failed; if {host} serves plain HTTP, add it to INSECURE_REGISTRIES"
                            f" (while `registry-sync dev` runs: registry-sync dev --add-insecure-registry {host})")
                raise RegistryUnavailableError(
                    f"{where(method, url)}: connection failed ({type(exc).__name__}){hint}"
                ) from exc
        raise RegistryProtocolError(
            f"{where(method, url)}: more than {MAX_REDIRECTS} redirects", transient=False
        )

    async def _tell_budget(
        self, host: str, kind: str, status: int, headers: Mapping[str, str], credential: str | None
    ) -> None:
        """A 429 pauses the bucket the request was counted in for the whole fleet: the host's
        anonymous requests, or only those sent with the same credentials (the request itself
        fails as RateLimitedError and the client may retry it after Retry-After); rate-limit
        headers correct that bucket's pull count. A token service's 429 (Docker Hub's answer
        to repeated bad logins) pauses nothing: it refused a login, not the pulls."""
        assert self.budget is not None
        if status == 429 and kind != "token":
            wait = parse_retry_after(headers.get("Retry-After"))
            await self.budget.pause(host, wait if wait is not None else DEFAULT_PAUSE, "429", credential)
        if "ratelimit-remaining" in headers:
            await self.budget.note_ratelimit(
                host, headers.get("ratelimit-limit"), headers.get("ratelimit-remaining"), credential)


async def _read(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise RegistryProtocolError(
            f"{where('GET', url)}: answer larger than {limit} bytes", transient=False
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise RegistryProtocolError(
                f"{where('GET', url)}: answer larger than {limit} bytes", transient=False
            )
        chunks.append(chunk)
    return b"".join(chunks)
