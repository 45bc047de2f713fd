"""Typed results: dataclasses built from the Tutum v1 wire format.

Each `from_json` is lenient: a missing key becomes its empty value and keys the client does
not know yet are kept, untouched, in `raw` (the object exactly as the service sent it), so a
newer service never breaks an older client. Dates are parsed from RFC 2822 into aware UTC
datetimes; tag and image references are given as names, not resource URIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

API_PREFIX = "/api/v1/"

T = TypeVar("T")
DateTime = datetime  # Event has a field called `datetime`, as on the wire
Json = dict[str, Any]


def parse_date(value: Any) -> datetime | None:
    """`Fri, 8 Nov 2013 00:22:26 +0000` → an aware datetime; None for null or garbage."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def image_name_of(uri: str) -> str:
    """`/api/v1/image/<name>/` → `<name>`."""
    return uri.removeprefix(f"{API_PREFIX}image/").strip("/")


def split_tag_uri(uri: str) -> tuple[str, str]:
    """`/api/v1/image/<name>/tag/<tag>/` → (`<name>`, `<tag>`). Tags have no slash, so the
    last `/tag/` separates them even in a name like `team/tag/app`."""
    image_part, _, tag = uri.rstrip("/").rpartition("/tag/")
    return image_name_of(image_part), tag


def _str(data: Json, key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _pairs(items: Any, first: str, second: str) -> tuple[tuple[Any, Any], ...]:
    return tuple((i.get(first), i.get(second)) for i in items or () if isinstance(i, dict))


@dataclass(frozen=True)
class Registry:
    name: str
    host: str
    resource_uri: str
    icon_url: str | None = None
    is_ssl: bool = True
    is_tutum_registry: bool = False
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Registry:
        return cls(
            name=_str(data, "name"), host=_str(data, "host"), resource_uri=_str(data, "resource_uri"),
            icon_url=data.get("icon_url"), is_ssl=bool(data.get("is_ssl", True)),
            is_tutum_registry=bool(data.get("is_tutum_registry")), raw=data,
        )


@dataclass(frozen=True)
class Image:
    """An image; `tags` are tag names, sorted as the service sorts them."""

    name: str
    resource_uri: str
    state: str
    description: str = ""
    icon_url: str | None = None
    star_count: int = 0
    jumpstart: bool = False
    in_use: bool = False
    categories: tuple[str, ...] = ()
    is_private_image: bool = False
    public_url: str = ""
    registry: str = ""  # the registry's host
    last_build_date: datetime | None = None
    tags: tuple[str, ...] = ()
    build_source: Any = None
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Image:
        registry = _str(data, "registry")
        return cls(
            name=_str(data, "name"), resource_uri=_str(data, "resource_uri"), state=_str(data, "state"),
            description=_str(data, "description"), icon_url=data.get("icon_url"),
            star_count=int(data.get("star_count") or 0), jumpstart=bool(data.get("jumpstart")),
            in_use=bool(data.get("in_use")),
            categories=tuple(c["name"] for c in data.get("categories") or () if isinstance(c, dict) and "name" in c),
            is_private_image=bool(data.get("is_private_image")), public_url=_str(data, "public_url"),
            registry=registry.removeprefix(f"{API_PREFIX}registry/").strip("/"),
            last_build_date=parse_date(data.get("last_build_date")),
            tags=tuple(split_tag_uri(t)[1] for t in data.get("tags") or () if isinstance(t, str)),
            build_source=data.get("build_source"), raw=data,
        )


@dataclass(frozen=True)
class Layer:
    """The image config a tag points to."""

    docker_id: str
    resource_uri: str = ""
    author: str = ""
    creation: datetime | None = None
    entrypoint: str = ""
    run_command: str = ""
    envvars: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[int, str], ...] = ()  # (port, "tcp" | "udp")
    volumes: tuple[str, ...] = ()
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Layer:
        return cls(
            docker_id=_str(data, "docker_id"), resource_uri=_str(data, "resource_uri"),
            author=_str(data, "author"), creation=parse_date(data.get("creation")),
            entrypoint=_str(data, "entrypoint"), run_command=_str(data, "run_command"),
            envvars=_pairs(data.get("envvars"), "key", "value"), labels=_pairs(data.get("labels"), "key", "value"),
            ports=_pairs(data.get("ports"), "port", "protocol"),
            volumes=tuple(v.get("container_path", "") for v in data.get("volumes") or () if isinstance(v, dict)),
            raw=data,
        )


@dataclass(frozen=True)
class Tag:
    name: str
    image: str  # the image's name
    state: str
    resource_uri: str = ""
    full_name: str = ""
    buildable: bool = False
    layer: Layer | None = None
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Tag:
        layer = data.get("layer")
        return cls(
            name=_str(data, "name"), image=image_name_of(_str(data, "image")), state=_str(data, "state"),
            resource_uri=_str(data, "resource_uri"), full_name=_str(data, "full_name"),
            buildable=bool(data.get("buildable")),
            layer=Layer.from_json(layer) if isinstance(layer, dict) else None, raw=data,
        )


@dataclass(frozen=True)
class SyncStatus:
    """`GET /api/v1/image/<name>/sync/`: the last sync, its error and the next run.

    The service may add fields (per-tag problems, the tag policy, ...): they are in `extra`,
    by their wire name, with their JSON value.
    """

    image: str
    state: str = ""
    syncing: bool = False
    last_synced_at: datetime | None = None
    next_sync_at: datetime | None = None
    error: str | None = None
    error_at: datetime | None = None
    consecutive_failures: int = 0
    sync_requested: bool = False  # a re-sync was asked for and no sync has finished since
    extra: Json = field(default_factory=dict)
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    KNOWN = ("image", "state", "syncing", "last_synced_at", "next_sync_at", "error", "error_at",
             "consecutive_failures", "sync_requested")

    @classmethod
    def from_json(cls, data: Json) -> SyncStatus:
        error = data.get("error")
        return cls(
            image=image_name_of(_str(data, "image")), state=_str(data, "state"),
            syncing=bool(data.get("syncing")), last_synced_at=parse_date(data.get("last_synced_at")),
            next_sync_at=parse_date(data.get("next_sync_at")), error=error if isinstance(error, str) else None,
            error_at=parse_date(data.get("error_at")),
            consecutive_failures=int(data.get("consecutive_failures") or 0),
            sync_requested=bool(data.get("sync_requested")),
            extra={k: v for k, v in data.items() if k not in cls.KNOWN}, raw=data,
        )


@dataclass(frozen=True)
class Event:
    """One message of the events stream: a change of an image (`type == "image"`) or of one of
    its tags (`type == "imagetag"`; then `tag` is its name)."""

    type: str
    action: str  # create | update | delete
    resource_uri: str
    image: str
    tag: str | None = None
    state: str | None = None
    datetime: DateTime | None = None
    parents: tuple[str, ...] = ()
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Json) -> Event:
        uri = _str(data, "resource_uri")
        kind = _str(data, "type")
        if kind == "imagetag":
            image, tag = split_tag_uri(uri)
        else:
            image, tag = image_name_of(uri), None
        state = data.get("state")
        return cls(
            type=kind, action=_str(data, "action"), resource_uri=uri, image=image, tag=tag,
            state=state if isinstance(state, str) else None, datetime=parse_date(data.get("datetime")),
            parents=tuple(p for p in data.get("parents") or () if isinstance(p, str)), raw=data,
        )

    @property
    def full_name(self) -> str:
        return f"{self.image}:{self.tag}" if self.tag is not None else self.image


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its objects and the `meta` of the envelope."""

    objects: list[T]
    total_count: int
    limit: int
    offset: int
    next: str | None = None
    previous: str | None = None
