"""Typed registry errors.

Every error has `transient` (worth retrying later) and a message a person can read. Messages
name the host, the path and the registry's own words; they never contain credentials,
tokens or query strings.
"""

from __future__ import annotations

import email.utils
import html
import re
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import orjson

_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")
MAX_MESSAGE_BODY = 200


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


def describe_body(body: bytes, content_type: str | None = None) -> tuple[str | None, str]:
    """(first error code, readable text) from a registry error body: the distribution JSON
    envelope, plain text or HTML. The text is cut to a few hundred characters."""
    code: str | None = None
    text = ""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
        first = data["errors"][0]
        if isinstance(first, dict):
            code = str(first.get("code") or "") or None
            parts = [str(first.get("message") or "")]
            detail = first.get("detail")
            if isinstance(detail, str | int | float) and str(detail) not in parts[0]:
                parts.append(str(detail))
            text = ": ".join(p for p in parts if p)
    elif body:
        raw = body[:4096].decode("utf-8", "replace")
        if "html" in (content_type or "").lower() or raw.lstrip().startswith("<"):
            raw = html.unescape(_TAG_RE.sub(" ", raw))
        text = raw
    text = _SPACE_RE.sub(" ", text).strip()
    if len(text) > MAX_MESSAGE_BODY:
        text = text[:MAX_MESSAGE_BODY] + "…"
    return code, text


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
    """
    code, text = describe_body(body, headers.get("Content-Type"))
    label = f"{status}{' ' + code if code else ''}"
    message = f"{where}: registry answered {label}{': ' + text if text else ''}"
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
