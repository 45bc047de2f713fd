"""Requests as the Go SDK (go-tutum) and `tutum image update` send them: bodies with no
Content-Type header at all, and PATCHes that name only the changed fields (SPEC §1)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import asyncpg
import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from core.crypto import CredentialBox
from core.settings import Settings
from tests.api.helpers import ok_json
from tests.conftest import MakeUser, unique
from tests.support.registry import RegistryServer, apush_image
from worker import sync
from worker.runtime import Runtime

ROBOT = ("robot", "first-password")


async def raw(client: TestClient, method: str, path: str, body: dict[str, str],
              headers: dict[str, str]) -> ClientResponse:
    """A JSON body sent with no Content-Type header, as the Go SDK sends it."""
    resp = await client.request(method, path, data=orjson.dumps(body), headers=headers,
                                skip_auto_headers=["Content-Type"])
    assert "Content-Type" not in resp.request_info.headers
    return resp


async def stored_credentials(pool: asyncpg.Pool, settings: Settings, owner: int, name: str) -> tuple[str, str]:
    token = await pool.fetchval("SELECT credentials FROM images WHERE owner_id = $1 AND name = $2", owner, name)
    creds = CredentialBox(settings.secret_key).open(token)
    return creds.username, creds.password


async def test_post_and_patch_without_content_type_are_json(client: TestClient, pool: asyncpg.Pool,
                                                            make_user: MakeUser) -> None:
    user = await make_user()
    name = f"registry.local/{unique('go')}/app"
    created = await raw(client, "POST", "/api/v1/image/", {"name": name, "description": "one"}, user.headers)
    assert (await ok_json(created, 201))["description"] == "one"
    patched = await raw(client, "PATCH", f"/api/v1/image/{name}/", {"description": "two"}, user.headers)
    assert (await ok_json(patched, 200))["description"] == "two"


@pytest.mark.parametrize("ctype", ["application/octet-stream", "text/plain", "application/x-www-form-urlencoded"])
async def test_an_explicit_non_json_type_stays_415(client: TestClient, make_user: MakeUser, ctype: str) -> None:
    user = await make_user()
    resp = await client.post("/api/v1/image/", data=orjson.dumps({"name": f"registry.local/{unique('t')}/a"}),
                             headers={**user.headers, "Content-Type": ctype})
    assert resp.status == 415
    assert ctype in (await resp.json())["error"]


async def test_patch_of_the_password_alone_keeps_the_username(
    client: TestClient, pool: asyncpg.Pool, make_user: MakeUser, settings: Settings,
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('pw')}/app"
    body = {"name": name, "username": ROBOT[0], "password": ROBOT[1]}
    await ok_json(await client.post("/api/v1/image/", json=body, headers=user.headers), 201)

    resp = await raw(client, "PATCH", f"/api/v1/image/{name}/", {"password": "second-password"}, user.headers)
    await ok_json(resp, 200)
    assert await stored_credentials(pool, settings, user.account.id, name) == ("robot", "second-password")

    resp = await client.patch(f"/api/v1/image/{name}/", json={"username": "robot2"}, headers=user.headers)
    await ok_json(resp, 200)
    assert await stored_credentials(pool, settings, user.account.id, name) == ("robot2", "second-password")


async def test_half_a_pair_without_stored_credentials_is_400(client: TestClient, make_user: MakeUser) -> None:
    user = await make_user()
    name = f"registry.local/{unique('half')}/app"
    await ok_json(await client.post("/api/v1/image/", json={"name": name}, headers=user.headers), 201)
    resp = await client.patch(f"/api/v1/image/{name}/", json={"password": "p"}, headers=user.headers)
    assert resp.status == 400 and (await resp.json())["field"] == "username"
    resp = await client.patch(f"/api/v1/image/{name}/", json={"username": "u"}, headers=user.headers)
    assert resp.status == 400 and (await resp.json())["field"] == "password"


@pytest.fixture(scope="module")
def htpasswd_registry() -> Iterator[RegistryServer]:
    with RegistryServer(htpasswd={"robot": "second-password"}) as reg:
        yield reg


@pytest.fixture
async def worker_runtime(settings: Settings, htpasswd_registry: RegistryServer) -> AsyncIterator[Runtime]:
    s = dataclasses.replace(settings, insecure_registries=frozenset({htpasswd_registry.host}))
    rt = await Runtime(s, name="test-partial", backoff_base=0.01, max_retry_wait=1.0).open()
    yield rt
    await rt.aclose()


async def test_after_a_password_alone_the_image_syncs_with_the_new_pair(
    client: TestClient, pool: asyncpg.Pool, make_user: MakeUser, htpasswd_registry: RegistryServer,
    worker_runtime: Runtime,
) -> None:
    user = await make_user()
    repo = f"{unique('sdk')}/app"
    await apush_image(htpasswd_registry.url, repo, "v1", {"config": {"Cmd": ["sh"]}},
                      auth=("robot", "second-password"))
    name = f"{htpasswd_registry.host}/{repo}"
    body = {"name": name, "username": "robot", "password": "old-password"}
    await ok_json(await client.post("/api/v1/image/", json=body, headers=user.headers), 201)
    image_id = await pool.fetchval("SELECT id FROM images WHERE owner_id = $1 AND name = $2", user.account.id, name)

    assert await sync.sync_image(worker_runtime, image_id) == sync.FAILED  # the old password
    resp = await raw(client, "PATCH", f"/api/v1/image/{name}/", {"password": "second-password"}, user.headers)
    await ok_json(resp, 200)
    assert await sync.sync_image(worker_runtime, image_id) == sync.SYNCED
    detail = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers), 200)
    assert detail["tags"] == [f"/api/v1/image/{name}/tag/v1/"] and detail["state"] == "Success"
