"""Quay's build API (quay/quay endpoints/api/build.py): the client and the parsing of its answer.

`GET /api/v1/repository/<ns>/<repo>/build/?limit=N` → `{"builds": [...]}`, newest first (by
`started`). A build: `id` (uuid), `phase`, `started` (RFC 2822), `tags` (what it pushes),
`error` (or null), `trigger`, `trigger_metadata`, `status`, … — no finish time. Anonymous for
a public repository; a private one needs an OAuth application token (`Authorization:
Bearer`); Quay answers 401 (`{"detail": "Requires authentication", …}`) without one, 403 to
a token without the read scope. Robot accounts (what pulls use) cannot read it.

The request goes through the registry client's transport: the SSRF guard on every hop,
redirects that drop `Authorization` off the origin, size limits, the host's fleet-wide budget
and its 429 pauses. One attempt: a caller polling every few seconds asks again soon anyway.
Never touches the database; the token never appears in a message.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from core.names import is_valid_tag
from worker.registry.client import RegistryClient
from worker.registry.errors import (
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailableError,
    RepositoryNotFoundError,
    parse_retry_after,
)
from worker.registry.transport import where

MAX_BUILDS_BYTES = 2 * 1024 * 1024
MAX_TAGS_PER_BUILD = 100
MAX_ERROR_CHARS = 500
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class QuayBuild:
    id: str
    phase: str
    tags: tuple[str, ...]  # valid tag names only, at most MAX_TAGS_PER_BUILD
    started: datetime | None
    error: str | None


async def list_builds(
    client: RegistryClient, host: str, repository: str, token: str | None, limit: int,
) -> list[QuayBuild]:
    """The repository's newest `limit` builds, newest first. Raises RegistryAuthError (401,
    403: a private repository without a token, or a token that may not read it),
    RepositoryNotFoundError (404), RateLimitedError, RegistryUnavailableError (5xx, timeout,
    connection), RegistryProtocolError (an answer of another shape), ForbiddenTargetError
    (the guard) and HostBusyError (the host's budget)."""
    url = f"{client.base_url(host)}/api/v1/repository/{quote(repository, safe='/')}/build/?limit={int(limit)}"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    reply = await client.transport.send("GET", url, "builds", headers, host, MAX_BUILDS_BYTES)
    if not 200 <= reply.status < 300:
        raise api_error(reply.status, reply.body, reply.headers.get("Retry-After"), where("GET", url),
                        with_token=bool(token))
    return parse_builds(reply.body, limit)


def api_error(status: int, body: bytes, retry_after: str | None, at: str, *, with_token: bool) -> RegistryError:
    """The typed error of a Quay API answer that is not a success; its words are Quay's
    `detail` (or `error_message`), cut short."""
    detail = _detail(body)
    said = f"{at}: the build API answered {status}{f' ({detail})' if detail else ''}"
    if status in (401, 403):
        hint = ("the image's build_token was refused or may not read this repository" if with_token
                else "a private repository's builds need a Quay application token as the image's build_token")
        return RegistryAuthError(f"{said}: {hint}", status=status)
    if status == 404:
        return RepositoryNotFoundError(f"{said}: no such repository on this Quay", status=status)
    if status == 429:
        return RateLimitedError(said, retry_after=parse_retry_after(retry_after), status=status)
    if status >= 500:
        return RegistryUnavailableError(said, status=status)
    return RegistryProtocolError(said, status=status, transient=False)


def _detail(body: bytes) -> str:
    try:
        data: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    text = data.get("detail") or data.get("error_message") or ""
    return str(text)[:200] if isinstance(text, str) else ""


def parse_builds(body: bytes, limit: int) -> list[QuayBuild]:
    """The builds of a `{"builds": [...]}` answer, in its order (newest first), at most
    `limit`. An entry without a usable `id` or `phase` is skipped; tags that are not valid
    tag names are dropped. RegistryProtocolError when the answer is not of that shape."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RegistryProtocolError("the build API answered something that is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("builds"), list):
        raise RegistryProtocolError('the build API answer has no "builds" list')
    out: list[QuayBuild] = []
    for entry in data["builds"][: max(limit, 0)]:
        if not isinstance(entry, dict):
            continue
        build_id, phase = entry.get("id"), entry.get("phase")
        if not isinstance(build_id, str) or not 0 < len(build_id) <= MAX_ID_CHARS:
            continue
        if not isinstance(phase, str) or not phase:
            continue
        tags = entry.get("tags")
        names = [t for t in tags if is_valid_tag(t)] if isinstance(tags, list) else []
        error = entry.get("error")
        out.append(QuayBuild(
            build_id, phase.lower()[:50], tuple(dict.fromkeys(names))[:MAX_TAGS_PER_BUILD],
            parse_started(entry.get("started")),
            error[:MAX_ERROR_CHARS] if isinstance(error, str) and error else None,
        ))
    return out


def parse_started(value: object) -> datetime | None:
    """Quay's `started` (RFC 2822, as email.utils.formatdate writes it), in UTC; None if absent
    or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
