"""Handlers for registries, layers and the caller itself."""

from __future__ import annotations

from aiohttp import web

from api import pages, queries, serializers
from api.auth import request_account
from api.errors import BadRequestError, NotFoundError, json_response
from api.keys import POOL, SETTINGS
from api.params import parse_paging, reject_unknown
from core.names import HUB_HOST, is_digest


async def auth_info(request: web.Request) -> web.Response:
    account = request_account(request)
    return json_response(
        {"resource_uri": "/api/v1/auth/", "username": account.username, "is_admin": account.is_admin}
    )


async def list_registries(request: web.Request) -> web.Response:
    page = parse_paging(request.query, request.app[SETTINGS].page_limit_max)
    reject_unknown(request.query)
    account = request_account(request)
    result = await pages.list_registries(request.app[POOL], account.id, HUB_HOST, page)
    return json_response(
        serializers.envelope(
            (serializers.registry(r) for r in result.rows),
            serializers.list_meta(path="/api/v1/registry/", params=[], page=page, result=result,
                                  key=lambda row: str(row["host"])),
        )
    )


async def get_registry(request: web.Request) -> web.Response:
    reject_unknown(request.query, ())
    host = request.match_info["host"]
    row = await queries.get_registry(request.app[POOL], request_account(request).id, HUB_HOST, host)
    if row is None:
        raise NotFoundError(f"registry '{host}' not found")
    return json_response(serializers.registry(row))


async def get_layer(request: web.Request) -> web.Response:
    reject_unknown(request.query, ())
    docker_id = request.match_info["docker_id"]
    # the hex of a sha256 config digest (64 digits), or of a sha512 one (128)
    digest = f"{'sha512' if len(docker_id) == 128 else 'sha256'}:{docker_id}"
    if not is_digest(digest):
        raise BadRequestError("a layer id is the hex of a sha256 or sha512 config digest", field="docker_id")
    row = await queries.get_layer(request.app[POOL], request_account(request).id, digest)
    if row is None:
        raise NotFoundError(f"layer '{docker_id}' not found")
    body = serializers.layer(row)
    assert body is not None
    return json_response(body)


async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})
