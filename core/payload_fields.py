"""Reading the fields of a webhook sender's JSON body: each reader checks one field and
raises MalformedPayloadError with a sentence that names it (`what`), for the sender's
operator. Shared by the parsers in core/webhooks.py."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from core.names import HUB_ALIASES, HUB_HOST, InvalidNameError, is_digest, is_valid_tag, parse_image_name

_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")


class MalformedPayloadError(ValueError):
    """The body is not in the sender's documented format; the message says what is wrong."""


def load_json(body: bytes) -> Any:
    if not body.strip():
        raise MalformedPayloadError("the body is empty; send the event as JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedPayloadError("the body is not valid JSON") from None


def content_key(prefix: str, *parts: Any) -> str:
    blob = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)
    return f"{prefix}:{hashlib.sha256(blob).hexdigest()}"


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayloadError(f"{what} must be a JSON object")
    return value


def text(obj: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    label = key if what == "the body" else f"{what}.{key}"
    if value is None or value == "":
        if required:
            raise MalformedPayloadError(f"{label} is missing")
        return None
    if not isinstance(value, str):
        raise MalformedPayloadError(f"{label} must be a string")
    return value


def parse_time(value: Any, what: str) -> datetime | None:
    """RFC 3339 text (nanoseconds allowed) or epoch seconds (int or float) → aware UTC."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            seconds = float(value)
            if seconds > 1e11:  # milliseconds
                seconds /= 1000
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise MalformedPayloadError(f"{what} is not a time (RFC 3339 text or epoch seconds)")


def normalize_target(host: str, repository: str, what: str) -> tuple[str, str]:
    """(host, repository) as stored on images: Docker Hub aliases become HUB_HOST and a
    one-component Hub name becomes library/<name>."""
    host = host.strip().lower()
    if host.startswith(("http://", "https://")):
        host = urlsplit(host).netloc
    if not _HOST.fullmatch(host):
        raise MalformedPayloadError(f"{what}: {host!r} is not a registry host")
    repository = repository.strip().strip("/")
    try:
        if host in HUB_ALIASES:
            return HUB_HOST, parse_image_name(repository).repository
        parse_image_name(f"localhost/{repository}")  # the path grammar, whatever the host
    except InvalidNameError as exc:
        raise MalformedPayloadError(f"{what}: repository {repository!r} is invalid: {exc}") from None
    return host, repository


def tag(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not is_valid_tag(value):
        raise MalformedPayloadError(f"{what}: {value!r} is not a valid tag")
    return value


def digest(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not is_digest(value):
        raise MalformedPayloadError(f"{what}: {value!r} is not a digest (algorithm:hex)")
    return value


def listed(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedPayloadError(f"{what} must be a list")
    return value


def build_id(value: Any, what: str) -> str | None:
    """A build id: a non-empty string or an integer (a CI's build number), as text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedPayloadError(f"{what} must be a string or an integer")
    text = str(value).strip()
    if not text or len(text) > 200:
        raise MalformedPayloadError(f"{what} must be 1 to 200 characters")
    return text
