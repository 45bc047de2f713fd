"""Handlers for /api/v1/image/…: thin — validate, call a query, serialize."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from api import history, hub_lookup, pages, paths, queries, read_marks, serializers, targets
from api.account_limits import HUB_LOOKUP, REGISTRATION, RESYNC, admit_account_action
from api.auth import request_account
from api.bodies import ImageCreate, ImagePatch, credentials_pair, read_json
from api.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    MethodNotAllowedError,
    NotFoundError,
    json_response,
)
from api.keys import CREDENTIAL_BOX, POOL, SETTINGS
from api.list_body import ListBody
from api.params import parse_image_filters, parse_paging, reject_unknown
from api.publish import FALLBACK_SECONDS, queue_priority_sync
from core import tag_policy
from core.accounts import Account
from core.crypto import CredentialBox, Credentials
from core.names import HUB_HOST, InvalidNameError, canonical_host, parse_image_name
from core.registries import ensure_registry, namespace_refusal

log = structlog.get_logger("api.images")


async def image_resource(request: web.Request) -> web.StreamResponse:
    """Entry point for every path under /api/v1/image/: resolve it, then dispatch by method."""
    account = request_account(request)
    readings, problem = paths.candidates(request.match_info.get("tail", ""))
    if not readings:
        raise BadRequestError(f"invalid image name: {problem}", field="name")
    target = readings[0]
    image = None
    pool = request.app[POOL]
    with_tag = False  # `image` came with the columns of its tag target.tag (get_image_of)
    if len(readings) > 1:
        # Ambiguous: an existing image of the full name wins over the suffix reading (whose
        # tag, when it names one, comes in the same round trip).
        shorter = readings[1]
        assert target.image is not None and shorter.image is not None
        image = await queries.get_image_of(pool, account.id, target.image.name, shorter.image.name, shorter.tag)
        if image is None or image["name"] != target.image.name:
            target, with_tag = shorter, image is not None and shorter.tag is not None
    allowed = paths.ALLOWED[target.kind]
    method = "GET" if request.method == "HEAD" else request.method
    if method not in allowed:
        raise MethodNotAllowedError(request.method, allowed)
    if target.kind == paths.COLLECTION:
        return await (list_images(request, account) if method == "GET" else create_image(request, account))
    assert target.image is not None
    if target.kind == paths.IMAGE and (image is not None or len(readings) == 1):
        image = await queries.get_image(pool, account.id, target.image.name)  # every field
    elif len(readings) == 1 and target.tag is not None:  # the image with its tag, one round trip
        image = await queries.get_image_of(pool, account.id, target.image.name, target.image.name, target.tag)
        with_tag = image is not None
    elif len(readings) == 1:
        image = await queries.get_image_ref(pool, account.id, target.image.name)
    offline = request.app[SETTINGS].offline
    if image is None and method == "GET" and target.image.is_hub and not offline:
        # A Docker Hub name nobody registered yet: look it up on the hub (SPEC §1 Public images).
        lane = await admit_account_action(request.app, account, HUB_LOOKUP)
        image = await hub_lookup.inspect_hub_image(request.app, account.id, target.image, lane)
    if image is None:
        why = " (Docker Hub is not asked: the service runs offline)" if offline and target.image.is_hub else ""
        raise NotFoundError(f"image '{target.image.name}' not found{why}")
    if method == "GET":
        read_marks.mark(request.app, image)  # catalog images nobody reads are polled rarely
    if target.kind == paths.IMAGE:
        if method == "GET":
            reject_unknown(request.query, ())
            return json_response(serializers.image(image))
        check_writable(account, image)
        if method == "PATCH":
            return await patch_image(request, account, image)
        return await delete_image(request, image)
    if target.kind == paths.TAG_LIST:
        return await list_tags(request, image)
    if target.kind == paths.SYNC:
        if method == "POST":
            check_writable(account, image)
            await request_resync(request.app, account, image)
            return await sync_status(request, image, status=202)
        return await sync_status(request, image)
    assert target.tag is not None
    if with_tag:
        tag = image if image["tag_name"] is not None else None
    else:  # the full name won, or the image came from the hub look-up
        tag = await queries.get_tag(pool, image["id"], target.tag)
    if target.kind == paths.HISTORY:  # also of a tag that is gone
        return await history.tag_history(request, image, target.tag, tag_exists=tag is not None)
    if tag is None:
        raise NotFoundError(f"image '{image['name']}' has no tag '{target.tag}'")
    if target.kind == paths.BUILD:
        check_writable(account, image)
        await request_resync(request.app, account, image)
        return json_response(serializers.tag(image["name"], tag), status=202)
    return json_response(serializers.tag(image["name"], tag))


def check_writable(account: Account, image: asyncpg.Record) -> None:
    """403 for an ordinary account's change to the shared catalog (the dashboard asks too)."""
    if image["owner_id"] is None and not account.is_admin:
        raise ForbiddenError(f"image '{image['name']}' is in the shared catalog, which is read-only")


async def request_resync(app: web.Application, account: Account, image: asyncpg.Record) -> None:
    """A user-requested sync of the whole image at the highest priority (`POST …/sync/`,
    `POST …/tag/<tag>/build/`, the dashboard's re-sync button): a re-sync request of
    `account`, counted against its rate limit (429 past it). It also runs when a sync is
    running now (that one's end makes the image due again at once)."""
    lane = await admit_account_action(app, account, RESYNC)
    await queries.request_sync(app[POOL], image["id"], fallback_in=FALLBACK_SECONDS)
    await queue_priority_sync(app, image["id"], priority=lane)


async def list_images(request: web.Request, account: Account) -> web.StreamResponse:
    """A page of images, written image by image within a memory bound (api/list_body.py)."""
    page = parse_paging(request.query, request.app[SETTINGS].page_limit_max)
    filters, keep = parse_image_filters(request.query)
    pool = request.app[POOL]
    result = await pages.list_images(pool, account.id, filters, page)
    meta = serializers.list_meta(path="/api/v1/image/", params=keep, page=page, result=result, key=_by_name)
    async with ListBody(request, meta, request.app[SETTINGS].list_buffer_bytes) as body:
        async for row, tags in pages.with_tags(pool, result.rows):
            await body.add(serializers.image(row, tags))
        return await body.finish()


def _by_name(row: Mapping[str, Any]) -> str:
    name: str = row["name"]
    return name


def _by_tag_name(row: Mapping[str, Any]) -> str:
    name: str = row["tag_name"]
    return name


async def create_image(request: web.Request, account: Account) -> web.Response:
    body = await read_json(request, ImageCreate)
    image = await register_image(request.app, account, body)
    return json_response(serializers.image(image), status=201)


async def register_image(app: web.Application, account: Account, body: ImageCreate) -> asyncpg.Record:
    """Register `body.name` for `account` and queue its first sync: the new image as the
    account sees it. Raises the API's errors (400 name or target, 409 already registered)."""
    try:
        name = parse_image_name(body.name)
    except InvalidNameError as exc:
        raise BadRequestError(f"invalid image name: {exc}", field="name") from None
    lane = await admit_account_action(app, account, REGISTRATION)
    settings = app[SETTINGS]
    refusal = namespace_refusal(name.host, name.repository, account.username, account.is_admin, settings)
    if refusal is not None:
        raise ForbiddenError(refusal)
    await targets.check_registry_host(app, name)
    pair = credentials_pair(body)
    box = app[CREDENTIAL_BOX]
    sealed = box.seal(Credentials(*pair)) if pair else None
    build_token = box.seal_text(body.build_token) if body.build_token is not None else None
    pool = app[POOL]
    async with pool.acquire() as conn, conn.transaction():
        registry_id = await ensure_registry(conn, name.host, settings)
        image_id = await queries.insert_image(
            conn, name=name.name, owner_id=account.id, registry_id=registry_id,
            repository=name.repository, description=body.description or "",
            is_private=sealed is not None or not name.is_hub, public_url=name.public_url,
            credentials=sealed, first_sync_in=FALLBACK_SECONDS, tag_policy=body.tag_policy,
            build_token=build_token,
        )
        if image_id is None:
            raise ConflictError(f"you have already registered '{name.name}'", field="name")
        if body.immutable_tags:
            await history.set_immutable_tags(conn, image_id, body.immutable_tags)
    log.info("image.created", image=name.name, image_id=image_id, with_credentials=sealed is not None,
             with_build_token=build_token is not None)
    await queue_priority_sync(app, image_id, priority=lane)
    image = await queries.get_image(pool, account.id, name.name)
    if image is None:  # deleted by a concurrent request right after it was created
        raise NotFoundError(f"image '{name.name}' not found")
    return image


async def patch_image(request: web.Request, account: Account, image: asyncpg.Record) -> web.Response:
    body = await read_json(request, ImagePatch)
    updated = await change_image(request.app, account, image, body)
    return json_response(serializers.image(updated))


async def change_image(app: web.Application, account: Account, image: asyncpg.Record,
                       body: ImagePatch) -> asyncpg.Record:
    """Changes only the fields the body names: a password alone keeps the stored username and
    a username alone the stored password (the Go SDK's save() sends only changed fields).
    New credentials, build token or tag policy queue a sync: a re-sync request of the account
    (429 past its rate limit). The image as `account` sees it afterwards."""
    lane = 0
    if body.username is not None or body.password is not None or body.sets_tag_policy or body.sets_build_token:
        lane = await admit_account_action(app, account, RESYNC)
    if body.username is not None or body.password is not None or body.build_token is not None:
        # new credentials (or build token): the sync that follows sends them to the registry
        await targets.check_registry_host(app, parse_image_name(image["name"]))
    box = app[CREDENTIAL_BOX]
    pool = app[POOL]
    async with pool.acquire() as conn, conn.transaction():
        stored = None
        if (body.username is None) != (body.password is None):
            token = await queries.lock_credentials(conn, image["id"])
            stored = _open_stored(box, token)
        pair = credentials_pair(body, stored)
        new_creds = pair is not None
        sealed = box.seal(Credentials(*pair)) if pair else None
        await queries.update_image(
            conn, image["id"], description=body.description, set_credentials=new_creds, credentials=sealed,
            set_tag_policy=body.sets_tag_policy, tag_policy=body.tag_policy, set_build_token=body.sets_build_token,
            build_token=box.seal_text(body.build_token) if body.build_token is not None else None,
        )
        if body.immutable_tags is not None:
            await history.set_immutable_tags(conn, image["id"], body.immutable_tags)
    if new_creds:
        log.info("image.credentials_changed", image=image["name"])
    if body.sets_tag_policy:
        log.info("image.tag_policy_changed", image=image["name"])
    if body.sets_build_token:
        log.info("image.build_token_changed", image=image["name"], removed=body.build_token is None)
    if new_creds or body.sets_tag_policy or body.sets_build_token:
        await queue_priority_sync(app, image["id"], priority=lane)
    updated = await queries.get_image(pool, account.id, image["name"])
    if updated is None:  # deleted by a concurrent request after our update
        raise NotFoundError(f"image '{image['name']}' not found")
    return updated


def _open_stored(box: CredentialBox, token: bytes | None) -> tuple[str, str] | None:
    if token is None:
        return None
    try:
        creds = box.open(token)
    except ValueError:
        raise BadRequestError(
            "the stored credentials cannot be decrypted (SECRET_KEY changed): send username and password together",
            field="password",
        ) from None
    return creds.username, creds.password


async def delete_image(request: web.Request, image: asyncpg.Record) -> web.Response:
    await remove_image(request.app, image)
    return web.Response(status=204)


async def remove_image(app: web.Application, image: asyncpg.Record) -> None:
    await queries.delete_image(app[POOL], image["id"])
    log.info("image.deleted", image=image["name"], image_id=image["id"])


async def list_tags(request: web.Request, image: asyncpg.Record) -> web.Response:
    page = parse_paging(request.query, request.app[SETTINGS].page_limit_max)
    reject_unknown(request.query)
    result = await pages.list_tags(request.app[POOL], image["id"], page)
    return json_response(
        serializers.envelope(
            (serializers.tag(image["name"], r) for r in result.rows),
            serializers.list_meta(path=serializers.tag_uri(image["name"], "").removesuffix("/"), params=[],
                                  page=page, result=result, key=_by_tag_name),
        )
    )


TAG_ISSUES_LISTED = 100


async def sync_status(request: web.Request, image: asyncpg.Record, status: int = 200) -> web.Response:
    pool = request.app[POOL]
    row = await queries.sync_status(pool, image["id"])
    issues, issue_count = await queries.tag_issues(pool, image["id"], TAG_ISSUES_LISTED)
    cut_at = row["tags_cut_at"]
    policy = tag_policy.effective(
        row["tag_policy"], is_hub=image["registry_host"] == HUB_HOST,
        hub_default_max_tags=request.app[SETTINGS].hub_default_max_tags,
    )
    interval = row["sync_interval"] or request.app[SETTINGS].sync_interval_seconds
    immutable, moved = await history.immutability(pool, image["id"], TAG_ISSUES_LISTED)
    return json_response({
        "image": serializers.image_uri(image["name"]),
        "state": image["state"],
        "syncing": bool(row["syncing"]),
        "last_synced_at": serializers.rfc2822(row["last_synced_at"]),
        "next_sync_at": serializers.rfc2822(row["next_sync_at"]),
        "error": row["sync_error"],
        "error_at": serializers.rfc2822(row["sync_error_at"]),
        "consecutive_failures": row["sync_failures"],
        "sync_requested": row["sync_requested"],
        # per-tag outcomes: the first TAG_ISSUES_LISTED by name, and how many there are
        "tag_issues": [
            {"tag": r["name"], "error": r["sync_error"], "note": r["sync_note"]} for r in issues
        ],
        "tag_issue_count": issue_count,
        "tags_truncated": cut_at is not None,
        "tags_note": (
            f"more than {cut_at} tags: only {cut_at} are kept (the first by name of the registry's list;"
            " tags that build events name beyond them are refused)"
            if cut_at is not None else None
        ),
        "poll_interval_seconds": round(interval, 1),
        "tag_policy": {**policy.to_json(), "default": row["tag_policy"] is None},
        # tags expected never to move (PATCH `immutable_tags`), and their moves, newest first
        "immutable_tags": immutable,
        "warnings": moved,
        # build states read from the registry's build API (worker/quay_builds.py); null: none
        "builds": serializers.build_status(row) if _quay_host(request, image["registry_host"]) else None,
    }, status=status)


def _quay_host(request: web.Request, host: str) -> bool:
    return canonical_host(host) in {canonical_host(h) for h in request.app[SETTINGS].quay_hosts}
