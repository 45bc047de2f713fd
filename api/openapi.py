"""The OpenAPI 3.1 description of the API, served at `/api/v1/openapi.json`, and `/docs`.

`document()` builds the description from the schemas in api/openapi_schemas.py; it is the
contract that tests/ops/test_openapi.py holds the app to: every route the app registers is
described here, and real responses validate against the schemas declared for them. A new
route without an entry here fails that test.

Path templates are the same as the metrics' route labels (api/metrics.py). An image `{name}`
contains slashes and is written unencoded (`/api/v1/image/team/app/tag/v1/`), which
OpenAPI's path templating cannot express: the parameter's description says so.
"""

from __future__ import annotations

import html
from functools import cache
from typing import Any

from aiohttp import web

from api import openapi_notify
from api.errors import json_response
from api.openapi_schemas import SCHEMAS, ref

JSON = "application/json"
Op = dict[str, Any]

PUBLIC: list[dict[str, list[str]]] = []  # `security: []`: no credentials
WEBHOOK_BEARER: list[dict[str, list[str]]] = [{"WebhookBearer": []}]
WEBHOOK_TOKEN: list[dict[str, list[str]]] = []  # the secret is the {token} path component
WEBHOOK_HMAC: list[dict[str, list[str]]] = [{"WebhookSignature": []}]


def _body(schema: str | Op, description: str = "") -> Op:
    s = ref(schema) if isinstance(schema, str) else schema
    return {"description": description or "OK", "content": {JSON: {"schema": s}}}


def _error(description: str, headers: tuple[str, ...] = ()) -> Op:
    out = _body("Error", description)
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return out


ERRORS: dict[str, Op] = {
    "BadRequest": _error("Malformed query, body or name; `field` names the culprit"),
    "Unauthorized": _error("Missing or wrong credentials", ("WWW-Authenticate",)),
    "Forbidden": _error("The shared catalog is read-only for ordinary accounts; an operator webhook secret "
                        "does not speak for the registry host an event names"),
    "NotFound": _error("No such resource, or another account's private image"),
    "MethodNotAllowed": _error("The path exists but not with this method", ("Allow",)),
    "Conflict": _error("This account already registered the image"),
    "PayloadTooLarge": _error("The body is over MAX_BODY_BYTES (a webhook: it names more than "
                              "WEBHOOK_MAX_EVENTS events)"),
    "UnsupportedMediaType": _error("The body is not sent as application/json"),
    "Throttled": _error("Too many failed authentications; (events) too many open streams of the "
                        "account; or the account is over its rate limit of registrations, re-sync "
                        "requests or Docker Hub look-ups (ACCOUNT_*_LIMIT per "
                        "ACCOUNT_LIMIT_WINDOW_SECONDS); Retry-After says when to ask again",
                        ("Retry-After",)),
    "Internal": _error("Unexpected error; the X-Request-ID header identifies it in the logs"),
    "Unavailable": _error("A dependency (Postgres, Redis) is unreachable", ("Retry-After",)),
}
_ERROR_CODES = {
    "400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
    "405": "MethodNotAllowed", "409": "Conflict", "413": "PayloadTooLarge",
    "415": "UnsupportedMediaType", "429": "Throttled", "500": "Internal", "503": "Unavailable",
}


def _op(summary: str, ok: dict[str, Op], errors: tuple[int, ...] = (), *, security: Any = None,
        params: tuple[str | Op, ...] = (), body: str | None = None, etag: bool = False,
        tags: tuple[str, ...] = ("images",), description: str = "") -> Op:
    """One operation; authenticated callers get 401/429 and every operation may answer 500, and
    503 while Postgres is unreachable."""
    responses: dict[str, Op] = dict(ok)
    if etag:
        for r in ok.values():
            r.setdefault("headers", {})["ETag"] = {"$ref": "#/components/headers/ETag"}
        responses["304"] = {"description": "Not modified: If-None-Match matched the ETag"}
    codes = {*errors, 500, 503} | ({401, 429} if security is None else set())
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/{_ERROR_CODES[str(code)]}"}
    op: Op = {"summary": summary, "tags": list(tags), "responses": responses}
    if description:
        op["description"] = description
    if security is not None:
        op["security"] = security
    parameters = [{"$ref": f"#/components/parameters/{p}"} if isinstance(p, str) else p for p in params]
    if etag:
        parameters.append({"$ref": "#/components/parameters/IfNoneMatch"})
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    return op


def _query(name: str, schema: Op, description: str) -> Op:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> Op:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


BOOL_PARAM = {"type": "string", "enum": ["true", "false", "True", "False", "1", "0"]}
PARAMETERS: dict[str, Op] = {
    "name": _path("name", "Image name as registered, slashes unencoded: `ubuntu`, `team/app`, "
                          "`registry.local:5000/team/app`"),
    "tag": _path("tag", "Tag name: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`"),
    "host": _path("host", "Registry host, with port if any: `registry.hub.docker.com`"),
    "docker_id": _path("docker_id", "Hex of the image config's sha256 digest"),
    "token": _path("token", "The receiver's secret: an operator's (WEBHOOK_SECRET, or one of its own), or "
                            "an account receiver's (`GET /api/v1/receiver/` gives the whole URL)"),
    "receiver": _path("receiver", "An account receiver's id (`rcv_…`, from `GET /api/v1/receiver/`)"),
    "limit": _query("limit", {"type": "integer", "minimum": 0}, "Page size; default 25, capped by PAGE_LIMIT_MAX"),
    "offset": _query("offset", {"type": "integer", "minimum": 0}, "Objects to skip; default 0"),
    "after": _query("after", {"type": "string"}, "Cursor of a `next` link: the page after this name"),
    "before": _query("before", {"type": "string"}, "Cursor of a `previous` link: the page before this name"),
    "pinned_host": _query("host", {"type": "string"}, "Operator receivers: which of the hosts the "
                                                      "secret is bound to (WEBHOOK_SECRETS); account "
                                                      "receivers: the host the events are about"),
    "IfNoneMatch": {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "An ETag from an earlier answer: 304 if unchanged"},
}
IMAGE_FILTERS: tuple[Op, ...] = (
    _query("name", {"type": "string"}, "Exact image name"),
    _query("jumpstart", BOOL_PARAM, "Curated catalog images only (or none)"),
    _query("is_private_image", BOOL_PARAM, "Private images only (or public only)"),
    _query("is_user_image", BOOL_PARAM, "Images the caller added (or not)"),
    _query("registry", {"type": "string"}, "A registry resource URI: `/api/v1/registry/<host>/`"),
    _query("categories__name", {"type": "string"}, "URL-quoted category name"),
)

_PAGED = ("limit", "offset", "after", "before")


def _paths() -> dict[str, dict[str, Op]]:
    img, tag = ("name",), ("name", "tag")
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/healthz": {"get": _op("The process is up (liveness)", {"200": _body("Health")}, security=PUBLIC,
                                tags=("operations",))},
        "/readyz": {"get": _op("Postgres and Redis answer (readiness)", {"200": _body("Ready")}, (503,),
                               security=PUBLIC, tags=("operations",),
                               description="503 names each unreachable dependency in `unavailable`.")},
        "/metrics": {"get": _op("Prometheus metrics of this host's API processes", {"200": text},
                                security=PUBLIC, tags=("operations",))},
        "/docs": {"get": _op("This description as a web page",
                             {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}},
                             security=PUBLIC, tags=("operations",))},
        "/api/v1/openapi.json": {"get": _op("This description (OpenAPI 3.1)", {"200": _body({"type": "object"})},
                                            security=PUBLIC, tags=("operations",))},
        "/api/v1/auth/": {"get": _op("Who the credentials belong to (clients call it to verify a login)",
                                     {"200": _body("Account")}, tags=("auth",))},
        "/api/v1/image/": {
            "get": _op("List the images the caller can see, by name", {"200": _body("ImageList")}, (400, 405),
                       params=(*_PAGED, *IMAGE_FILTERS), etag=True,
                       description="Filters combine; an unknown filter or a malformed value is a 400. "
                                   "`next`/`previous` carry a cursor (`after`/`before`) unless the request "
                                   "gave an `offset` itself; either way a page costs the same anywhere "
                                   "in the list."),
            "post": _op("Register a private image; its first sync is queued at once",
                        {"201": _body("Image", "Created, state `Empty` until its first sync")},
                        (400, 403, 405, 409, 413, 415, 429), body="ImageCreate",
                        description="403: the name is in another account's namespace on this service's "
                                    "own registry (`<registry>/<user>/…` belongs to the account `<user>`). "
                                    "An account registers at most ACCOUNT_REGISTRATION_LIMIT images per "
                                    "ACCOUNT_LIMIT_WINDOW_SECONDS; past that, 429 with Retry-After."),
        },
        "/api/v1/image/{name}/": {
            "get": _op("One image; an unknown Docker Hub name is looked up on the hub and added",
                       {"200": _body("Image")}, (400, 404, 405, 429), params=img, etag=True,
                       description="Each look-up of a new Docker Hub name counts against the account's "
                                   "ACCOUNT_HUB_LOOKUP_LIMIT; past it, 429 with Retry-After."),
            "patch": _op("Change description or credentials (new credentials queue a sync)",
                         {"200": _body("Image")}, (400, 403, 404, 405, 413, 415, 429), params=img, body="ImagePatch",
                         description="New credentials or a new tag policy queue a sync: a re-sync request "
                                     "(ACCOUNT_RESYNC_LIMIT; past it, 429 with Retry-After)."),
            "delete": _op("Remove the image and its tags", {"204": {"description": "Deleted, no body"}},
                          (400, 403, 404, 405), params=img),
        },
        "/api/v1/image/{name}/tag/": {
            "get": _op("The image's tags, by name", {"200": _body("TagList")}, (400, 404, 405),
                       params=(*img, *_PAGED), etag=True)},
        "/api/v1/image/{name}/tag/{tag}/": {
            "get": _op("One tag", {"200": _body("Tag")}, (400, 404, 405), params=tag, etag=True)},
        "/api/v1/image/{name}/tag/{tag}/build/": {
            "post": _op("Re-sync the tag at the highest priority", {"202": _body("Tag", "Accepted")},
                        (400, 403, 404, 405, 429), params=tag,
                        description="Any other method on this path is a 405 with `Allow: POST`. A re-sync "
                                    "request counts against the account's ACCOUNT_RESYNC_LIMIT; past it, "
                                    "429 with Retry-After.")},
        "/api/v1/image/{name}/sync/": {
            "get": _op("Last sync, its error and the next run (extension)", {"200": _body("SyncStatus")},
                       (400, 404, 405), params=img, etag=True),
            "post": _op("Re-sync the image now, at the highest priority (extension)",
                        {"202": _body("SyncStatus", "Accepted: the status when the sync was requested")},
                        (400, 403, 404, 405), params=img,
                        description="The same as `…/tag/<tag>/build/` without naming a tag; a sync "
                                    "running now is followed by another at once. Shared-catalog "
                                    "images: admins only (403).")},
        "/api/v1/registry/": {
            "get": _op("Registries of the images the caller can see", {"200": _body("RegistryList")}, (400,),
                       params=_PAGED, etag=True, tags=("registries",))},
        "/api/v1/registry/{host}/": {
            "get": _op("One registry", {"200": _body("Registry")}, (400, 404), params=("host",), etag=True,
                       tags=("registries",))},
        "/api/v1/layer/{docker_id}/": {
            "get": _op("The image config a tag points to", {"200": _body("Layer")}, (400, 404),
                       params=("docker_id",), etag=True, tags=("registries",))},
        "/api/v1/events/": {"get": _op(
            "Live changes: a WebSocket (send Upgrade) or Server-Sent Events (Accept: text/event-stream)",
            {"101": {"description": "WebSocket: one JSON Event per text message"},
             "200": {"description": "SSE: `data: <Event JSON>` per change, `: ping` comments",
                     "content": {"text/event-stream": {"schema": {"type": "string"},
                                                       "x-message": ref("Event")}}}},
            (400, 429), tags=("events",),
            description="Only events about images the caller can see; changes within "
                        "EVENTS_COALESCE_SECONDS arrive together, a burst of tag changes of one image as "
                        "one image update. On overflow or shutdown the stream sends "
                        "`{\"type\": \"error\", ...}` and closes: reconnect and re-read. Past "
                        "EVENTS_MAX_PER_ACCOUNT streams a WebSocket is closed with code 1008 and an SSE "
                        "request is a 429. A 503 also when this process leaves the stream to "
                        "`registry-sync stream` processes (EVENTS_IN_WEB=0).")},
        "/api/v1/receiver/": {"get": _op(
            "The caller's own webhook receivers, one per sender kind (created on the first look)",
            {"200": _body("ReceiverList")}, (400,), tags=("webhooks",),
            description="`secret` is null where the URL carries it (Docker Hub, Quay). Answered with "
                        "`Cache-Control: no-store`.")},
        "/api/v1/receiver/rotate/": {"post": _op(
            "New URLs and secrets for all of the caller's receivers; the old ones stop at once",
            {"200": _body("ReceiverList")}, (400,), tags=("webhooks",))},
        **_webhook_paths(),
        **openapi_notify.paths(_op, _body),
    }


def _webhook_paths() -> dict[str, dict[str, Op]]:
    ok = {"200": _body("WebhookAccepted", "Only duplicates: nothing new"),
          "202": _body("WebhookAccepted", "Stored; processing is queued")}
    tags = ("webhooks",)
    account = "An account receiver (`GET /api/v1/receiver/`): the events change that account's images only. "
    operator = ("An operator receiver: secrets from the environment, each bound to one registry host; "
                "403 when an event names a host the secret is not bound to. ")
    quay_event = _query("event", {"type": "string"}, "Quay build notifications: the build event name")

    def hook(summary: str, security: Any, body: str, params: tuple[str, ...], kind: str) -> dict[str, Op]:
        errors = (400, 401, 413, 429) + ((403,) if kind == operator else ())
        op = _op(summary, dict(ok), errors, security=security, params=params, tags=tags,
                 description=kind + "413: more events than WEBHOOK_MAX_EVENTS, nothing stored.")
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
        if summary.startswith("Quay"):
            op["parameters"] = [*op.get("parameters", []), quay_event]
        return {"post": op}

    senders = (
        ("registry", "CNCF distribution registry notifications", WEBHOOK_BEARER, "RegistryNotification", False),
        ("dockerhub", "Docker Hub repository webhook", WEBHOOK_TOKEN, "AnyJson", True),
        ("harbor", "Harbor webhook (default or CloudEvents format)", WEBHOOK_BEARER, "AnyJson", False),
        ("quay", "Quay notification (push and build events)", WEBHOOK_TOKEN, "AnyJson", True),
        ("build", "Generic build status from any CI", WEBHOOK_HMAC, "BuildEvent", False),
        ("github", "GitHub webhook (registry_package → push of the tag on ghcr.io; ping and others: 200, "
                   "ignored; signed by X-Hub-Signature-256)", WEBHOOK_HMAC, "AnyJson", False),
    )
    out: dict[str, dict[str, Op]] = {}
    for name, summary, security, body, url_secret in senders:
        token = "{token}/" if url_secret else ""
        pin = ("pinned_host",)
        out[f"/api/v1/webhooks/{name}/{token}"] = hook(
            summary, security, body, (*(("token",) if url_secret else ()), *pin), operator)
        out[f"/api/v1/webhooks/{name}/{{receiver}}/{token}"] = hook(
            summary, security, body, ("receiver", *(("token",) if url_secret else ()), *pin), account)
    return out


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (built once per process; treat it as read-only)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "registry-sync",
            "version": "1",
            "description": "The Tutum v1 Images API: images, tags, registries and layers kept fresh "
                           "from Docker/OCI registries; push webhooks; a live events stream.",
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}, {"Basic": []}],
        "tags": [{"name": t} for t in ("images", "registries", "auth", "events", "webhooks", "notifications",
                                       "operations")],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS | openapi_notify.SCHEMAS,
            "responses": ERRORS,
            "parameters": PARAMETERS,
            "headers": {
                "ETag": {"schema": {"type": "string"}, "description": "Hash of the body"},
                "Allow": {"schema": {"type": "string"}, "description": "The methods this path takes"},
                "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"},
                "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Basic challenge"},
            },
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                           "description": "`Authorization: ApiKey <user>:<apikey>`"},
                "Basic": {"type": "http", "scheme": "basic", "description": "user name and API key"},
                "WebhookBearer": {"type": "http", "scheme": "bearer",
                                  "description": "`Authorization: Bearer <WEBHOOK_SECRET>`"},
                "WebhookSignature": {"type": "apiKey", "in": "header", "name": "X-Signature-256",
                                     "description": "`sha256=<hex HMAC-SHA256 of the body with the secret>`"},
            },
        },
    }


async def openapi_json(_: web.Request) -> web.Response:
    return json_response(document())


async def docs_page(_: web.Request) -> web.Response:
    """A self-contained page (no scripts, no CDN) listing every operation of `document()`."""
    from api.openapi_page import render

    return web.Response(text=render(document(), html.escape), content_type="text/html")
