"""Bad input (SPEC §1 Errors, §6): each is answered with its documented status and a JSON
body {"error": "<sentence>", "field"?}, never a 500, and never leaves a partial row."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.api.helpers import json_error, owned_names, registry_hosts, snapshot
from tests.conftest import insert_image, unique

JSON = "application/json"


@dataclass(frozen=True)
class Body:
    """A raw request body; `{u}` in it is replaced by a name unique to the test."""

    data: bytes
    ctype: str | None = JSON
    status: int = 400
    field: str | None = None


def j(obj: object, status: int = 400, field: str | None = None, ctype: str | None = JSON) -> Body:
    return Body(json.dumps(obj).encode(), ctype, status, field)


def raw(data: bytes, status: int = 400, field: str | None = None, ctype: str | None = JSON) -> Body:
    return Body(data, ctype, status, field)


NAME = "reg{u}.example.com/team/app"  # valid: the bad part of each case is elsewhere
BIG = 70 * 1024  # over the 64 KiB body limit


def _common(base: dict[str, object]) -> dict[str, Body]:
    """Bodies bad for POST /api/v1/image/ and PATCH /api/v1/image/<name>/ alike; `base` holds
    the fields that make the rest of the body valid (the name, for a POST)."""
    return {
        "malformed-json": raw(b'{"description": "x", '),
        "not-utf8": raw(b'{"description": "\xff\xfe"}'),
        "empty-body": raw(b""),
        "json-list": j([base]),
        "json-string": j(NAME),
        "json-null": raw(b"null"),
        "json-number": raw(b"5"),
        "description-list": j({**base, "description": []}, field="description"),
        "description-number": j({**base, "description": 5}, field="description"),
        "description-too-long": j({**base, "description": "d" * 4097}, field="description"),
        "description-nul": j({**base, "description": "a\u0000b"}, field="description"),
        "username-without-password": j({**base, "username": "robot"}, field="password"),
        "password-without-username": j({**base, "password": "pw"}, field="username"),
        "username-number": j({**base, "username": 5, "password": "pw"}, field="username"),
        "password-list": j({**base, "username": "u", "password": ["pw"]}, field="password"),
        "unknown-field": j({**base, "colour": "red"}, field="colour"),
        "oversized": raw(json.dumps({**base, "description": "d" * BIG}).encode(), status=413),
        "text-plain": j(base, status=415, ctype="text/plain"),
        "form": raw(b"description=x", status=415, ctype="application/x-www-form-urlencoded"),
        "no-content-type": j(base, status=415, ctype=None),
    }


POST_BODIES = {
    **_common({"name": NAME}),
    "name-missing": j({"description": "x"}, field="name"),
    "name-number": j({"name": 5}, field="name"),
    "name-null": j({"name": None}, field="name"),
    "name-empty": j({"name": ""}, field="name"),
    "name-upper-case": j({"name": "reg{u}.example.com/Team/app"}, field="name"),
    "name-double-dot": j({"name": "a..b{u}"}, field="name"),
    "name-double-slash": j({"name": "reg{u}.example.com/a//b"}, field="name"),
    "name-trailing-slash": j({"name": "reg{u}.example.com/team/app/"}, field="name"),
    "name-leading-slash": j({"name": "/team{u}/app"}, field="name"),
    "name-256-chars": j({"name": "reg{u}.example.com/" + "a" * 250}, field="name"),
    "name-with-tag": j({"name": "ubuntu:latest"}, field="name"),
    "name-with-host-and-tag": j({"name": "reg{u}.example.com/team/app:latest"}, field="name"),
    "name-with-digest": j({"name": "reg{u}.example.com/team/app@sha256:" + "a" * 64}, field="name"),
    "name-with-space": j({"name": "team{u}/my app"}, field="name"),
    "name-port-out-of-range": j({"name": "reg{u}.example.com:99999/team/app"}, field="name"),
    "name-leading-dash": j({"name": "-team{u}/app"}, field="name"),
}

PATCH_BODIES = {
    **_common({}),
    # A PATCH cannot rename: `name` is not one of its fields.
    "rename": j({"name": "reg{u}.example.com/other/app"}, field="name"),
    "state": j({"state": "Success"}, field="state"),
}


def _fill(body: Body, u: str) -> tuple[bytes, dict[str, str]]:
    headers = {} if body.ctype is None else {"Content-Type": body.ctype}
    return body.data.replace(b"{u}", u.encode()), headers


async def _assert_bad(resp, body: Body) -> None:
    if body.status == 413:
        # The field is unknown before the body is read.
        await json_error(resp, 413)
    else:
        await json_error(resp, body.status, body.field)


@pytest.mark.parametrize("case", list(POST_BODIES), ids=list(POST_BODIES))
async def test_bad_post_body(client, pool, make_user, case: str) -> None:
    body = POST_BODIES[case]
    user = await make_user()
    u = unique("bad")
    data, headers = _fill(body, u)
    if body.ctype is None:
        # aiohttp labels raw bytes application/octet-stream: the body is not declared JSON
        headers["Content-Type"] = "application/octet-stream"

    resp = await client.post("/api/v1/image/", data=data, headers={**headers, **user.headers})

    await _assert_bad(resp, body)
    assert await owned_names(pool, user.account.id) == []
    assert await registry_hosts(pool, f"reg{u}.%") == []


@pytest.mark.parametrize("case", list(PATCH_BODIES), ids=list(PATCH_BODIES))
async def test_bad_patch_body(client, pool, make_user, case: str) -> None:
    body = PATCH_BODIES[case]
    user = await make_user()
    u = unique("badp")
    name = f"registry.local/{u}/app"
    image_id = await insert_image(
        pool, name=name, owner_id=user.account.id, description="original", tags=["v1"]
    )
    before = await snapshot(pool, image_id)
    data, headers = _fill(body, u)
    if body.ctype is None:
        headers["Content-Type"] = "application/octet-stream"

    resp = await client.patch(
        f"/api/v1/image/{name}/", data=data, headers={**headers, **user.headers}
    )

    await _assert_bad(resp, body)
    assert await snapshot(pool, image_id) == before
    assert await owned_names(pool, user.account.id) == [name]


# (path and query, the field the error names)
BAD_QUERIES = {
    "unknown-filter": ("/api/v1/image/?colour=red", "colour"),
    "unknown-filter-plural": ("/api/v1/image/?categories=Databases", "categories"),
    "jumpstart-maybe": ("/api/v1/image/?jumpstart=maybe", "jumpstart"),
    "jumpstart-empty": ("/api/v1/image/?jumpstart=", "jumpstart"),
    "is-private-yes": ("/api/v1/image/?is_private_image=yes", "is_private_image"),
    "is-user-2": ("/api/v1/image/?is_user_image=2", "is_user_image"),
    "limit-abc": ("/api/v1/image/?limit=abc", "limit"),
    "limit-negative": ("/api/v1/image/?limit=-5", "limit"),
    "limit-float": ("/api/v1/image/?limit=2.5", "limit"),
    "offset-negative": ("/api/v1/image/?offset=-1", "offset"),
    "offset-abc": ("/api/v1/image/?offset=abc", "offset"),
    "offset-huge": ("/api/v1/image/?offset=99999999999999999999", "offset"),
    "limit-huge": ("/api/v1/image/?limit=99999999999999999999999999999999999999", None),
    "registry-not-a-uri": ("/api/v1/image/?registry=not-a-uri", "registry"),
    "registry-empty-host": ("/api/v1/image/?registry=/api/v1/registry/", "registry"),
    "registry-image-uri": ("/api/v1/image/?registry=/api/v1/image/ubuntu/", "registry"),
    "name-upper": ("/api/v1/image/?name=Ubuntu", "name"),
    "name-with-tag": ("/api/v1/image/?name=ubuntu:latest", "name"),
    "category-empty": ("/api/v1/image/?categories__name=", "categories__name"),
    "category-nul": ("/api/v1/image/?categories__name=a%00b", "categories__name"),
    "tag-list-unknown": ("/api/v1/image/{name}/tag/?colour=red", "colour"),
    "tag-list-limit-abc": ("/api/v1/image/{name}/tag/?limit=abc", "limit"),
    "tag-list-offset-huge": ("/api/v1/image/{name}/tag/?offset=99999999999999999999", "offset"),
    "image-detail-unknown": ("/api/v1/image/{name}/?colour=red", "colour"),
    "registry-list-unknown": ("/api/v1/registry/?colour=red", "colour"),
    "registry-list-offset-huge": ("/api/v1/registry/?offset=99999999999999999999", "offset"),
    "path-upper-case": ("/api/v1/image/Team/App/", "name"),
    "path-double-dot": ("/api/v1/image/a..b/", "name"),
    "path-double-slash": ("/api/v1/image/registry.local//app/", "name"),
    "path-too-long": ("/api/v1/image/" + "a" * 300 + "/", "name"),
    "path-with-tag": ("/api/v1/image/ubuntu:latest/", "name"),
}


@pytest.mark.parametrize("case", list(BAD_QUERIES), ids=list(BAD_QUERIES))
async def test_bad_query_or_path(client, pool, make_user, case: str) -> None:
    path, field = BAD_QUERIES[case]
    user = await make_user()
    name = f"registry.local/{unique('q')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])

    resp = await client.get(path.replace("{name}", name), headers=user.headers)

    if case == "limit-huge":
        # A limit past the cap is capped, whatever its size; it is not an error.
        assert resp.status in (200, 400), await resp.text()
        if resp.status == 200:
            assert (await resp.json())["meta"]["limit"] == 1000
        return
    await json_error(resp, 400, field)


async def test_error_messages_name_the_unknown_filter(client, make_user) -> None:
    user = await make_user()
    body = await json_error(
        await client.get("/api/v1/image/?colour=red", headers=user.headers), 400
    )
    assert "colour" in body["error"]
    body = await json_error(
        await client.get("/api/v1/image/?jumpstart=maybe", headers=user.headers), 400
    )
    assert "jumpstart" in body["error"]


async def test_conflict_leaves_the_first_registration_untouched(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('dup')}/app"
    first = await client.post(
        "/api/v1/image/", json={"name": name, "description": "first"}, headers=user.headers
    )
    assert first.status == 201, await first.text()
    image_id = await pool.fetchval(
        "SELECT id FROM images WHERE owner_id = $1 AND name = $2", user.account.id, name
    )
    before = await snapshot(pool, image_id)

    again = await client.post(
        "/api/v1/image/",
        json={"name": name, "description": "second", "username": "u", "password": "p"},
        headers=user.headers,
    )

    await json_error(again, 409, "name")
    assert await snapshot(pool, image_id) == before
    assert await owned_names(pool, user.account.id) == [name]
