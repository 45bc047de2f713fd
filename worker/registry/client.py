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
from collections.abc import Callable, Container
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from yarl import URL

from core.crypto import Credentials
from core.names import canonical_host
from worker.registry import manifests as mf
from worker.registry import resolve, tags
from worker.registry.auth import (
    Challenge,
    TokenCache,
    basic_header,
    parse_challenges,
    parse_token_response,
    pick_challenge,
)
from worker.registry.budget import credential_key
from worker.registry.errors import (
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RegistryProtocolError,
    error_for_response,
)
from worker.registry.guard import Guard
from worker.registry.resolve import ConfigCache, TagResolution
from worker.registry.transport import Reply, Transport, where

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit
MAX_TAGS_PAGE_BYTES = 8 * 1024 * 1024
MAX_TAG_PAGES = 500
MAX_TAGS = 10_000
_FINGERPRINT_KEY = os.urandom(32)  # per process: fingerprints never leave memory


@dataclass(frozen=True)
class Target:
    host: str  # as in image names: "127.0.0.1:5000", "registry-1.docker.io"
    repository: str  # "team/app", "library/ubuntu"
    credentials: Credentials | None = None


class TagList(list[str]):
    """Tag names in code-point order (as the API lists them); `truncated` when the registry
    listed more than the cap and only the first ones by name were kept."""

    truncated: bool = False


def _fixed(hosts: frozenset[str]) -> Callable[[], frozenset[str]]:
    return lambda: hosts


class RegistryClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        platform: str = "linux/amd64",
        timeout: float = 30.0,
        per_host_limit: int = 8,
        insecure_hosts: frozenset[str] | Callable[[], frozenset[str]] = frozenset(),
        max_attempts: int = 4,
        max_retry_wait: float = 30.0,
        max_tag_pages: int = MAX_TAG_PAGES,
        max_tags: int = MAX_TAGS,
        backoff_base: float = 1.0,
        guard: Guard | None = None,
        configs: ConfigCache | None = None,
    ) -> None:
        """`guard` defaults to the one of a make_session() session, else to a guard that
        refuses private and loopback addresses. `insecure_hosts` (reached over plain HTTP) may
        be a function, asked at every request: the set may change while the client lives
        (core/insecure.py); it returns the same object while the set is unchanged."""
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
        self._insecure = insecure_hosts if callable(insecure_hosts) else _fixed(insecure_hosts)
        self._insecure_seen: tuple[frozenset[str], frozenset[str]] | None = None
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max_retry_wait
        self.max_tag_pages = max_tag_pages
        self.max_tags = max_tags
        self.backoff_base = backoff_base
        self.configs = configs or ConfigCache()
        self._tokens = TokenCache()
        self._challenges: dict[str, Challenge | None] = {}
        self._ping_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        """Forget cached state; the session belongs to the caller, who closes it."""
        self.configs.clear()
        self._challenges.clear()

    @property
    def insecure_hosts(self) -> frozenset[str]:
        """The hosts reached over plain HTTP now, canonical."""
        current = self._insecure()
        if self._insecure_seen is None or self._insecure_seen[0] is not current:
            self._insecure_seen = (current, frozenset(canonical_host(h) for h in current))
        return self._insecure_seen[1]

    def base_url(self, host: str) -> str:
        scheme = "http" if canonical_host(host) in self.insecure_hosts else "https"
        return f"{scheme}://{host}"

    # ---------------------------------------------------------------- public API

    async def list_tags(self, target: Target) -> TagList:
        """The repository's tags (tags.filter_tags), read page by page while holding at
        most `max_tags` of them: beyond that the first ones in code-point order are kept and
        the list is marked truncated. Follows Link pagination for up to max_tag_pages (then
        RegistryProtocolError: a partial list would make the sync delete tags); stops on a
        Link that loops back. Raises RepositoryNotFoundError for an unknown repository."""
        url = f"{self.base_url(target.host)}/v2/{target.repository}/tags/list?n=1000"
        first = tags.FirstNames(self.max_tags)
        seen: set[str] = set()
        for _ in range(self.max_tag_pages):
            seen.add(url)
            reply = await self._call(target, "GET", url, "tags", limit=MAX_TAGS_PAGE_BYTES)
            first.update(tags.parse_tags_page(reply.body))
            nxt = tags.next_link(reply.headers.get("Link"), url)
            if nxt is None or nxt in seen:
                names = TagList(first.names)
                names.truncated = first.truncated
                return names
            url = nxt
        raise RegistryProtocolError(
            f"{target.host}/{target.repository}: the tag list goes on for more than "
            f"{self.max_tag_pages} pages (Link after Link); gave up",
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
        known_config: str | None = None,
    ) -> TagResolution:
        """Resolve `tag` (or a digest) to its manifest, platform manifest and config: the one
        entry point of both the polling and the webhook path (worker/registry/resolve.py).

        With a `known_digest`, HEAD the tag first and stop there when it is unchanged (when
        its `known_config` is not in `known_configs`, that blob is fetched once to prove it);
        otherwise GET the manifest, apply the content rule (core.artifacts), pick the
        platform child of an index, and read the config blob — proven by content to be in
        this repository (its registry served bytes that hash to the digest) unless its
        digest is in `known_configs`, the configs this repository is on record as holding.

        Raises ManifestNotFoundError when the tag itself is gone, and the RegistryError of a
        whole-image failure (unavailable, rate limited, bad credentials). Everything wrong
        with this one tag's content is a TagResolution with a `problem`; a missing platform
        or a non-image artifact is one with a `note`; signatures, attestations, SBOMs and
        sigstore bundles have kind METADATA."""
        return await resolve.resolve_tag(
            self, target, tag, known_digest=known_digest,
            known_platform_digest=known_platform_digest, known_configs=known_configs,
            known_config=known_config,
        )

    async def call(
        self, target: Target, method: str, url: str, kind: str, *, limit: int = MAX_MANIFEST_BYTES
    ) -> Reply:
        """An authenticated request with retries of transient errors (for resolve.py)."""
        return await self._call(target, method, url, kind, limit=limit)

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
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._call_once(target, method, url, kind, limit)
        except RegistryError as exc:
            # The retry state keeps the error in a reference cycle, and the error's traceback
            # keeps every frame under this one alive with it, up to the 4 MB being read when a
            # size cap was hit: dropped here, or it stays until the cyclic GC runs.
            raise exc.with_traceback(None) from exc.__cause__
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _call_once(
        self, target: Target, method: str, url: str, kind: str, limit: int
    ) -> Reply:
        challenge = await self._ping(target.host)
        headers = {"Accept": mf.MANIFEST_ACCEPT} if kind == "manifest" else {}
        auth = await self._authorization(target, challenge)
        if auth:
            headers["Authorization"] = auth
        # sent with the image's credentials (or a token they bought): counted in their own
        # budget bucket, so their quota and their 429s are theirs alone
        credential = credential_key(target.credentials) if auth else None
        send = self.transport.send
        reply = await send(method, url, kind, headers, target.host, limit, credential=credential)
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
                    credential = credential_key(target.credentials)
                    reply = await send(method, url, kind, headers, target.host, limit, credential=credential)
        if not 200 <= reply.status < 300:
            # the body of a redirect hop's answer is not the registry's: not even its code
            body = reply.body if urlsplit(reply.url)[:2] == urlsplit(url)[:2] else b""
            raise error_for_response(reply.status, body, reply.headers, where=where(method, url), kind=kind)
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
        reply = await self.transport.send("GET", url, "token", headers, target.host, 1024 * 1024,
                                          credential=credential_key(target.credentials))
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
