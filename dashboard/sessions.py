"""Dashboard sessions, kept in Redis so that every web process serves every session.

Signing in with a user name and an API key creates a session: a random 256-bit token goes to
the browser in a cookie (HttpOnly, SameSite=Strict, Secure when the request came over TLS,
Path=/ui/), and Redis keeps, under the token's SHA-256 (a copy of Redis holds no usable
cookie), the account, the digest of the key it signed in with (never the key), and the
session's CSRF token, for UI_SESSION_SECONDS. The cookie expires with it.

Every request re-checks that the key still exists, through the API's cache of verified keys
(api/auth.py AuthCache, AUTH_CACHE_SECONDS), so deleting a key ends its sessions as quickly
as it stops working for the API. Redis unreachable: no page that needs a session is served
(503), and nobody can sign in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from api.auth import AUTH_CACHE
from api.health import REDIS
from api.keys import POOL, SETTINGS
from core.accounts import Account

COOKIE = "rs_session"
SIGNIN_COOKIE = "rs_signin"  # the sign-in form's CSRF token, before there is a session
COOKIE_PATH = "/ui/"
KEY_PREFIX = "rs:ui:session:"


@dataclass(frozen=True)
class Session:
    token_hash: str
    account: Account
    key_digest: bytes
    csrf: str


def _redis_key(token: str) -> str:
    return KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str, b: str) -> bool:
    """Constant-time equality of two tokens."""
    return hmac.compare_digest(a.encode(), b.encode())


class SessionStore:
    def __init__(self, redis: aioredis.Redis, lifetime: float) -> None:
        self.redis = redis
        self.lifetime = lifetime

    async def create(self, account: Account, key_digest: bytes) -> str:
        """A new session's cookie token."""
        token = new_token()
        record = {"account": account.id, "user": account.username, "admin": account.is_admin,
                  "key": key_digest.hex(), "csrf": new_token()}
        await self.redis.set(_redis_key(token), orjson.dumps(record), ex=max(1, round(self.lifetime)))
        return token

    async def load(self, token: str) -> Session | None:
        raw = await self.redis.get(_redis_key(token))
        if raw is None:
            return None
        r = orjson.loads(raw)
        return Session(_redis_key(token), Account(r["account"], r["user"], r["admin"]), bytes.fromhex(r["key"]),
                       r["csrf"])

    async def end(self, session: Session) -> None:
        await self.redis.delete(session.token_hash)


SESSIONS = web.AppKey("ui_sessions", SessionStore)

KEY_STILL_VALID_SQL = """
SELECT a.id, a.username, a.is_admin
  FROM accounts AS a JOIN api_keys AS k ON k.account_id = a.id
 WHERE a.id = $1 AND k.key_hash = $2
"""


async def current_account(app: web.Application, session: Session) -> Account | None:
    """The session's account while the key it signed in with exists, else None."""
    cache = app[AUTH_CACHE]
    account = cache.get(session.account.username, session.key_digest)
    if account is not None:
        return account
    row = await app[POOL].fetchrow(KEY_STILL_VALID_SQL, session.account.id, session.key_digest)
    if row is None:
        return None
    account = Account(row["id"], row["username"], row["is_admin"])
    cache.put(account.username, session.key_digest, account)
    return account


def set_cookie(response: web.StreamResponse, name: str, value: str, *, secure: bool, max_age: float) -> None:
    response.set_cookie(name, value, path=COOKIE_PATH, max_age=max(1, round(max_age)), httponly=True,
                        samesite="Strict", secure=secure)


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH)


async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the API's own): the store, on the API's Redis client (api/health.py)."""
    app[SESSIONS] = SessionStore(app[REDIS], app[SETTINGS].ui_session_seconds)
    yield
