"""`/api/v1/subscription/…`: an account's notification endpoints and their delivery logs
(SPEC §7). Thin handlers: validate, call api/subscription_queries.py, serialize.

A subscription is its owner's alone: another account's is a 404. Its `image`, when given,
must be an image the account can see (its own, or the catalog's), named as it sees it; the
worker checks visibility again at fan-out and before every attempt. Its URL passes the same
address rules as a registry (api/targets.py), and again on every delivery (the worker's guard).
The secret is shown once, by the POST that creates it and by `…/rotate/`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import structlog
from aiohttp import web

from api import queries, serializers, targets
from api import subscription_queries as q
from api.auth import request_account
from api.bodies import SubscriptionCreate, SubscriptionPatch, read_json
from api.errors import BadRequestError, NotFoundError, json_response
from api.keys import CREDENTIAL_BOX, POOL, SETTINGS
from api.params import parse_paging, reject_unknown
from core import notify

log = structlog.get_logger("api.subscriptions")

BASE = "/api/v1/subscription"


def add_routes(app: web.Application) -> None:
    slash = "{slash:/?}"
    one = BASE + "/{id:[0-9]{1,18}}"
    app.router.add_get(f"{BASE}{slash}", list_subscriptions)
    app.router.add_post(f"{BASE}{slash}", create_subscription)
    app.router.add_get(f"{one}{slash}", get_subscription)
    app.router.add_patch(f"{one}{slash}", patch_subscription)
    app.router.add_delete(f"{one}{slash}", delete_subscription)
    app.router.add_post(f"{one}/rotate{slash}", rotate_secret)
    app.router.add_get(f"{one}/delivery{slash}", list_deliveries)
    app.router.add_get(one + "/delivery/{delivery:[0-9]{1,18}}" + slash, get_delivery)
    app.router.add_post(one + "/delivery/{delivery:[0-9]{1,18}}/redeliver" + slash, redeliver)


def _id(request: web.Request, key: str = "id") -> int:
    return int(request.match_info[key])


def _missing(subscription_id: int) -> NotFoundError:
    return NotFoundError(f"subscription {subscription_id} not found")


async def _check_target(request: web.Request, body: SubscriptionPatch) -> None:
    """The URL's host may be contacted; the image, when named, is one the caller sees."""
    if body.url is not None:
        parts = urlsplit(body.url)
        host = parts.netloc.rpartition("@")[2]
        default_port = 80 if parts.scheme == "http" else 443
        await targets.check_host(request.app, host, "the subscription's URL", "url", default_port)
    if body.image is not None:
        account = request_account(request)
        if await queries.get_image_ref(request.app[POOL], account.id, body.image) is None:
            raise BadRequestError(
                f"no image '{body.image}' that you can see; register it (or open a Docker Hub image) first",
                field="image",
            )


async def create_subscription(request: web.Request) -> web.Response:
    account = request_account(request)
    body = await read_json(request, SubscriptionCreate)
    await _check_target(request, body)
    key = notify.new_secret()
    cap = request.app[SETTINGS].notify_max_subscriptions
    row = await q.insert(
        request.app[POOL], account.id, url=body.url, events=body.events, image=body.image,
        tag_pattern=body.tag_pattern, sealed_secret=request.app[CREDENTIAL_BOX].seal_bytes(key), cap=cap,
    )
    if row is None:
        raise BadRequestError(f"an account may have at most {cap} subscriptions; delete one first")
    if body.enabled is False:
        row = await q.update(request.app[POOL], account.id, row["id"], url=None, events=None, image=None,
                             tag_pattern=None, named=(False, False, False, False), enabled=False)
        assert row is not None
    log.info("subscription.created", subscription=row["id"], events=body.events)
    return json_response(serializers.subscription(row, notify.show_secret(key)), status=201)


async def list_subscriptions(request: web.Request) -> web.Response:
    account = request_account(request)
    page = parse_paging(request.query, request.app[SETTINGS].page_limit_max)
    reject_unknown(request.query, ("limit", "offset"))
    rows, total = await q.page(request.app[POOL], account.id, page.offset, page.limit)
    return json_response(serializers.offset_envelope(
        [serializers.subscription(r) for r in rows], path=f"{BASE}/", limit=page.limit, offset=page.offset,
        total=total,
    ))


async def get_subscription(request: web.Request) -> web.Response:
    reject_unknown(request.query, ())
    row = await q.get(request.app[POOL], request_account(request).id, _id(request))
    if row is None:
        raise _missing(_id(request))
    return json_response(serializers.subscription(row))


async def patch_subscription(request: web.Request) -> web.Response:
    account = request_account(request)
    sid = _id(request)
    if await q.get(request.app[POOL], account.id, sid) is None:
        raise _missing(sid)  # before reading the body: another's subscription says nothing more
    body = await read_json(request, SubscriptionPatch)
    if body.names("url") and body.url is None:
        raise BadRequestError("field 'url' cannot be null", field="url")
    if body.names("events") and body.events is None:
        raise BadRequestError("field 'events' cannot be null", field="events")
    await _check_target(request, body)
    row = await q.update(
        request.app[POOL], account.id, sid, url=body.url, events=body.events, image=body.image,
        tag_pattern=body.tag_pattern, enabled=body.enabled,
        named=(body.url is not None, body.events is not None, body.names("image"), body.names("tag_pattern")),
    )
    if row is None:
        raise _missing(sid)
    return json_response(serializers.subscription(row))


async def delete_subscription(request: web.Request) -> web.Response:
    if not await q.delete(request.app[POOL], request_account(request).id, _id(request)):
        raise _missing(_id(request))
    log.info("subscription.deleted", subscription=_id(request))
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret, shown once; the old one still signs for NOTIFY_ROTATION_GRACE_SECONDS."""
    key = notify.new_secret()
    row = await q.rotate(request.app[POOL], request_account(request).id, _id(request),
                         request.app[CREDENTIAL_BOX].seal_bytes(key))
    if row is None:
        raise _missing(_id(request))
    log.info("subscription.rotated", subscription=row["id"])
    return json_response(serializers.subscription(row, notify.show_secret(key)))


async def list_deliveries(request: web.Request) -> web.Response:
    account = request_account(request)
    sid = _id(request)
    page = parse_paging(request.query, request.app[SETTINGS].page_limit_max)
    reject_unknown(request.query, ("limit", "offset"))
    if await q.get(request.app[POOL], account.id, sid) is None:
        raise _missing(sid)
    rows, attempts, total = await q.deliveries(request.app[POOL], account.id, sid, page.offset, page.limit)
    return json_response(serializers.offset_envelope(
        [serializers.delivery(r, attempts.get(r["id"], [])) for r in rows], path=f"{BASE}/{sid}/delivery/",
        limit=page.limit, offset=page.offset, total=total,
    ))


async def get_delivery(request: web.Request) -> web.Response:
    reject_unknown(request.query, ())
    row, attempts = await q.delivery(request.app[POOL], request_account(request).id, _id(request),
                                     _id(request, "delivery"))
    if row is None:
        raise NotFoundError(f"delivery {_id(request, 'delivery')} of subscription {_id(request)} not found")
    return json_response(serializers.delivery(row, attempts))


async def redeliver(request: web.Request) -> web.Response:
    """202 with the new delivery: the same event under the same webhook-id, after the
    subscription's pending ones."""
    row = await q.redeliver(request.app[POOL], request_account(request).id, _id(request), _id(request, "delivery"))
    if row is None:
        raise NotFoundError(f"delivery {_id(request, 'delivery')} of subscription {_id(request)} not found")
    return json_response(serializers.delivery(row, []), status=202)
