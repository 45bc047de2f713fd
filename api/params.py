"""Query-string parsing: list paging and the image filters (SPEC §1 Lists)."""

from __future__ import annotations

from typing import Any

from multidict import MultiMapping

from api.errors import BadRequestError
from core.names import InvalidNameError, parse_image_name

_TRUE = {"true", "True", "1"}
_FALSE = {"false", "False", "0"}
PAGING = ("limit", "offset")
# Tutum clients send `format=json`; harmless, so it is accepted and ignored.
IGNORED = ("format",)
MAX_OFFSET = 2**31 - 1


def parse_bool(key: str, raw: str) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadRequestError(f"filter '{key}' must be true or false (got {raw!r})", field=key)


def parse_paging(query: MultiMapping[str], max_limit: int) -> tuple[int, int]:
    values = {}
    for key, default in (("limit", 25), ("offset", 0)):
        raw = query.get(key)
        if raw is None or raw == "":
            values[key] = default
            continue
        try:
            values[key] = int(raw)
        except ValueError:
            raise BadRequestError(f"'{key}' must be a whole number (got {raw!r})", field=key) from None
        if values[key] < 0:
            raise BadRequestError(f"'{key}' must not be negative", field=key)
        if values[key] > MAX_OFFSET:
            raise BadRequestError(f"'{key}' must be at most {MAX_OFFSET}", field=key)
    limit = values["limit"] or 25
    return min(limit, max_limit), values["offset"]


def _registry_host(raw: str) -> str:
    prefix = "/api/v1/registry/"
    host = raw.removeprefix(prefix).strip("/") if raw.startswith(prefix) else ""
    if not host or "/" in host:
        raise BadRequestError(
            f"filter 'registry' must be a registry resource URI like /api/v1/registry/<host>/ (got {raw!r})",
            field="registry",
        )
    return host


def parse_image_filters(query: MultiMapping[str]) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """(filters for the query, the caller's raw filters to keep in next/previous links).

    Raises BadRequestError naming an unknown filter or a malformed value.
    """
    filters: list[tuple[str, Any]] = []
    keep: list[tuple[str, str]] = []
    for key, raw in query.items():
        if key in PAGING or key in IGNORED:
            continue
        if key in ("jumpstart", "is_private_image", "is_user_image"):
            value: Any = parse_bool(key, raw)
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
        filters.append((key, value))
        keep.append((key, raw))
    return filters, keep


def reject_unknown(query: MultiMapping[str], allowed: tuple[str, ...] = PAGING) -> None:
    for key in query:
        if key not in allowed and key not in IGNORED:
            raise BadRequestError(f"unknown query parameter '{key}'", field=key)
