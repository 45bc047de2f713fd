"""The OpenAPI document (api/openapi.py) against the app: it is a valid OpenAPI 3.1 document,
every registered route is in it, and real answers validate against the schemas it declares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from api import paths
from api.app import create_app
from api.metrics import route_template
from api.openapi import document
from core.settings import Settings
from tests.api.helpers import add_layer
from tests.conftest import MakeUser, insert_image, unique

DOC = document()
_IMAGE_KINDS = {  # the image resource routes by suffix (api/paths.py)
    paths.COLLECTION: "/api/v1/image/", paths.IMAGE: "/api/v1/image/{name}/",
    paths.TAG_LIST: "/api/v1/image/{name}/tag/", paths.TAG: "/api/v1/image/{name}/tag/{tag}/",
    paths.BUILD: "/api/v1/image/{name}/tag/{tag}/build/", paths.SYNC: "/api/v1/image/{name}/sync/",
    paths.HISTORY: "/api/v1/image/{name}/tag/{tag}/history/",
}


def test_the_document_is_valid_openapi_3_1() -> None:
    validate_spec(DOC)
    assert DOC["openapi"].startswith("3.1")


def test_every_registered_route_and_method_is_described(settings: Settings) -> None:
    app = create_app(settings)
    missing = []
    for route in app.router.routes():
        canonical = route.resource.canonical.replace("{slash}", "/") if route.resource else ""
        if canonical == "/ui" or canonical.startswith("/ui/"):
            continue  # the dashboard's HTML pages (dashboard/), not API endpoints
        if canonical in ("/api/v1/image", "/api/v1/image/{tail}"):
            pairs = [(_IMAGE_KINDS[k], m) for k, methods in paths.ALLOWED.items() for m in methods]
        elif route.method in ("HEAD", "*"):
            continue  # aiohttp adds HEAD beside every GET
        else:
            pairs = [(canonical, route.method)]
        for template, method in pairs:
            if method.lower() not in DOC["paths"].get(template, {}):
                missing.append(f"{method} {template}")
    assert not missing, f"routes the app serves but api/openapi.py does not describe: {missing}"


async def test_every_described_path_is_served(settings: Settings) -> None:
    from aiohttp.test_utils import make_mocked_request

    app = create_app(settings)
    for template, item in DOC["paths"].items():
        sample = (template.replace("{name}", "team/app").replace("{tag}", "v1").replace("{host}", "example.com")
                  .replace("{docker_id}", "ab" * 32).replace("{token}", "secret").replace("{id}", "1")
                  .replace("{delivery}", "2").replace("{receiver}", "rcv_" + "A" * 22))
        for method in item:
            match = await app.router.resolve(make_mocked_request(method.upper(), sample, app=app))
            assert match.http_exception is None, f"{method.upper()} {template} is described but not served"


def _schema(path: str, method: str, status: int, content_type: str = "application/json") -> dict[str, Any] | None:
    """The schema the document declares for this answer; fails if the status is undeclared."""
    responses = DOC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which the document does not declare"
    resp = responses[str(status)]
    if "$ref" in resp:
        resp = DOC["components"]["responses"][resp["$ref"].rsplit("/", 1)[-1]]
    media = resp.get("content", {}).get(content_type)
    return media["schema"] if media else None


async def check(resp: ClientResponse, path: str, method: str | None = None) -> Any:
    """Validate a real answer against the document; returns its JSON body (None if empty)."""
    method = method or resp.method
    schema = _schema(path, method, resp.status)
    text = await resp.text()
    if schema is None:
        assert not text, f"{method} {path} {resp.status}: a body the document does not declare: {text}"
        return None
    assert resp.content_type == "application/json", text
    body = await resp.json()
    # refs inside the schemas point at #/components/...: give them the document's components
    root = {"components": DOC["components"], **schema}
    errors = sorted(Draft202012Validator(root).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} {resp.status}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    return body


async def check_error(resp: ClientResponse, status: int) -> None:
    """An answer to a method the document does not list (405): still the Error schema."""
    assert resp.status == status
    root = {"components": DOC["components"], "$ref": "#/components/schemas/Error"}
    Draft202012Validator(root).validate(await resp.json())
    assert resp.headers.get("Allow")


async def test_real_answers_validate_against_the_declared_schemas(
    client: TestClient, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    user = await make_user()
    h = user.headers
    name = f"example.com/{unique('oa')}/app"
    image_id = await insert_image(
        pool, name=name, owner_id=user.account.id, categories=["db"],
        tags=[{"name": "v1", "build_date": datetime(2024, 1, 2, tzinfo=UTC)}, "v2"],
    )
    docker_id = await add_layer(
        pool, image_id, "v1", author="me", created=datetime(2024, 1, 2, tzinfo=UTC),
        envvars=[{"key": "A", "value": "1"}], ports=[{"port": 80, "protocol": "tcp"}],
        volumes=[{"container_path": "/data"}], labels=[{"key": "l", "value": "v"}],
    )
    img = f"/api/v1/image/{name}"
    host = name.split("/")[0]

    await check(await client.get("/healthz"), "/healthz")
    await check(await client.get("/readyz"), "/readyz")
    await check(await client.get("/api/v1/openapi.json"), "/api/v1/openapi.json")
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert all(p in html for p in DOC["paths"]), "every path listed"
    assert "<script" not in html and "http://" not in html and "https://" not in html, "self-contained"
    await check(await client.get("/api/v1/auth/", headers=h), "/api/v1/auth/")
    listed = await check(await client.get("/api/v1/image/?limit=1", headers=h), "/api/v1/image/")
    assert listed["objects"], "the envelope was validated with at least one image in it"
    await check(await client.get(f"{img}/", headers=h), "/api/v1/image/{name}/")
    tags = await check(await client.get(f"{img}/tag/?limit=1", headers=h), "/api/v1/image/{name}/tag/")
    assert tags["meta"]["next"] is not None
    tag = await check(await client.get(f"{img}/tag/v1/", headers=h), "/api/v1/image/{name}/tag/{tag}/")
    assert tag["layer"] is not None, "the tag was validated with its layer"
    await check(await client.get(f"{img}/tag/v2/", headers=h), "/api/v1/image/{name}/tag/{tag}/")
    await check(await client.get(f"{img}/sync/", headers=h), "/api/v1/image/{name}/sync/")
    await check(await client.get(f"/api/v1/layer/{docker_id}/", headers=h), "/api/v1/layer/{docker_id}/")
    await check(await client.get("/api/v1/registry/", headers=h), "/api/v1/registry/")
    await check(await client.get(f"/api/v1/registry/{host}/", headers=h), "/api/v1/registry/{host}/")
    await check(await client.post(f"{img}/tag/v1/build/", headers=h), "/api/v1/image/{name}/tag/{tag}/build/")
    resynced = await check(await client.post(f"{img}/sync/", headers=h), "/api/v1/image/{name}/sync/")  # 202
    assert resynced["image"] == f"{img}/"
    await check(await client.patch(f"{img}/", json={"description": "d"}, headers=h), "/api/v1/image/{name}/")
    await check(await client.patch(f"{img}/", json={"immutable_tags": ["v*"]}, headers=h), "/api/v1/image/{name}/")
    await pool.execute("UPDATE tags SET manifest_digest = 'sha256:1' WHERE image_id = $1 AND name = 'v1'", image_id)
    await pool.execute("UPDATE tags SET manifest_digest = 'sha256:2' WHERE image_id = $1 AND name = 'v1'", image_id)
    status = await check(await client.get(f"{img}/sync/", headers=h), "/api/v1/image/{name}/sync/")
    assert status["warnings"], "validated with a warning"
    history = "/api/v1/image/{name}/tag/{tag}/history/"
    assert (await check(await client.get(f"{img}/tag/v1/history/?limit=1", headers=h), history))["meta"]["next"]
    subs = "/api/v1/subscription/"
    sub = await check(await client.post(subs, json={"url": "http://127.0.0.1:9/h", "events": ["tag.moved"],
                                                    "image": name, "tag_pattern": "v*"}, headers=h), subs)
    one = sub["resource_uri"]
    await check(await client.get(subs, headers=h), subs)
    await check(await client.get(one, headers=h), f"{subs}{{id}}/")
    await check(await client.patch(one, json={"enabled": False, "tag_pattern": None}, headers=h), f"{subs}{{id}}/")
    await check(await client.post(f"{one}rotate/", headers=h), f"{subs}{{id}}/rotate/")
    await check(await client.get(f"{one}delivery/", headers=h), f"{subs}{{id}}/delivery/")
    await check(await client.get(f"{one}delivery/1/", headers=h), f"{subs}{{id}}/delivery/{{delivery}}/")
    await check(await client.post(f"{subs}", json={"url": "ftp://x/", "events": ["tag.moved"]}, headers=h), subs)
    await check(await client.delete(one, headers=h), f"{subs}{{id}}/")
    # conditional GET: 304 with no body
    etag = (await client.get(f"{img}/", headers=h)).headers["ETag"]
    await check(await client.get(f"{img}/", headers={**h, "If-None-Match": etag}), "/api/v1/image/{name}/")

    # errors: every one an Error body
    await check(await client.get("/api/v1/image/"), "/api/v1/image/")  # 401
    await check(await client.get("/api/v1/image/?jumpstart=maybe", headers=h), "/api/v1/image/")  # 400
    await check(await client.get(f"{img}/tag/nope/", headers=h), "/api/v1/image/{name}/tag/{tag}/")  # 404
    await check_error(await client.put(f"{img}/", json={}, headers=h), 405)
    await check(await client.post("/api/v1/image/", data="x", headers=h), "/api/v1/image/")  # 415
    await check(await client.post("/api/v1/image/", json={"nam": "x"}, headers=h), "/api/v1/image/")  # 400
    shared = await insert_image(pool, name=f"example.com/{unique('oa')}/shared")
    shared_name = await pool.fetchval("SELECT name FROM images WHERE id = $1", shared)
    await check(await client.delete(f"/api/v1/image/{shared_name}/", headers=h), "/api/v1/image/{name}/")  # 403
    await check(await client.post(f"/api/v1/image/{shared_name}/sync/", headers=h),
                "/api/v1/image/{name}/sync/")  # 403
    await check(await client.post("/api/v1/webhooks/registry/", json={"events": []}),
                "/api/v1/webhooks/registry/")  # 401: no secret

    # create, conflict, delete
    new = f"example.com/{unique('oa')}/new"
    await check(await client.post("/api/v1/image/", json={"name": new}, headers=h), "/api/v1/image/")  # 201
    await check(await client.post("/api/v1/image/", json={"name": new}, headers=h), "/api/v1/image/")  # 409
    await check(await client.delete(f"/api/v1/image/{new}/", headers=h), "/api/v1/image/{name}/")  # 204


@pytest.mark.parametrize("path, template", [
    ("/api/v1/image/", "/api/v1/image/"),
    ("/api/v1/image/ubuntu/", "/api/v1/image/{name}/"),
    ("/api/v1/image/reg.example:5000/team/app/tag/v1/", "/api/v1/image/{name}/tag/{tag}/"),
    ("/api/v1/image/team/app/tag/v1/build/", "/api/v1/image/{name}/tag/{tag}/build/"),
    ("/api/v1/image/team/app/sync/", "/api/v1/image/{name}/sync/"),
    ("/api/v1/registry/registry.hub.docker.com/", "/api/v1/registry/{host}/"),
    ("/api/v1/nothing/here/", "unmatched"),
])
async def test_metric_route_labels_are_the_documented_templates(settings: Settings, path: str, template: str) -> None:
    from aiohttp.test_utils import make_mocked_request

    app = create_app(settings)
    request = make_mocked_request("GET", path, app=app)
    match = await app.router.resolve(request)
    match.add_app(app)
    request._match_info = match  # what the router does before the middlewares run
    assert route_template(request) == template
    assert template == "unmatched" or template in DOC["paths"]


def test_every_operation_declares_every_status_it_can_answer() -> None:
    """Authenticated operations: 401, 429 (throttling) and 503 (authentication reads Postgres);
    every path under /api/v1/image/ also 405 (one handler answers any other method with Allow)."""
    for template, item in DOC["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert "500" in codes, f"{method} {template}"
            if op.get("security") != []:
                assert {"401", "429", "503"} <= codes, f"{method} {template}: {sorted(codes)}"
            if template.startswith("/api/v1/image/"):
                assert "405" in codes, f"{method} {template}"
    assert {"400", "429", "503"} <= set(DOC["paths"]["/api/v1/events/"]["get"]["responses"])


async def test_real_405_429_and_503_answers_validate(
    client: TestClient, make_user: MakeUser, pool: asyncpg.Pool, settings: Settings
) -> None:
    import dataclasses

    from aiohttp.test_utils import TestServer

    user = await make_user()
    name = f"example.com/{unique('oa')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])
    build = await client.get(f"/api/v1/image/{name}/tag/v1/build/", headers=user.headers)
    await check_error(build, 405)
    assert build.headers["Allow"] == "POST"
    await check(await client.put(f"/api/v1/image/{name}/tag/v1/", headers=user.headers),
                "/api/v1/image/{name}/tag/{tag}/", "GET")  # 405 declared on the path's operation
    sse = {**user.headers, "Accept": "text/event-stream"}
    app = create_app(dataclasses.replace(settings, events_max_per_account=0))
    async with TestClient(TestServer(app)) as capped:
        await check(await capped.get("/api/v1/events/", headers=sse), "/api/v1/events/")  # 429
    async with TestClient(TestServer(create_app(dataclasses.replace(settings, events_in_web=False)))) as web:
        await check(await web.get("/api/v1/events/", headers=sse), "/api/v1/events/")  # 503
    listed = await check(await client.get("/api/v1/image/?limit=1&is_user_image=true", headers=user.headers),
                         "/api/v1/image/")
    assert listed["meta"]["next"] is None
