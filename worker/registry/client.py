"""Async client for the registry HTTP API V2 / OCI distribution (SPEC §2).

One RegistryClient and one session serve a whole worker process: the ping/challenge cache,
the token cache, the config cache and the per-host semaphores are instance state shared by
all coroutines of the event loop. Never touches the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from yarl import URL

from core.crypto import Credentials
from core.names import canonical_host
from worker.registry import manifests as mf
from worker.registry.auth import (
    Challenge,
    TokenCache,
    basic_header,
    parse_challenges,
    parse_token_response,
    pick_challenge,
)
from worker.registry.errors import (
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RegistryProtocolError,
    error_for_response,
)
from worker.registry.guard import Guard
from worker.registry.transport import Reply, Transport, where

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit
MAX_CONFIG_BYTES = 8 * 1024 * 1024
CONFIG_CACHE_SIZE = 4096
_FINGERPRINT_KEY = os.urandom(32)  # per process: fingerprints never leave memory


@dataclass(frozen=True)
class Target:
    host: str  # as in image names: "127.0.0.1:5000", "registry-1.docker.io"
    repository: str  # "team/app", "library/ubuntu"
    credentials: Credentials | None = None


@dataclass(frozen=True)
class TagResolution:
    """What a tag points at. When `unchanged`, only the HEAD was sent: `platform_digest`
    echoes the caller's known_platform_digest, and config_digest and layer are None."""

    tag: str
    digest: str
    platform_digest: str | None
    config_digest: str | None
    layer: mf.Layer | None  # None when unchanged, known, not fetched, or not an image
    unchanged: bool
    note: str | None = None


class RegistryClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        platform: str = "linux/amd64",
        timeout: float = 30.0,
        per_host_limit: int = 8,
        insecure_hosts: frozenset[str] = frozenset(),
        max_attempts: int = 4,
        max_retry_wait: float = 30.0,
        max_tag_pages: int = 100,
        backoff_base: float = 1.0,
        guard: Guard | None = None,
    ) -> None:
        """`guard` defaults to the one of a make_session() session, else to a guard that
        refuses private and loopback addresses."""
        self.guard = (
            guard or getattr(session.connector, "guard", None) or Guard(allow_private=False)
        )
        self.transport = Transport(
            session, self.guard, timeout=timeout, per_host_limit=per_host_limit
        )
        self.requests = self.transport.requests  # counts of (method, kind) sent
        self.ratelimit_remaining = self.transport.ratelimit_remaining
        self.platform = platform
        self.timeout = timeout
        self.per_host_limit = per_host_limit
        self.insecure_hosts = frozenset(canonical_host(h) for h in insecure_hosts)
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max_retry_wait
        self.max_tag_pages = max_tag_pages
        self.backoff_base = backoff_base
        self._tokens = TokenCache()
        self._challenges: dict[str, Challenge | None] = {}
        self._ping_locks: dict[str, asyncio.Lock] = {}
        self._configs: OrderedDict[str, mf.Layer] = OrderedDict()
        self._config_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        """Forget cached state; the session belongs to the caller, who closes it."""
        self._configs.clear()
        self._challenges.clear()

    def base_url(self, host: str) -> str:
        scheme = "http" if canonical_host(host) in self.insecure_hosts else "https"
        return f"{scheme}://{host}"

    # ---------------------------------------------------------------- public API

    async def list_tags(self, target: Target) -> list[str]:
        """All tags in registry order, deduplicated and filtered (manifests.filter_tags).
        Follows Link pagination up to max_tag_pages (then RegistryProtocolError: a partial
        list would make the sync delete tags); stops on a Link that loops back.
        Raises RepositoryNotFoundError for an unknown repository."""
        url = f"{self.base_url(target.host)}/v2/{target.repository}/tags/list?n=1000"
        tags: dict[str, None] = {}
        seen: set[str] = set()
        for _ in range(self.max_tag_pages):
            seen.add(url)
            reply = await self._call(target, "GET", url, "tags", limit=MAX_CONFIG_BYTES)
            tags.update(dict.fromkeys(mf.parse_tags_page(reply.body)))
            nxt = mf.next_link(reply.headers.get("Link"), url)
            if nxt is None or nxt in seen:
                return list(tags)
            url = nxt
        raise RegistryProtocolError(
            f"{target.host}/{target.repository}: more than {self.max_tag_pages} pages of tags",
            transient=False,
        )

    async def resolve_tag(
        self,
        target: Target,
        tag: str,
        *,
        known_digest: str | None = None,
        known_platform_digest: str | None = None,
        known_configs: Container[str] = (),
    ) -> TagResolution:
        """With a `known_digest`, HEAD the tag first and stop there when it is unchanged;
        otherwise GET the manifest (by digest after a HEAD, by tag when there is nothing to
        compare: its Docker-Content-Digest names it, so a HEAD would only add a request),
        pick the platform child of an index, and read the config blob unless its digest is
        in `known_configs`. Raises ManifestNotFoundError when the tag is gone. A missing
        platform is a TagResolution with config_digest None and a note, not an error.
        known_platform_digest is only echoed back on an unchanged answer."""
        base = f"{self.base_url(target.host)}/v2/{target.repository}/manifests/"
        digest = None
        if known_digest is not None:
            head = await self._call(target, "HEAD", base + tag, "manifest")
            digest = head.headers.get("Docker-Content-Digest")
            if digest and digest == known_digest:
                return TagResolution(tag, digest, known_platform_digest, None, None, unchanged=True)
        if digest:
            reply = await self._call(target, "GET", base + digest, "manifest")
        else:
            reply = await self._call(target, "GET", base + tag, "manifest")
            digest = reply.headers.get("Docker-Content-Digest") or mf.sha256_digest(reply.body)
            if digest == known_digest:
                return TagResolution(tag, digest, known_platform_digest, None, None, True)
        manifest = self._parse_manifest(reply, digest)
        platform_digest: str | None = None
        if isinstance(manifest, mf.Index):
            entry = mf.choose_platform(manifest, self.platform)
            if entry is None:
                note = f"no manifest for {self.platform} in the index"
                return TagResolution(tag, digest, None, None, None, False, note)
            platform_digest = entry.digest
            child = await self._call(target, "GET", base + entry.digest, "manifest")
            manifest = self._parse_manifest(child, entry.digest)
            if isinstance(manifest, mf.Index):
                note = "the index entry for the platform is itself an index"
                return TagResolution(tag, digest, platform_digest, None, None, False, note)
        if isinstance(manifest, mf.Schema1Manifest):
            config_digest = manifest.config_digest
            layer = None if config_digest in known_configs else manifest.layer()
            return TagResolution(tag, digest, platform_digest, config_digest, layer, False)
        config = manifest.config
        if config.media_type and config.media_type not in mf.IMAGE_CONFIG_TYPES:
            note = f"not a container image (config type {config.media_type})"
            return TagResolution(tag, digest, platform_digest, config.digest, None, False, note)
        layer = None
        if config.digest not in known_configs:
            layer = await self._config_layer(target, config.digest)
        return TagResolution(tag, digest, platform_digest, config.digest, layer, False)

    # ---------------------------------------------------------------- manifests and blobs

    @staticmethod
    def _parse_manifest(reply: Reply, digest: str) -> mf.Manifest:
        manifest = mf.parse_manifest(reply.body, reply.headers.get("Content-Type"))
        # schema 1 digests cover the payload without signatures: trust the header there
        if not isinstance(manifest, mf.Schema1Manifest) and digest.startswith("sha256:"):
            if mf.sha256_digest(reply.body) != digest:
                raise RegistryProtocolError(
                    f"{where('GET', reply.url)}: manifest content does not match {digest}"
                )
        return manifest

    async def _config_layer(self, target: Target, digest: str) -> mf.Layer:
        """The parsed config blob; fetched at most once per digest (content-addressed) while
        it stays in the LRU cache, even when many coroutines ask at once."""
        cached = self._configs.get(digest)
        if cached is not None:
            self._configs.move_to_end(digest)
            return cached
        lock = self._config_locks.setdefault(digest, asyncio.Lock())
        try:
            async with lock:
                cached = self._configs.get(digest)
                if cached is not None:
                    return cached
                url = f"{self.base_url(target.host)}/v2/{target.repository}/blobs/{digest}"
                reply = await self._call(target, "GET", url, "blob", limit=MAX_CONFIG_BYTES)
                if digest.startswith("sha256:") and mf.sha256_digest(reply.body) != digest:
                    raise RegistryProtocolError(
                        f"{where('GET', url)}: config blob does not match its digest"
                    )
                layer = mf.parse_config_blob(reply.body)
                self._configs[digest] = layer
                while len(self._configs) > CONFIG_CACHE_SIZE:
                    self._configs.popitem(last=False)
                return layer
        finally:
            if not lock.locked():
                self._config_locks.pop(digest, None)

    # ---------------------------------------------------------------- retries and auth

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, RegistryError) or not exc.transient or exc.give_up:
            return False
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            return exc.retry_after <= self.max_retry_wait
        return True

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            return exc.retry_after
        # exponential backoff with jitter (not security: S311 does not apply)
        backoff = self.backoff_base * 2 ** (state.attempt_number - 1)
        return min(self.max_retry_wait, backoff + random.uniform(0, self.backoff_base))  # noqa: S311

    async def _call(
        self, target: Target, method: str, url: str, kind: str, *, limit: int = MAX_MANIFEST_BYTES
    ) -> Reply:
        """An authenticated request with retries of transient errors; a 2xx reply or a typed
        error. Retry-After beyond max_retry_wait raises RateLimitedError at once."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            retry=retry_if_exception(self._retryable),
            wait=self._wait,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._call_once(target, method, url, kind, limit)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _call_once(
        self, target: Target, method: str, url: str, kind: str, limit: int
    ) -> Reply:
        challenge = await self._ping(target.host)
        headers = {"Accept": mf.MANIFEST_ACCEPT} if kind == "manifest" else {}
        auth = await self._authorization(target, challenge)
        if auth:
            headers["Authorization"] = auth
        send = self.transport.send
        reply = await send(method, url, kind, headers, target.host, limit)
        if reply.status == 401:
            # A new challenge (insufficient_scope, an expired token, or a registry whose
            # ping was anonymous): authenticate once more, then give up.
            fresh = pick_challenge(parse_challenges(reply.headers.get("WWW-Authenticate")))
            if fresh is not None:
                self._challenges[target.host] = fresh
            chosen = fresh or challenge
            if chosen is not None:
                key = (target.host, target.repository, _user(target))
                if auth and auth.startswith("Bearer "):
                    self._tokens.drop(key, auth.removeprefix("Bearer "))
                retry_auth = await self._authorization(target, chosen)
                if retry_auth and retry_auth != auth:
                    headers["Authorization"] = retry_auth
                    reply = await send(method, url, kind, headers, target.host, limit)
        if not 200 <= reply.status < 300:
            raise error_for_response(
                reply.status, reply.body, reply.headers, where=where(method, url), kind=kind
            )
        return reply

    async def _ping(self, host: str) -> Challenge | None:
        """The host's auth challenge from `GET /v2/`, asked once per host and kept (some
        registries answer later 401s without a challenge). None: anonymous."""
        if host in self._challenges:
            return self._challenges[host]
        lock = self._ping_locks.setdefault(host, asyncio.Lock())
        async with lock:
            if host in self._challenges:
                return self._challenges[host]
            url = f"{self.base_url(host)}/v2/"
            reply = await self.transport.send("GET", url, "ping", {}, host, 64 * 1024)
            if reply.status == 401:
                challenge = pick_challenge(parse_challenges(reply.headers.get("WWW-Authenticate")))
            elif 200 <= reply.status < 300:
                challenge = None
            else:
                raise error_for_response(
                    reply.status, reply.body, reply.headers, where=where("GET", url), kind="ping"
                )
            self._challenges[host] = challenge
            return challenge

    async def _authorization(self, target: Target, challenge: Challenge | None) -> str | None:
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(target.credentials) if target.credentials else None
        key = (target.host, target.repository, _user(target))
        token = self._tokens.get(key)
        if token is None:
            async with self._tokens.lock(key):
                token = self._tokens.get(key)
                if token is None:
                    token, lifetime = await self._fetch_token(target, challenge)
                    self._tokens.put(key, token, lifetime)
        return "Bearer " + token

    async def _fetch_token(self, target: Target, challenge: Challenge) -> tuple[str, float]:
        realm = challenge.realm or ""
        parts = urlsplit(realm)
        if not parts.netloc:
            raise RegistryProtocolError(f"{target.host}: bearer challenge without a usable realm")
        query: dict[str, str] = {"scope": f"repository:{target.repository}:pull"}
        if "service" in challenge.params:
            query = {"service": challenge.params["service"], **query}
        url = str(URL(realm).update_query(query))
        headers: dict[str, str] = {}
        if target.credentials is not None:
            insecure_ok = {canonical_host(parts.netloc), canonical_host(target.host)} & self.insecure_hosts
            if parts.scheme != "https" and not insecure_ok:
                raise RegistryAuthError(
                    f"{target.host}: refused to send credentials to the plain-http token "
                    f"service {parts.netloc}"
                )
            headers["Authorization"] = basic_header(target.credentials)
        reply = await self.transport.send("GET", url, "token", headers, target.host, 1024 * 1024)
        if reply.status in (401, 403):
            raise RegistryAuthError(
                f"{where('GET', url)}: the token service refused "
                + ("the credentials" if target.credentials else "anonymous access")
            )
        if not 200 <= reply.status < 300:
            err = error_for_response(
                reply.status, reply.body, reply.headers, where=where("GET", url), kind="token"
            )
            # Docker Hub answers repeated bad logins with 429: do not hammer it
            err.give_up = isinstance(err, RateLimitedError) and target.credentials is not None
            raise err
        return parse_token_response(reply.body)


def _user(target: Target) -> str | None:
    """The token-cache identity of the credentials: the user name plus a keyed fingerprint
    of the password, so that a second account registering the same user name with a wrong
    password never borrows the first one's token (the API checks credentials this way)."""
    creds = target.credentials
    if creds is None:
        return None
    mac = hashlib.blake2b(creds.password.encode(), key=_FINGERPRINT_KEY, digest_size=16)
    return f"{creds.username}#{mac.hexdigest()}"
