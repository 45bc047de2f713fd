"""Jinja filters of the dashboard: dates as people read them, digests short, names as paths."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from api.serializers import rfc2822


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """`3 h ago`, `2 d ago`, `just now`; `never` for None (a future time says `in 5 min`)."""
    if value is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("y", 365 * 86400), ("mo", 30 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = f"{int(seconds // size)} {unit}"
            return f"in {n}" if future else f"{n} ago"
    return "in a moment" if future else "just now"


def exact(value: datetime | None) -> str:
    """The exact time (UTC, RFC 2822 as the API writes it), for a tooltip."""
    return rfc2822(value) or ""


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def short_digest(value: str | None) -> str:
    """`sha256:0123456789ab` of a digest (12 hex digits, as docker shows image ids)."""
    if not value:
        return ""
    algo, _, hexa = value.partition(":")
    return f"{algo}:{hexa[:12]}" if hexa else value[:19]


def path(name: str) -> str:
    """An image or tag name in a URL path (slashes kept: `/ui/image/team/app/`)."""
    return quote(name, safe="/:@")


def dom_id(name: str, prefix: str) -> str:
    """A stable element id for a name (live updates find their row by it)."""
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def state_class(state: str | None) -> str:
    return f"badge badge-{(state or 'empty').lower()}"


FILTERS: dict[str, Any] = {
    "ago": ago, "exact": exact, "iso": iso, "short_digest": short_digest, "path": path, "dom_id": dom_id,
    "state_class": state_class,
}
