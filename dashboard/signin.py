"""Sign-in with a user name and an API key, and sign-out.

A wrong key is counted and throttled exactly as the API counts it (api/throttle.py, scope
"auth": the same counts, so alternating between the API and this form gains nothing): past
AUTH_FAILURE_LIMIT the form answers 429 with Retry-After. A correct key is always accepted.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from api.auth import AUTH_CACHE
from api.errors import ThrottledError
from api.keys import POOL, SETTINGS
from api.throttle import count_failure, request_client
from core.accounts import authenticate, hash_key
from dashboard.guard import PREFIX, Ctx, error_page, is_https, page, redirect, render, safe_next
from dashboard.sessions import COOKIE, SESSIONS, SIGNIN_COOKIE, clear_cookie, new_token, set_cookie

log = structlog.get_logger("dashboard.signin")

SIGNIN_FORM_SECONDS = 3600.0  # how long a sign-in form may stay open


def _form(ctx: Ctx, status: int = 200, error: str | None = None, user: str = "") -> web.Response:
    token = new_token()
    resp = render(ctx, "signin.html", status=status, signin_csrf=token, error=error, user=user,
                  next=safe_next(ctx.request.query.get("next", ctx.field("next") or PREFIX)))
    set_cookie(resp, SIGNIN_COOKIE, token, secure=is_https(ctx.request), max_age=SIGNIN_FORM_SECONDS)
    return resp


@page(signed_in=False)
async def signin_form(ctx: Ctx) -> web.StreamResponse:
    if ctx.account is not None:
        return redirect(safe_next(ctx.request.query.get("next", PREFIX)))
    return _form(ctx)


@page(signed_in=False)
async def signin(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    user, key = ctx.field("user").strip(), ctx.field("apikey").strip()
    if not user or not key:
        return _form(ctx, 400, "Enter your user name and your API key.", user)
    account = await authenticate(request.app[POOL], user, key)
    if account is None:
        log.info("ui.signin_failed", user=user[:64], client=request_client(request))
        try:
            await count_failure(request, "auth", user)
        except ThrottledError as exc:
            resp = _form(ctx, 429, "Too many wrong keys were tried. Wait a little, then try again.", user)
            resp.headers.update(exc.headers)
            return resp
        return _form(ctx, 401, "That user name and API key do not match.", user)
    digest = hash_key(key)
    request.app[AUTH_CACHE].put(account.username, digest, account)
    token = await request.app[SESSIONS].create(account, digest)
    log.info("ui.signed_in", user=account.username)
    resp = redirect(safe_next(ctx.field("next")))
    set_cookie(resp, COOKIE, token, secure=is_https(request), max_age=request.app[SETTINGS].ui_session_seconds)
    clear_cookie(resp, SIGNIN_COOKIE)
    return resp


@page()
async def signout(ctx: Ctx) -> web.StreamResponse:
    assert ctx.session is not None
    await ctx.request.app[SESSIONS].end(ctx.session)
    log.info("ui.signed_out", user=ctx.user.username)
    resp = redirect("/ui/signin")
    clear_cookie(resp, COOKIE)
    return resp


@page(signed_in=False)
async def not_found(ctx: Ctx) -> web.StreamResponse:
    return error_page(ctx, 404, "There is no such page.")
