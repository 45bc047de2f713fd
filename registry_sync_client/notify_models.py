"""Typed results of the tag history and the notification subscriptions (registry-sync's
extensions of the Tutum API), lenient like registry_sync_client.models: unknown keys are
kept in `raw`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry_sync_client.models import Json, parse_date


@dataclass(frozen=True)
class HistoryEntry:
    """A digest a tag pointed at, from `since` until `until` (None: it still does), and how
    the service saw it (`webhook` or `poll`)."""

    digest: str
    since: datetime | None
    until: datetime | None
    observed_via: str
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> HistoryEntry:
        return cls(str(data.get("digest") or ""), parse_date(data.get("from")), parse_date(data.get("until")),
                   str(data.get("observed_via") or ""), raw=data)


@dataclass(frozen=True)
class Subscription:
    """An endpoint told of changes; `secret` (`whsec_…`) only when just created or rotated."""

    id: int
    url: str
    events: tuple[str, ...]
    image: str | None = None
    tag_pattern: str | None = None
    enabled: bool = True
    disabled_reason: str | None = None
    secret: str | None = field(default=None, repr=False)
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Subscription:
        return cls(
            id=int(data.get("id") or 0), url=str(data.get("url") or ""), events=tuple(data.get("events") or ()),
            image=data.get("image"), tag_pattern=data.get("tag_pattern"), enabled=bool(data.get("enabled", True)),
            disabled_reason=data.get("disabled_reason"), secret=data.get("secret"), raw=data,
        )


@dataclass(frozen=True)
class Delivery:
    """One event sent (or to be sent) to one subscription, with each attempt as sent."""

    id: int
    webhook_id: str
    type: str
    status: str
    data: Json
    attempts: tuple[dict[str, Any], ...] = ()
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Delivery:
        return cls(
            id=int(data.get("id") or 0), webhook_id=str(data.get("webhook_id") or ""), type=str(data.get("type") or ""),
            status=str(data.get("status") or ""), data=dict(data.get("data") or {}),
            attempts=tuple(a for a in data.get("attempts") or () if isinstance(a, dict)), raw=data,
        )
