"""Typed registry errors.

Every error has `transient` (worth retrying later) and a message a person can read. Messages
name the host and the path, the status line and the registry's error code (one of the
distribution spec's codes, nothing else); they never contain credentials, tokens, query
strings or any text of an answer's body. A body is whatever the host that answered chose to
send, and the host need not be the registry: a redirect hop, a token service, or whatever a
user-supplied name leads to. Echoing it would let a caller read what the worker can reach.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from datetime import UTC
from http import HTTPStatus
from typing import Any

import orjson

# The error codes of the OCI distribution spec and of the CNCF distribution registry: the only
# words of a body that a message repeats.
KNOWN_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED",
    "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED",
    "UNSUPPORTED", "TOOMANYREQUESTS", "UNAVAILABLE", "UNKNOWN", "PAGINATION_NUMBER_INVALID",
    "RANGE_INVALID",
})


class RegistryError(Exception):
    """Base of every error the registry client raises."""

    transient: bool = False
    give_up: bool = False  # True: do not retry within this call even if transient

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        if transient is not None:
            self.transient = transient

    def __str__(self) -> str:
        return self.message


class RegistryAuthError(RegistryError):
    """Bad or missing credentials, or access denied (401/403 after authenticating)."""


class RepositoryNotFoundError(RegistryError):
    """The repository does not exist (or is invisible to these credentials)."""


class ManifestNotFoundError(RegistryError):
    """The tag or digest has no manifest: for a tag, the sync treats it as gone."""


class RateLimitedError(RegistryError):
    """429. `retry_after` is the wait in seconds the registry asked for, if it said."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RegistryUnavailableError(RegistryError):
    """5xx, a timeout or a connection error."""

    transient = True


class RegistryProtocolError(RegistryError):
    """The registry answered something this client cannot read (garbage JSON, wrong shape)."""

    transient = True


class HostBusyError(RegistryError):
    """The registry host may not be asked now: paused fleet-wide after a 429, or its share of
    this process (or of the fleet's budget) is taken. Not a failure of the image: the sync
    hands the image back, due again in `retry_after` seconds, without counting a failure."""

    transient = True

    def __init__(self, message: str, *, retry_after: float, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class BlobNotFoundError(RegistryProtocolError):
    """404 for a blob: this repository does not hold it (a manifest naming a config blob its
    registry never had, or a blob deleted since). A fact about one tag, not worth retrying."""

    transient = False


class ForbiddenTargetError(RegistryError):
    """The SSRF guard refused the address (link-local, metadata, private when not allowed)."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if
    absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_code(body: bytes) -> str | None:
    """The first error code of a distribution error envelope (`{"errors": [{"code": ...}]}`)
    when it is one of KNOWN_CODES; None otherwise. Nothing else of the body is read."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    errors = data.get("errors") if isinstance(data, dict) else None
    first = errors[0] if isinstance(errors, list) and errors else None
    code = first.get("code") if isinstance(first, dict) else None
    return code if isinstance(code, str) and code in KNOWN_CODES else None


def status_line(status: int) -> str:
    """`404 Not Found`: the status and its standard reason phrase (not the one the host sent)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def error_for_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    where: str,
    kind: str,
) -> RegistryError:
    """The typed error for a non-success answer. `where` is "<METHOD> <host><path>" without
    a query string; `kind` is the request kind ("tags", "manifest", "blob", "token", "ping").
    `body` is read for its error code only, and only from the registry itself: the caller
    passes b"" for an answer of a redirect hop; a token service's is never read.
    """
    code = error_code(body) if kind != "token" else None
    message = f"{where}: answered {status_line(status)}{f' (error code {code})' if code else ''}"
    kw: dict[str, Any] = {"status": status, "code": code}
    if status == 429 or code == "TOOMANYREQUESTS":
        return RateLimitedError(
            message, retry_after=parse_retry_after(headers.get("Retry-After")), **kw
        )
    if code == "NAME_UNKNOWN" or (status == 404 and kind == "tags"):
        return RepositoryNotFoundError(message, **kw)
    if code == "MANIFEST_UNKNOWN" or (status == 404 and kind == "manifest"):
        return ManifestNotFoundError(message, **kw)
    if status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
        return RegistryAuthError(message, **kw)
    if status >= 500 or code == "UNAVAILABLE":
        return RegistryUnavailableError(message, **kw)
    if status == 404 and kind == "blob":
        return BlobNotFoundError(message, **kw)
    if status == 404 and kind == "ping":
        return RegistryProtocolError(
            f"{where}: answered 404, this host does not serve the registry API /v2/",
            transient=False,
            **kw,
        )
    # other 4xx (400, 405, UNSUPPORTED ...): asking again will not help
    return RegistryProtocolError(message, transient=False, **kw)
