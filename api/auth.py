"""Authentication: `ApiKey user:key` or `Basic base64(user:key)`, with a short cache of
verified keys; wrong keys are counted and throttled by api/throttle.py (SPEC §6)."""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict

import structlog
from aiohttp import web

from api.errors import Handler, UnauthorizedError
from api.keys import POOL
from api.throttle import count_failure, request_client
from core.accounts import Account, authenticate, hash_key

# Paths with their own authentication (or none): health, metrics, webhooks, the OpenAPI document.
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/api/v1/webhooks/", "/api/v1/openapi.json")

log = structlog.get_logger("api.auth")


class AuthCache:
    """Recently verified keys (by digest), per process.

    A verified key is trusted for `ttl` seconds without a database round trip, so a deleted
    key keeps working for at most that long. Failures are counted by api/throttle.py.
    """

    def __init__(self, ttl: float, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._ok: OrderedDict[tuple[str, bytes], tuple[Account, float]] = OrderedDict()

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
        # Every key is checked, even from a throttled address or for a throttled name: a
        # correct key is never refused (throttle.py); only wrong ones are counted and slowed.
        account = await authenticate(request.app[POOL], user, key)
        if account is None:
            log.info("auth.failed", user=user[:64], client=request_client(request))
            await count_failure(request, "auth", user)
            raise UnauthorizedError(
                "invalid user name or API key",
                headers={"WWW-Authenticate": 'Basic realm="registry-sync"'},
            )
        cache.put(user, digest, account)
    request[REQUEST_ACCOUNT] = account
    structlog.contextvars.bind_contextvars(user=account.username)
    return await handler(request)

