"""What the client raises: one class per kind of failure, each with a sentence a person can act on.

Every exception here derives from `ClientError`. HTTP answers become `ApiError` subclasses
by status (`error_for`); a service that cannot be reached at all is an `UnreachableError`
that names the URL tried.
"""

from __future__ import annotations

from typing import Any

import aiohttp


class ClientError(Exception):
    """Base of everything this package raises; `str(exc)` is the human message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnreachableError(ClientError):
    """No HTTP answer: connection refused, unknown host, timeout, connection dropped."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class ProtocolError(ClientError):
    """An answer that is not what the API contract says (not JSON, wrong shape)."""


class ApiError(ClientError):
    """The service answered with an error status.

    `status` is the HTTP status, `url` the request's URL, `body` the decoded JSON error body
    (`{"error": "<sentence>", ...}`) or `{}`, `retry_after` the seconds from `Retry-After`.
    """

    status = 0

    def __init__(self, message: str, *, status: int, url: str, body: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.body = body or {}
        self.retry_after = retry_after

    @property
    def field(self) -> str | None:
        """The request field the service blamed (400s), if it named one."""
        value = self.body.get("field")
        return value if isinstance(value, str) else None


class BadRequestError(ApiError):
    status = 400


class AuthError(ApiError):
    """401: missing or wrong credentials."""

    status = 401


class ForbiddenError(ApiError):
    """403: the caller may see the resource but not change it (the shared catalog)."""

    status = 403


class NotFoundError(ApiError):
    status = 404


class ConflictError(ApiError):
    """409: the caller already registered that image."""

    status = 409


class ThrottledError(ApiError):
    """429: too many requests (e.g. failed logins); `retry_after` says when to try again."""

    status = 429


class UnavailableError(ApiError):
    """503: a dependency of the service is down; try again after `retry_after`."""

    status = 503


class ServerError(ApiError):
    """Any other error status (500, 502, 415, ...)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    c.status: c
    for c in (BadRequestError, AuthError, ForbiddenError, NotFoundError, ConflictError, ThrottledError,
              UnavailableError)
}

AUTH_HINT = "check TUTUM_USER/TUTUM_APIKEY (or run 'tutum login')"


def _retry_after(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare enough to ignore


def _image_of(name: str) -> str:
    """The image part of `image` or `image:tag` (a `:` before the last `/` is a host's port)."""
    head, sep, tail = name.rpartition(":")
    return head if sep and "/" not in tail and head else name


def error_for(status: int, body: Any, *, url: str, method: str = "GET", subject: str | None = None,
              name: str | None = None, retry_after: str | None = None) -> ApiError:
    """The exception for an error answer.

    `subject` and `name` say what was asked for (`"image"`, `"127.0.0.1:5000/team/app"`;
    `"image tag"`, `"<image>:<tag>"`), so a 404 names it: the service's own sentence is used
    when it names the image, else `<subject> '<name>' not found`.
    """
    detail = body if isinstance(body, dict) else {}
    said = detail.get("error") if isinstance(detail.get("error"), str) else None
    cls = _BY_STATUS.get(status, ServerError)
    wait = _retry_after(retry_after)
    if cls is AuthError:
        message = f"{(said or 'not authorized').rstrip('.')}: {AUTH_HINT}"
    elif cls is NotFoundError and name is not None and not (said and _image_of(name) in said):
        message = f"{subject or 'resource'} '{name}' not found"
    elif cls in (ThrottledError, UnavailableError):
        message = said or ("too many requests" if cls is ThrottledError else "the service is unavailable")
        if wait is not None:
            message = f"{message.rstrip('.')} (retry after {wait:g} s)"
    else:
        message = said or f"{method} {url} answered {status}"
    return cls(message, status=status, url=url, body=detail, retry_after=wait)


def unreachable(url: str, exc: BaseException, timeout: float | None = None) -> UnreachableError:
    """The error for a request that got no answer, with the reason in words."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            reason = "connection refused (is the service running there?)"
        else:
            reason = str(exc.os_error) or type(exc.os_error).__name__
    elif isinstance(exc, TimeoutError):
        reason = f"no answer within {timeout:g} s" if timeout else "timed out"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "the server closed the connection"
    else:
        reason = str(exc) or type(exc).__name__
    return UnreachableError(url, reason)
