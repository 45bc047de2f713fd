"""Request bodies: content type, size, JSON, and the fields each endpoint accepts."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.errors import BadRequestError, UnsupportedMediaTypeError
from core import notify, tag_policy
from core.names import InvalidNameError, parse_image_name

M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # Postgres text cannot hold NUL: refuse it here rather than fail in the database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class ImagePatch(_Body):
    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=4096)
    description: str | None = Field(default=None, max_length=4096)
    # Our extension (Tutum clients never send it): which tags are synced; `null` in a PATCH
    # goes back to the default. Never part of the image's wire format; shown at …/sync/.
    tag_policy: dict[str, Any] | None = None
    # Our extension: the application token that reads a private repository's builds from its
    # registry's build API (Quay); write-only like `password`, `null` in a PATCH removes it.
    build_token: str | None = Field(default=None, min_length=1, max_length=4096, repr=False)

    # Our extension: globs of tags expected never to move (`v*.*.*`); a move of one is
    # flagged (a tag.moved notification with expected_immutable, and at …/sync/).
    immutable_tags: list[str] | None = Field(default=None, max_length=50)

    @field_validator("tag_policy", mode="after")
    @classmethod
    def _tag_policy(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else tag_policy.parse(value).to_json()

    @field_validator("immutable_tags", mode="after")
    @classmethod
    def _immutable_tags(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            if not notify.is_tag_glob(pattern):
                raise ValueError(f"has {pattern!r}, which is not a tag glob (tag characters, * and ?)")
        return None if value is None else sorted(set(value))

    @property
    def sets_tag_policy(self) -> bool:
        """The body names `tag_policy` (possibly as null: back to the default)."""
        return "tag_policy" in self.model_fields_set

    @property
    def sets_build_token(self) -> bool:
        """The body names `build_token` (possibly as null: remove it)."""
        return "build_token" in self.model_fields_set


class ImageCreate(ImagePatch):
    name: str


class SubscriptionPatch(_Body):
    url: str | None = Field(default=None, max_length=2048)
    events: list[str] | None = Field(default=None, min_length=1, max_length=len(notify.EVENT_TYPES))
    image: str | None = Field(default=None, max_length=255)  # a name; null: the account's own images
    tag_pattern: str | None = None  # a glob; null: every tag
    enabled: bool | None = None

    @field_validator("url", mode="after")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise ValueError("must be an http:// or https:// URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry a user name or password: deliveries are signed instead")
        del port
        return value

    @field_validator("events", mode="after")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(notify.EVENT_TYPES))
        if unknown:
            raise ValueError(f"has unknown type(s) {', '.join(unknown)}; use {', '.join(notify.EVENT_TYPES)}")
        return [t for t in notify.EVENT_TYPES if t in value]

    @field_validator("image", mode="after")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_image_name(value).name
        except InvalidNameError as exc:
            raise ValueError(f"is not a valid image name: {exc}") from None

    @field_validator("tag_pattern", mode="after")
    @classmethod
    def _tag_pattern(cls, value: str | None) -> str | None:
        if value is not None and not notify.is_tag_glob(value):
            raise ValueError("must be a tag glob (tag characters, * and ?)")
        return value

    def names(self, field: str) -> bool:
        """The body names `field` (a null clears image and tag_pattern)."""
        return field in self.model_fields_set


class SubscriptionCreate(SubscriptionPatch):
    url: str = Field(max_length=2048)  # type: ignore[assignment]
    events: list[str] = Field(min_length=1, max_length=len(notify.EVENT_TYPES))  # type: ignore[assignment]


def credentials_pair(body: ImagePatch, stored: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """(username, password) from the body, a field it leaves out taken from `stored` (the
    image's current credentials: a PATCH changes only what it names); None when the body names
    neither; 400 naming the missing one when there is nothing stored to keep."""
    if body.username is None and body.password is None:
        return None
    username = body.username if body.username is not None else stored[0] if stored else None
    password = body.password if body.password is not None else stored[1] if stored else None
    if password is None:
        raise BadRequestError("a username needs its password", field="password")
    if username is None:
        raise BadRequestError("a password needs its username", field="username")
    return username, password


def _describe(exc: ValidationError) -> tuple[str, str]:
    """(field, sentence) for the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    kind = err["type"]
    if kind == "extra_forbidden":
        return field, f"unknown field '{field}'"
    if kind == "missing":
        return field, f"field '{field}' is required"
    if kind == "string_type":
        return field, f"field '{field}' must be a string"
    if kind == "string_too_long":
        return field, f"field '{field}' is too long"
    if kind == "string_too_short":
        return field, f"field '{field}' must not be empty"
    if kind == "dict_type":
        return field, f"field '{field}' must be an object"
    if kind == "value_error":
        return field, f"field '{field}' " + str(err["msg"]).removeprefix("Value error, ")
    return field, f"field '{field}': {err['msg']}"


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse the body as `model`; 415 for an explicit non-JSON content type (a body sent with
    no Content-Type at all is JSON: the Go SDK sends none), 400 naming the field."""
    ctype = request.content_type
    has_type = hdrs.CONTENT_TYPE in request.headers
    if has_type and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"send the body as JSON with Content-Type: application/json (got {ctype or 'none'})"
        )
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    try:
        data: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object")
    return parse_body(model, data)


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or 400 naming the field (also the dashboard's forms)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = _describe(exc)
        raise BadRequestError(message, field=field) from None
