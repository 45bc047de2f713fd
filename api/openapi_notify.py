"""The OpenAPI description of tag history and notification subscriptions (SPEC §7): schemas
and paths merged into api/openapi.py's document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.openapi_schemas import BOOL, INT, RFC2822, STR, URI, Schema, array, nullable, obj, ref
from core.notify import EVENT_TYPES

Op = dict[str, Any]

EVENT = {"type": "string", "enum": list(EVENT_TYPES)}
GLOB = {"type": "string", "pattern": r"^[A-Za-z0-9_.*?-]{1,128}$",
        "description": "A tag glob: `*` any run, `?` one character"}
_SUB_FIELDS: dict[str, Schema] = {
    "url": {"type": "string", "maxLength": 2048, "description": "http(s) endpoint; the registries' address rules"},
    "events": {"type": "array", "items": EVENT, "minItems": 1},
    "image": nullable({"type": "string", "description": "An image name as the caller sees it; null: the "
                                                        "caller's own images (catalog images need a name)"}),
    "tag_pattern": nullable(GLOB),
    "enabled": BOOL,
}


def _list(item: str, order: str) -> Schema:
    return obj({"meta": ref("Meta"), "objects": array(ref(item))}, description=f"The list envelope, {order}")


SCHEMAS: dict[str, Schema] = {
    "HistoryEntry": obj({
        "digest": STR, "from": RFC2822, "until": nullable(RFC2822),
        "observed_via": {"type": "string", "enum": ["webhook", "poll", "unknown"]},
    }, description="A digest the tag pointed at, and when; `until` null: it still does"),
    "HistoryList": _list("HistoryEntry", "newest first"),
    "Subscription": obj({
        "id": INT, "resource_uri": URI, "url": STR, "events": array(EVENT), "image": nullable(STR),
        "tag_pattern": nullable(STR), "enabled": BOOL, "disabled_reason": nullable(STR), "created_at": RFC2822,
        "deliveries": URI,
        "secret": {"type": "string", "pattern": "^whsec_", "description": "Only when created or rotated"},
    }, optional=("secret",)),
    "SubscriptionList": _list("Subscription", "by id"),
    "SubscriptionCreate": obj(_SUB_FIELDS, optional=("image", "tag_pattern", "enabled")),
    "SubscriptionPatch": obj(_SUB_FIELDS, optional=tuple(_SUB_FIELDS)),
    "Delivery": obj({
        "id": INT, "resource_uri": URI, "webhook_id": STR, "type": EVENT, "data": {"type": "object"},
        "status": {"type": "string", "enum": ["pending", "delivered", "failed", "dropped"]},
        "created_at": RFC2822, "next_attempt_at": nullable(RFC2822), "finished_at": nullable(RFC2822),
        "note": nullable(STR),
        "attempts": array(obj({"at": RFC2822, "status": nullable(INT), "duration_ms": {"type": "number"},
                               "response": STR, "error": nullable(STR)})),
        "redeliver": URI,
    }, description="One event for one subscription; `webhook_id` is the same on every attempt"),
    "DeliveryList": _list("Delivery", "newest first"),
    "ImmutableMove": obj({"tag": STR, "moved_at": RFC2822, "digest": STR, "previous_digest": nullable(STR),
                          "warning": STR}),
}


def paths(op: Callable[..., Op], body: Callable[..., Op]) -> dict[str, dict[str, Op]]:
    """The paths, built with api/openapi.py's `_op` and `_body`."""
    one = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
    delivery = {"name": "delivery", "in": "path", "required": True, "schema": {"type": "integer"}}
    paged = ("limit", "offset")
    tags = ("notifications",)
    base = "/api/v1/subscription"
    return {
        "/api/v1/image/{name}/tag/{tag}/history/": {"get": op(
            "Every digest the tag pointed at, newest first (also of a tag that is gone)",
            {"200": body("HistoryList")}, (400, 404, 405), params=("name", "tag", "limit", "offset", "after", "before"),
            etag=True)},
        f"{base}/": {
            "get": op("The caller's subscriptions", {"200": body("SubscriptionList")}, (400,), params=paged,
                      tags=tags),
            "post": op("Subscribe an endpoint; the answer shows its `whsec_` secret once",
                       {"201": body("Subscription", "Created")}, (400, 413, 415), body="SubscriptionCreate",
                       tags=tags),
        },
        f"{base}/{{id}}/": {
            "get": op("One subscription", {"200": body("Subscription")}, (404,), params=(one,), tags=tags),
            "patch": op("Change it (`enabled: true` re-enables one a 410 disabled)", {"200": body("Subscription")},
                        (400, 404, 413, 415), params=(one,), body="SubscriptionPatch", tags=tags),
            "delete": op("Remove it and its delivery log", {"204": {"description": "Deleted, no body"}}, (404,),
                         params=(one,), tags=tags),
        },
        f"{base}/{{id}}/rotate/": {"post": op(
            "A new secret, shown once; the old one still signs for NOTIFY_ROTATION_GRACE_SECONDS",
            {"200": body("Subscription")}, (404,), params=(one,), tags=tags)},
        f"{base}/{{id}}/delivery/": {"get": op(
            "The delivery log, newest first, each attempt with its status, time and answer",
            {"200": body("DeliveryList")}, (400, 404), params=(one, *paged), tags=tags)},
        f"{base}/{{id}}/delivery/{{delivery}}/": {"get": op(
            "One delivery", {"200": body("Delivery")}, (404,), params=(one, delivery), tags=tags)},
        f"{base}/{{id}}/delivery/{{delivery}}/redeliver/": {"post": op(
            "Send the event again under the same webhook-id, after the pending ones",
            {"202": body("Delivery", "Queued")}, (404,), params=(one, delivery), tags=tags)},
    }
