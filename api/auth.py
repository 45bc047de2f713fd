"""Authentication: `ApiKey user:key` or `Basic base64(user:key)`, with a short cache and
failed-attempt throttling (SPEC §6)."""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict

import structlog
from aiohttp import web

from api.errors import Handler, ThrottledError, UnauthorizedError
from api.keys import POOL, SETTINGS
from core.accounts import Account, authenticate, hash_key

# Paths with their own authentication (or none): health, metrics, webhooks, the OpenAPI document.
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/api/v1/webhooks/", "/api/v1/openapi.json")

log = structlog.get_logger("api.auth")


class AuthCache:
    """Recently verified keys (by digest) and recent failures, per process.

    A verified key is trusted for `ttl` seconds without a database round trip, so a deleted
    key keeps working for at most that long. Failures are counted per client address:
    past `max_failures` in `window` seconds the address is answered 429 until it cools off.
    """

    def __init__(self, ttl: float, max_failures: int = 20, window: float = 60.0, size: int = 4096):
        self.ttl, self.max_failures, self.window, self.size = ttl, max_failures, window, size
        self._ok: OrderedDict[tuple[str, bytes], tuple[Account, float]] = OrderedDict()
        self._failures: dict[str, list[float]] = {}

    def get(self, user: str, digest: bytes) -> Account | None:
        hit = self._ok.get((user, digest))
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, user: str, digest: bytes, account: Account) -> None:
        self._ok[(user, digest)] = (account, time.monotonic() + self.ttl)
        self._ok.move_to_end((user, digest))
        while len(self._ok) > self.size:
            self._ok.popitem(last=False)

    def throttled_for(self, client: str) -> float:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, ()) if t > now - self.window]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        if len(recent) < self.max_failures:
            return 0.0
        return max(1.0, recent[0] + self.window - now)

    def failed(self, client: str) -> None:
        if len(self._failures) > self.size:
            self._failures.clear()  # bounded memory under a spray of addresses
        self._failures.setdefault(client, []).append(time.monotonic())


AUTH_CACHE = web.AppKey("auth_cache", AuthCache)
REQUEST_ACCOUNT = web.RequestKey("account", Account)  # set by the middleware


def parse_authorization(header: str) -> tuple[str, str] | None:
    """(user, key) from an `ApiKey` or `Basic` header, or None if it is neither."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "apikey":
        user, sep, key = value.partition(":")
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, key = decoded.partition(":")
    else:
        return None
    if not sep or not user or not key:
        return None
    return user, key


def request_account(request: web.Request) -> Account:
    account: Account = request[REQUEST_ACCOUNT]
    return account


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PUBLIC_PREFIXES) or not request.path.startswith("/api/"):
        return await handler(request)
    cache = request.app[AUTH_CACHE]
    client = request.remote or "unknown"
    parsed = parse_authorization(request.headers.get("Authorization", ""))
    if parsed is None and request.path.rstrip("/") == "/api/v1/events":
        # Browsers cannot set headers on a WebSocket: `?user=…&token=…`, as Tutum's stream took.
        user, token = request.query.get("user", ""), request.query.get("token", "")
        parsed = (user, token) if user and token else None
    if parsed is None:
        raise UnauthorizedError(
            "authentication required: send 'Authorization: ApiKey <user>:<apikey>' "
            "or HTTP Basic with the API key as password",
            headers={"WWW-Authenticate": 'Basic realm="registry-sync"'},
        )
    user, key = parsed
    digest = hash_key(key)
    account = cache.get(user, digest)
    if account is None:
        # A key verified recently is served even from a throttled address (clients behind
        # a shared NAT); anything else from there waits, so keys cannot be guessed quickly.
        wait = cache.throttled_for(client)
        if wait:
            raise ThrottledError(
                "too many failed authentication attempts; try again later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        account = await authenticate(request.app[POOL], user, key)
        if account is None:
            cache.failed(client)
            log.info("auth.failed", user=user, client=client)
            raise UnauthorizedError(
                "invalid user name or API key",
                headers={"WWW-Authenticate": 'Basic realm="registry-sync"'},
            )
        cache.put(user, digest, account)
    request[REQUEST_ACCOUNT] = account
    structlog.contextvars.bind_contextvars(user=account.username)
    return await handler(request)


def make_auth_cache(app: web.Application) -> AuthCache:
    return AuthCache(ttl=app[SETTINGS].auth_cache_seconds)
