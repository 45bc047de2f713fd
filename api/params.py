"""Query-string parsing: list paging and the image filters (SPEC §1 Lists)."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import MultiMapping

from api.errors import BadRequestError
from core.names import InvalidNameError, parse_image_name

_TRUE = {"true", "True", "1"}
_FALSE = {"false", "False", "0"}
# `after`/`before` are the cursors that next/previous links carry (the last and the first
# name of the page they come from); clients never need to build them.
PAGING = ("limit", "offset", "after", "before")
# Tutum clients send `format=json`; harmless, so it is accepted and ignored.
IGNORED = ("format",)
MAX_OFFSET = 2**31 - 1
MAX_CURSOR = 512


@dataclass(frozen=True)
class Page:
    """What a list request asks for: `limit` rows after the cursor, before it, or at `offset`.

    `offset` is also the position the caller believes the page starts at; with a cursor it
    is only echoed (in meta and in the next link), the cursor decides the rows.
    """

    limit: int
    offset: int = 0
    after: str | None = None
    before: str | None = None

    @property
    def by_offset(self) -> bool:
        """The caller chose an offset itself (the Python SDK does): answer with offset links."""
        return self.after is None and self.before is None and self.offset > 0


@dataclass(frozen=True)
class ImageFilter:
    """The image list filters; None means not filtered on."""

    name: str | None = None
    jumpstart: bool | None = None
    is_private: bool | None = None
    is_user: bool | None = None
    registry: str | None = None  # host
    category: str | None = None


def parse_bool(key: str, raw: str) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadRequestError(f"filter '{key}' must be true or false (got {raw!r})", field=key)


def _whole(query: MultiMapping[str], key: str, default: int) -> int:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"'{key}' must be a whole number (got {raw!r})", field=key) from None
    if value < 0:
        raise BadRequestError(f"'{key}' must not be negative", field=key)
    if value > MAX_OFFSET:
        raise BadRequestError(f"'{key}' must be at most {MAX_OFFSET}", field=key)
    return value


def _cursor(query: MultiMapping[str], key: str) -> str | None:
    raw = query.get(key)
    if raw is None:
        return None
    if not raw or len(raw) > MAX_CURSOR or "\x00" in raw:
        raise BadRequestError(
            f"'{key}' is a cursor from a next or previous link (1-{MAX_CURSOR} characters)", field=key
        )
    return raw


def parse_paging(query: MultiMapping[str], max_limit: int) -> Page:
    limit = _whole(query, "limit", 25) or 25
    offset = _whole(query, "offset", 0)
    after, before = _cursor(query, "after"), _cursor(query, "before")
    if after is not None and before is not None:
        raise BadRequestError("give 'after' or 'before', not both", field="before")
    return Page(min(limit, max_limit), offset, after, before)


def _registry_host(raw: str) -> str:
    prefix = "/api/v1/registry/"
    host = raw.removeprefix(prefix).strip("/") if raw.startswith(prefix) else ""
    if not host or "/" in host:
        raise BadRequestError(
            f"filter 'registry' must be a registry resource URI like /api/v1/registry/<host>/ (got {raw!r})",
            field="registry",
        )
    return host


_FIELDS = {"name": "name", "jumpstart": "jumpstart", "is_private_image": "is_private",
           "is_user_image": "is_user", "registry": "registry", "categories__name": "category"}


def parse_image_filters(query: MultiMapping[str]) -> tuple[ImageFilter, list[tuple[str, str]]]:
    """(the filters, the caller's raw filters to keep in next/previous links).

    Raises BadRequestError naming an unknown filter, a malformed value or a repeated filter.
    """
    values: dict[str, object] = {}
    keep: list[tuple[str, str]] = []
    for key, raw in query.items():
        if key in PAGING or key in IGNORED:
            continue
        value: object
        if key in ("jumpstart", "is_private_image", "is_user_image"):
            value = parse_bool(key, raw)
        elif key == "name":
            try:
                value = parse_image_name(raw).name
            except InvalidNameError as exc:
                raise BadRequestError(f"filter 'name': {exc}", field="name") from None
        elif key == "registry":
            value = _registry_host(raw)
        elif key == "categories__name":
            if not raw or len(raw) > 255 or "\x00" in raw:
                raise BadRequestError(
                    "filter 'categories__name' must be 1-255 characters, without NUL", field=key
                )
            value = raw
        else:
            raise BadRequestError(
                f"unknown filter '{key}'; use name, jumpstart, is_private_image, is_user_image, "
                "registry or categories__name",
                field=key,
            )
        if _FIELDS[key] in values:
            raise BadRequestError(f"filter '{key}' is given more than once", field=key)
        values[_FIELDS[key]] = value
        keep.append((key, raw))
    return ImageFilter(**values), keep  # type: ignore[arg-type]


def reject_unknown(query: MultiMapping[str], allowed: tuple[str, ...] = PAGING) -> None:
    for key in query:
        if key not in allowed and key not in IGNORED:
            raise BadRequestError(f"unknown query parameter '{key}'", field=key)
