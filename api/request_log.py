"""One log line per request, with a request id bound to every line logged while it runs.

Paths are logged through `logged_path`: Docker Hub and Quay put the webhook secret in the URL
path (`/api/v1/webhooks/quay/<secret>/`), so whatever follows a receiver's name is replaced
— also on paths that match no route, where a mistyped URL may still carry a secret.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from api.keys import LOG_REQUESTS

log = structlog.get_logger("api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
REDACTED = "[redacted]"
RECEIVERS = frozenset({"registry", "dockerhub", "harbor", "quay", "build", "github"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _RequestIds:
    """Request ids as unique as a uuid4's hex without reading the system's random source on
    every request: a random prefix per process (drawn again in a forked child) and a counter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix, self._counter = secrets.token_hex(8), itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_IDS = _RequestIds()
os.register_at_fork(after_in_child=_IDS.reset)


def logged_path(request: web.BaseRequest) -> str:
    """`request.path` without the URL secrets of webhook receivers: after `/webhooks/`, only
    a receiver's name is kept."""
    parts = request.path.split("/")
    if "webhooks" not in parts:
        return request.path
    at = parts.index("webhooks") + 1
    keep = at + 1 if at < len(parts) and parts[at] in RECEIVERS else at
    rest = [p for p in parts[keep:] if p]
    return "/".join(parts[:keep] + ([REDACTED, ""] if rest else parts[keep:]))


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of this request and log one line when it ends."""
    rid = request.headers.get("X-Request-ID", "")
    if not _REQUEST_ID.fullmatch(rid):
        rid = _IDS.next()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    response = await handler(request)
    response.headers["X-Request-ID"] = rid
    if request.app[LOG_REQUESTS]:  # else log.info drops the line, after its fields were built
        log.info(
            "request.done", method=request.method, path=logged_path(request), status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
    return response
