"""Domain errors of the API and the one middleware that turns every error into JSON
(including a database outage: 503, see api/outage.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from api import outage
from api.keys import MAX_BODY
from api.request_log import logged_path

log = structlog.get_logger("api")


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **detail: Any):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.detail = detail


class BadRequestError(ApiError):
    status = 400


class UnauthorizedError(ApiError):
    status = 401


class ForbiddenError(ApiError):
    status = 403


class NotFoundError(ApiError):
    status = 404


class MethodNotAllowedError(ApiError):
    status = 405

    def __init__(self, method: str, allowed: tuple[str, ...]):
        super().__init__(
            f"method {method} is not allowed here; use {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )


class ConflictError(ApiError):
    status = 409


class UnsupportedMediaTypeError(ApiError):
    status = 415


class PayloadTooLargeError(ApiError):
    status = 413


class ThrottledError(ApiError):
    status = 429


class UnavailableError(ApiError):
    status = 503


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **detail: Any) -> web.Response:
    return json_response({"error": message, **detail}, status=status, headers=headers)


# aiohttp raises these itself (routing, body size); say what happened in a sentence.
_HTTP_MESSAGES = {
    404: "no such resource; API paths look like /api/v1/image/<name>/",
    405: "method not allowed",
    413: "request body too large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Paths that need no database: answered normally during an outage.
_NO_DATABASE = ("/api/v1/openapi.json",)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    watch = request.app[outage.DATABASE_WATCH]
    if watch.down and request.path.startswith("/api/") and not request.path.startswith(_NO_DATABASE):
        watch.refused += 1
        message, headers = outage.unavailable_body()
        return error_response(503, message, headers)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers, **exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s are not errors
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        if exc.status == 413:
            message = f"request body too large (limit {request.app[MAX_BODY]} bytes)"
        else:
            message = _HTTP_MESSAGES.get(exc.status, exc.reason)
        return error_response(exc.status, message, headers)
    except Exception as exc:
        if outage.is_unavailable(exc):
            watch.failed(request.app, exc)
            message, headers = outage.unavailable_body()
            return error_response(503, message, headers)
        log.exception("request.unhandled_error", method=request.method, path=logged_path(request))
        return error_response(500, "internal error; the request id identifies it in our logs")
