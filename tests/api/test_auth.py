"""Authentication (SPEC §1, §6): ApiKey and Basic, 401 JSON answers. (Throttling of wrong
keys: tests/api/test_throttle.py.)"""

from __future__ import annotations

import base64
import warnings

import pytest
from aiohttp import web
from aiohttp.web_request import BaseRequest

from api import auth
from tests.api.helpers import json_error, ok_json, owned_names, snapshot
from tests.conftest import insert_image, unique


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


# id -> Authorization header ({user} and {key} are the real account's)
BAD_AUTH = {
    "missing": None,
    "empty": "",
    "apikey-wrong-key": "ApiKey {user}:0000000000000000000000000000000000000000",
    "apikey-unknown-user": "ApiKey nobody-{user}:{key}",
    "apikey-no-colon": "ApiKey {user}{key}",
    "apikey-no-key": "ApiKey {user}:",
    "apikey-no-user": "ApiKey :{key}",
    "apikey-only-scheme": "ApiKey",
    "basic-wrong-key": "basic-wrong-key",
    "basic-garbage-base64": "Basic %%%not*base64!!!",
    "basic-truncated-base64": "Basic dXNlcm5hbWU6YXBpa2V",
    "basic-no-colon": "basic-no-colon",
    "basic-not-utf8": "basic-not-utf8",
    "bearer": "Bearer {key}",
    "token-in-wrong-scheme": "Token {user}:{key}",
}


def _header(case: str, user: str, key: str) -> dict[str, str]:
    template = BAD_AUTH[case]
    if template is None:
        return {}
    if case == "basic-wrong-key":
        return {"Authorization": _basic(f"{user}:wrong".encode())}
    if case == "basic-no-colon":
        return {"Authorization": _basic(f"{user}{key}".encode())}
    if case == "basic-not-utf8":
        return {"Authorization": _basic(b"\xff\xfe:\xfa")}
    return {"Authorization": template.format(user=user, key=key)}


@pytest.mark.parametrize("case", list(BAD_AUTH), ids=list(BAD_AUTH))
async def test_missing_or_invalid_auth_is_401_json(
    fresh_client, pool, make_user, case: str
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('auth')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])
    before = await snapshot(pool, image_id)
    headers = _header(case, user.account.username, user.key)
    new_name = f"registry.local/{unique('auth')}/new"

    requests = [
        ("GET", "/api/v1/auth/", None),
        ("GET", "/api/v1/image/", None),
        ("GET", f"/api/v1/image/{name}/", None),
        ("GET", f"/api/v1/image/{name}/tag/v1/", None),
        ("GET", "/api/v1/registry/", None),
        ("POST", "/api/v1/image/", {"name": new_name}),
        ("PATCH", f"/api/v1/image/{name}/", {"description": "changed"}),
        ("DELETE", f"/api/v1/image/{name}/", None),
        ("POST", f"/api/v1/image/{name}/tag/v1/build/", None),
    ]
    for method, path, body in requests:
        resp = await fresh_client.request(method, path, json=body, headers=headers)
        await json_error(resp, 401)
    assert await snapshot(pool, image_id) == before
    assert await owned_names(pool, user.account.id) == [name]


async def test_both_auth_forms_are_accepted(client, make_user) -> None:
    user = await make_user()
    for headers in (user.headers, user.basic_headers):
        body = await ok_json(await client.get("/api/v1/image/?is_user_image=true", headers=headers))
        assert body["meta"]["total_count"] == 0
        me = await ok_json(await client.get("/api/v1/auth/", headers=headers))
        assert me["username"] == user.account.username


async def test_another_accounts_key_does_not_work_for_this_user(fresh_client, make_user) -> None:
    a, b = await make_user(), await make_user()
    resp = await fresh_client.get(
        "/api/v1/auth/", headers={"Authorization": f"ApiKey {a.account.username}:{b.key}"}
    )
    await json_error(resp, 401)


async def test_health_needs_no_auth(client) -> None:
    body = await ok_json(await client.get("/healthz"))
    assert body == {"status": "ok"}


async def test_authenticated_requests_raise_no_warnings(client, make_user) -> None:
    """aiohttp warns once per process about a plain-string key in request storage; under
    `filterwarnings = error` that makes the first authenticated request of a test process a 500.
    The request must use typed keys (web.RequestKey), so no warning is ever raised."""
    user = await make_user()
    # aiohttp remembers which string keys it has already warned about; forget the one the
    # auth middleware uses so that this test sees what the first request of a process sees.
    seen = getattr(BaseRequest, "_seen_str_keys", set())
    key = auth.REQUEST_ACCOUNT
    if isinstance(key, str):
        seen.discard(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resp = await client.get("/api/v1/auth/", headers=user.headers)
        await resp.read()
    relevant = [str(w.message) for w in caught if issubclass(w.category, web.NotAppKeyWarning)]
    assert relevant == []
    assert resp.status == 200
