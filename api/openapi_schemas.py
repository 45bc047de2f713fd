"""JSON Schemas (2020-12, as OpenAPI 3.1 uses) of every body the API takes or gives.

They are strict on purpose: every field the wire format promises is `required` and no other
is allowed (`additionalProperties: false`), so a serializer change that drops, renames or
adds a field fails tests/ops/test_openapi.py until this file says so too.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str | Schema) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"} if isinstance(name, str) else name


def obj(props: dict[str, Schema], *, optional: tuple[str, ...] = (), extra: bool = False,
        description: str = "") -> Schema:
    """An object with exactly `props` (all required but `optional`)."""
    out: Schema = {
        "type": "object",
        "properties": props,
        "required": [k for k in props if k not in optional],
        "additionalProperties": extra,
    }
    if description:
        out["description"] = description
    return out


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
STATE: Schema = {"type": "string", "enum": ["Empty", "Success", "Building", "Failed"]}
URI = {"type": "string", "pattern": "^/api/v1/.*/$"}
RFC2822: Schema = {
    "type": "string",
    "description": "RFC 2822 date in UTC, as Tutum wrote it: `Fri, 8 Nov 2013 00:22:26 +0000`",
    "pattern": r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [1-9][0-9]? (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
               r" [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} \+0000$",
}
KEY_VALUE = obj({"key": STR, "value": STR})
# our extension: which tags of an image are synced (core/tag_policy.py)
_TAG_POLICY_FIELDS: dict[str, Schema] = {
    "include": {"type": "array", "items": STR, "maxItems": 50, "description": "glob patterns; none: every tag"},
    "exclude": {"type": "array", "items": STR, "maxItems": 50, "description": "glob patterns"},
    "max_tags": nullable({"type": "integer", "minimum": 1, "maximum": 10000}),
}
TAG_POLICY_IN = nullable(obj(_TAG_POLICY_FIELDS, optional=tuple(_TAG_POLICY_FIELDS),
                             description="An extension Tutum clients never send; null: the default"))

IMMUTABLE_TAGS: Schema = {"type": "array", "items": STR, "maxItems": 50,
                          "description": "Globs of tags expected never to move (`v*.*.*`): a move is flagged"}


# our extension: build states read from the registry's build API (worker/quay_builds.py)
BUILDS = obj({
    "build_token": {"type": "boolean", "description": "A build_token is stored (it is never shown)"},
    "read_at": nullable(RFC2822),
    "error": nullable({"type": "string", "description": "Why the last read failed: a 401/403 means the"
                                                        " repository is private and needs a build_token"}),
    "error_at": nullable(RFC2822),
    "next_poll_at": nullable({**RFC2822, "description": "A build runs: read again then (BUILD_POLL_SECONDS)"}),
    "recent": array(obj({
        "id": STR,
        "phase": {"type": "string", "description": "Quay's phase: waiting, build-scheduled, unpacking, pulling,"
                                                   " building, pushing, complete, error, internalerror, expired,"
                                                   " cannot_load, cancelled"},
        "state": nullable({**STATE, "description": "What the phase makes of the tags it names; null: none"
                                                   " (cancelled: the tags show what the registry has)"}),
        "tags": array(STR),
        "started": nullable(RFC2822),
        "ended_at": nullable({**RFC2822, "description": "When a terminal phase was first seen"}),
        "error": nullable(STR),
    })),
}, description="The last read of the image's builds, newest first")
_BUILD_TOKEN_IN: Schema = nullable({
    "type": "string", "minLength": 1, "maxLength": 4096, "writeOnly": True,
    "description": "An extension: a Quay application token that may read the repository's builds"
                   " (private repositories); encrypted, never returned; null removes it",
})


def _list(item: str) -> Schema:
    return obj({"meta": ref("Meta"), "objects": array(ref(item))},
               description=f"The list envelope of {item} objects, ordered by name")


SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {"error": {"type": "string", "description": "A sentence saying what went wrong"},
         "field": {"type": "string", "description": "The parameter or body field at fault"}},
        optional=("field",), extra=True, description="Every error: a sentence plus any detail fields",
    ),
    "Meta": obj({
        "limit": INT, "offset": INT, "total_count": INT,
        "next": nullable({"type": "string", "pattern": "^/api/v1/"}),
        "previous": nullable({"type": "string", "pattern": "^/api/v1/"}),
    }, description="Paging: next/previous keep the caller's filters; null at either end"),
    "Image": obj({
        "resource_uri": URI,
        "name": STR,
        "description": STR,
        "icon_url": nullable(STR),
        "state": STATE,
        "star_count": INT,
        "jumpstart": BOOL,
        "in_use": BOOL,
        "categories": array(obj({"name": STR})),
        "is_private_image": BOOL,
        "public_url": STR,
        "registry": URI,
        "last_build_date": nullable(RFC2822),
        "tags": array(URI),
        "build_source": {"type": "null", "description": "Always null (client compatibility)"},
    }),
    "Layer": obj({
        "author": STR,
        "creation": nullable(RFC2822),
        "docker_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "entrypoint": STR,
        "run_command": STR,
        "envvars": array(KEY_VALUE),
        "labels": array(KEY_VALUE),
        "ports": array(obj({"port": INT, "protocol": {"type": "string", "enum": ["tcp", "udp"]}})),
        "volumes": array(obj({"container_path": STR})),
        "resource_uri": URI,
    }, description="The image config a tag points to"),
    "Tag": obj({
        "resource_uri": URI,
        "name": STR,
        "full_name": STR,
        "image": URI,
        "state": STATE,
        "buildable": BOOL,
        "layer": nullable(ref("Layer")),
    }),
    "Registry": obj({
        "resource_uri": URI, "name": STR, "host": STR, "icon_url": nullable(STR), "is_ssl": BOOL,
        "is_tutum_registry": BOOL,
    }),
    "ImageList": _list("Image"),
    "TagList": _list("Tag"),
    "RegistryList": _list("Registry"),
    "Account": obj({"resource_uri": URI, "username": STR, "is_admin": BOOL}),
    "SyncStatus": obj({
        "image": URI,
        "state": STATE,
        "syncing": BOOL,
        "last_synced_at": nullable(RFC2822),
        "next_sync_at": nullable(RFC2822),
        "error": nullable(STR),
        "error_at": nullable(RFC2822),
        "consecutive_failures": INT,
        "sync_requested": BOOL,
        "tag_issues": array(obj({"tag": STR, "error": nullable(STR), "note": nullable(STR)})),
        "tag_issue_count": INT,
        "tags_truncated": BOOL,
        "tags_note": nullable(STR),
        "poll_interval_seconds": {"type": "number"},
        "tag_policy": obj({**_TAG_POLICY_FIELDS, "default": BOOL}),
        "immutable_tags": array(STR),
        "warnings": array(ref("ImmutableMove")),
        "builds": nullable(BUILDS),
    }, description="An extension: the image's last sync, its error and the next run; whether a"
                   " sync was requested (POST …/sync/, a build, a webhook) and none has finished"
                   " since (`sync_requested`); the tags"
                   " whose content could not be read (`error`, their last good data kept) or"
                   " has no layer (`note`), the first 100 by name; whether the tag list was"
                   " cut to MAX_TAGS_PER_IMAGE; the adaptive poll interval and the tag policy;"
                   " on a build-API host (QUAY_HOSTS), the last read of its builds"),
    "ImagePatch": obj({
        "description": {"type": "string", "maxLength": 4096},
        "username": {"type": "string", "maxLength": 255},
        "password": {"type": "string", "maxLength": 4096, "writeOnly": True},
        "tag_policy": TAG_POLICY_IN,
        "immutable_tags": IMMUTABLE_TAGS,
        "build_token": _BUILD_TOKEN_IN,
    }, optional=("description", "username", "password", "tag_policy", "immutable_tags", "build_token"),
        description="username and password go together; they are encrypted and never returned"),
    "ImageCreate": obj({
        "name": STR,
        "description": {"type": "string", "maxLength": 4096},
        "username": {"type": "string", "maxLength": 255},
        "password": {"type": "string", "maxLength": 4096, "writeOnly": True},
        "tag_policy": TAG_POLICY_IN,
        "immutable_tags": IMMUTABLE_TAGS,
        "build_token": _BUILD_TOKEN_IN,
    }, optional=("description", "username", "password", "tag_policy", "immutable_tags", "build_token")),
    "Health": obj({"status": {"const": "ok"}}),
    "Ready": obj({"status": {"const": "ok"},
                  "checks": obj({"postgres": STR, "redis": STR})}),
    "Event": obj({
        "type": {"type": "string", "enum": ["image", "imagetag"]},
        "action": {"type": "string", "enum": ["create", "update", "delete"]},
        "resource_uri": URI,
        "state": nullable(STATE),
        "parents": array(URI),
        "datetime": RFC2822,
    }, description="One message of the events stream"),
    "WebhookAccepted": obj({"accepted": INT, "duplicates": INT},
                           description="Events stored now, and events already seen (same id)"),
    "RegistryNotification": obj({"events": array({"type": "object"})}, extra=True,
                                description="The CNCF registry's notification envelope"),
    "BuildEvent": obj({
        "image": STR, "tag": STR,
        "status": {"type": "string", "enum": ["building", "success", "failed"]},
        "timestamp": {"type": ["string", "number"], "description": "RFC 3339 or epoch seconds"},
    }, extra=True),
    "AnyJson": {"type": "object", "description": "The sender's own payload format"},
    "Receiver": obj({
        "sender": {"type": "string", "enum": ["registry", "dockerhub", "harbor", "quay", "github", "build"]},
        "url": {"type": "string", "pattern": "^/api/v1/webhooks/[a-z]+/rcv_[A-Za-z0-9_-]+/([A-Za-z0-9_-]+/)?$",
                "description": "The path to give the sender (Docker Hub, Quay: with the secret in it)"},
        "secret": nullable(STR),
    }, description="One of the caller's own webhook receivers: its events change the caller's images "
                   "and only make the service look at others' (docs/webhooks.md)"),
    "ReceiverList": obj({"objects": array(ref("Receiver"))},
                        description="One receiver per sender kind, in a fixed order"),
}
