"""One HTTP exchange with a registry host: guard, per-host concurrency, timeout, manual
redirects, size limits, Docker Hub rate-limit headers. No auth and no retries (client.py)."""

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
from worker.registry.errors import RegistryProtocolError, RegistryUnavailableError
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
        self.ratelimit_remaining: dict[str, int] = {}  # last Docker Hub reading per host
        self.ratelimit_floor = RATELIMIT_FLOOR
        self.ratelimit_pause = RATELIMIT_PAUSE
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._slow_until: dict[str, float] = {}

    def _semaphore(self, host: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(host)
        if sem is None:
            sem = self._semaphores[host] = asyncio.Semaphore(self.per_host_limit)
        return sem

    def _note_ratelimit(self, host: str, headers: Mapping[str, str]) -> None:
        raw = headers.get("ratelimit-remaining")
        if not raw:
            return
        try:
            remaining = int(raw.split(";")[0].strip())
        except ValueError:
            return
        self.ratelimit_remaining[host] = remaining
        if remaining < self.ratelimit_floor:
            self._slow_until[host] = time.monotonic() + self.ratelimit_pause

    async def send(
        self,
        method: str,
        url: str,
        kind: str,
        headers: dict[str, str],
        host: str,
        limit: int,
    ) -> Reply:
        """One request, following redirects by hand: every hop passes the guard, and
        Authorization is dropped once a hop leaves the origin. Any status is returned."""
        delay = self._slow_until.get(host, 0.0) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        origin = urlsplit(url)[:2]
        hop_headers = dict(headers)
        async with self._semaphore(host):
            for _ in range(MAX_REDIRECTS + 1):
                self.guard.check_url(url)
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
                        self._note_ratelimit(host, resp.headers)
                        return Reply(resp.status, resp.headers, body, url)
                except TimeoutError as exc:
                    metrics.registry_request(host, "timeout")
                    raise RegistryUnavailableError(
                        f"{where(method, url)}: no answer within {self.timeout:g}s"
                    ) from exc
                except aiohttp.ClientError as exc:
                    metrics.registry_request(host, "connection_error")
                    hint = ""
                    if isinstance(exc, aiohttp.ClientSSLError) and urlsplit(url).scheme == "https":
                        # what a registry that serves plain HTTP looks like over TLS
                        hint = (f": TLS failed; if {host} serves plain HTTP, add it to INSECURE_REGISTRIES"
                                f" (registry-sync dev --insecure-registry {host})")
                    raise RegistryUnavailableError(
                        f"{where(method, url)}: connection failed ({type(exc).__name__}){hint}"
                    ) from exc
        raise RegistryProtocolError(
            f"{where(method, url)}: more than {MAX_REDIRECTS} redirects", transient=False
        )


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
