"""`/api/v1/receiver/`: the caller's own webhook receivers (SPEC §3, core/receivers.py).

`GET` lists one receiver per sender kind, `{"objects": [{"sender", "url", "secret"}]}` (the
secret is null where the URL carries it), creating them on the account's first look.
`POST …/rotate/` replaces them all: the old URLs and secrets stop at once. Both answer with
`Cache-Control: no-store`: the body holds secrets.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from api.auth import request_account
from api.errors import json_response
from api.keys import CREDENTIAL_BOX, POOL
from api.params import reject_unknown
from core import receivers

log = structlog.get_logger("api.receivers")

NO_STORE = {"Cache-Control": "no-store"}


def _answer(found: list[receivers.Receiver]) -> web.Response:
    return json_response({"objects": [r.wire() for r in found]}, headers=NO_STORE)


async def list_receivers(request: web.Request) -> web.Response:
    reject_unknown(request.query, ())
    account = request_account(request)
    return _answer(await receivers.account_receivers(request.app[POOL], request.app[CREDENTIAL_BOX], account.id))


async def rotate_receivers(request: web.Request) -> web.Response:
    reject_unknown(request.query, ())
    account = request_account(request)
    found = await receivers.rotate(request.app[POOL], request.app[CREDENTIAL_BOX], account.id)
    log.info("receivers.rotated", account_id=account.id)
    return _answer(found)


def add_routes(app: web.Application) -> None:
    slash = "{slash:/?}"
    app.router.add_get(f"/api/v1/receiver{slash}", list_receivers)
    app.router.add_post(f"/api/v1/receiver/rotate{slash}", rotate_receivers)
