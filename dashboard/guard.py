"""What every dashboard request goes through: the session, CSRF on every form, the security
headers, and errors as pages.

- A page needs a signed-in session (dashboard/sessions.py); without one, a GET is sent to the
  sign-in form (and back afterwards), anything else is refused.
- Every POST carries its form's CSRF token (the session's, or before sign-in the token of the
  sign-in cookie), compared in constant time; a POST without it, or with another, is refused
  (403) before anything else happens. A browser's `Origin` or `Sec-Fetch-Site` naming another
  site is refused too.
- Every response under /ui/ carries a Content-Security-Policy that allows no inline script or
  style and scripts only from the service (`script-src 'self'`), refuses framing
  (`frame-ancestors 'none'`, X-Frame-Options DENY), and pages are `no-store` (nothing of an
  account stays in the browser's cache after sign-out).
- The API's errors (api/errors.py ApiError) become a page with the same status and sentence;
  a database outage a 503 page (reported to the API's outage watch); anything unexpected is
  logged with its traceback and answered with an opaque 500 page.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import structlog
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from redis.exceptions import RedisError

from api import outage
from api.errors import ApiError
from api.throttle import TRUSTED_PROXIES
from core.accounts import Account
from dashboard import assets
from dashboard.sessions import COOKIE, SESSIONS, SIGNIN_COOKIE, Session, current_account, same

log = structlog.get_logger("dashboard")

PREFIX = "/ui/"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CSRF_FIELD = "csrf"


@dataclass
class Ctx:
    """A dashboard request: who asks (None only on the sign-in form), and the form it posted."""

    request: web.Request
    account: Account | None
    session: Session | None
    form: MultiDictProxy[Any] = field(default_factory=lambda: MultiDictProxy(MultiDict()))

    @property
    def user(self) -> Account:
        assert self.account is not None
        return self.account

    def field(self, name: str) -> str:
        value = self.form.get(name, "")
        return value if isinstance(value, str) else ""


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


def is_https(request: web.Request) -> bool:
    """The request came over TLS: to this server, or to a trusted proxy (TRUSTED_PROXIES)
    that says so in X-Forwarded-Proto. Decides the cookies' Secure flag."""
    if request.secure:
        return True
    try:
        peer = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return False
    if not any(peer in net for net in request.app[TRUSTED_PROXIES] if net.version == peer.version):
        return False
    forwarded: list[str] = list(request.headers.getall("X-Forwarded-Proto", []))
    return bool(forwarded) and forwarded[-1].split(",")[-1].strip().lower() == "https"


async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers of every /ui/ response (after every middleware, so
    the API's ETag middleware cannot loosen the caching of a page)."""
    if not (request.path.startswith(PREFIX) or request.path == "/ui"):
        return
    response.headers.update(HEADERS)
    if request.path.startswith(assets.STATIC_PREFIX) and response.status == 200:
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # versioned URLs
    else:
        response.headers["Cache-Control"] = "no-store"


def redirect(location: str) -> web.Response:
    """303 See Other (after a form: the browser GETs the page, a reload does not re-send)."""
    return web.Response(status=303, headers={"Location": location})


def render(ctx: Ctx, template: str, status: int = 200, **values: Any) -> web.Response:
    """A page, with what every page shows: the account, the CSRF token of its forms, assets."""
    base = {"account": ctx.account, "csrf": ctx.session.csrf if ctx.session else "", "asset": assets.url,
            "path": ctx.request.path}
    return aiohttp_jinja2.render_template(template, ctx.request, {**base, **values}, status=status)


def error_page(ctx: Ctx, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    resp = render(ctx, "error.html", status=status, status_code=status, message=message)
    resp.headers.update(headers or {})
    return resp


def _foreign(request: web.Request) -> bool:
    """A browser says the request comes from another site."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


async def _signed_in(request: web.Request) -> tuple[Session | None, Account | None]:
    token = request.cookies.get(COOKIE)
    if not token:
        return None, None
    session = await request.app[SESSIONS].load(token)
    if session is None:
        return None, None
    account = await current_account(request.app, session)
    return (session, account) if account is not None else (None, None)


def page(*, signed_in: bool = True) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Wrap a dashboard handler: session, CSRF on POST, errors as pages."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            ctx = Ctx(request, None, None)
            try:
                ctx.session, ctx.account = await _signed_in(request)
                if signed_in and ctx.account is None:
                    if request.method in ("GET", "HEAD"):
                        return redirect(f"/ui/signin?{_next_query(request.path_qs)}")
                    return error_page(ctx, 401, "Your session has ended. Sign in again.")
                if request.method == "POST":
                    ctx.form = await request.post()
                    # a signed-in form carries the session's token; the sign-in form, its cookie's
                    expected = (ctx.session.csrf if ctx.session else "") if signed_in else \
                        request.cookies.get(SIGNIN_COOKIE, "")
                    given = ctx.field(CSRF_FIELD)
                    if _foreign(request) or not expected or not given or not same(given, expected):
                        log.info("ui.csrf_refused", path=request.path)
                        return error_page(ctx, 403, "This form has expired or did not come from this site. "
                                                    "Reload the page and send it again.")
                return await handler(ctx)
            except web.HTTPException:
                raise
            except ApiError as exc:
                return error_page(ctx, exc.status, exc.message, exc.headers)
            except Exception as exc:
                if outage.is_unavailable(exc):
                    request.app[outage.DATABASE_WATCH].failed(request.app, exc)
                    return error_page(ctx, 503, "The database cannot be reached right now. "
                                                "This page will work again when it is back.", {"Retry-After": "2"})
                if isinstance(exc, RedisError):
                    return error_page(ctx, 503, "Sessions are kept in Redis, which cannot be reached right now.",
                                      {"Retry-After": "2"})
                log.exception("ui.unhandled_error", method=request.method, path=request.path)
                return error_page(ctx, 500, "Something went wrong on our side; the request id in our logs "
                                            "identifies it.")

        return run

    return wrap


def _next_query(target: str) -> str:
    return urlencode({"next": target})


def safe_next(raw: str) -> str:
    """Where to go after sign-in: a dashboard path only (never another site)."""
    if raw.startswith(PREFIX) and not raw.startswith("//") and "\\" not in raw:
        return raw
    return PREFIX
