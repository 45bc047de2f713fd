"""Routing (SPEC §1): trailing slashes, names with slashes, the `tag` ambiguity, 405 with
Allow, SDK quirks (a JSON body on GET/DELETE), request ids."""

from __future__ import annotations

import pytest

from tests.api.helpers import add_layer, json_error, ok_json
from tests.conftest import insert_image, unique


async def test_paths_work_with_and_without_the_trailing_slash(client, pool, make_user) -> None:
    user = await make_user()
    host = f"{unique('slash')}.example.com"
    name = f"{host}/team/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])
    hex_id = await add_layer(pool, image_id, "v1", author="a")
    paths = [
        "/api/v1/image/",
        f"/api/v1/image/{name}/",
        f"/api/v1/image/{name}/tag/",
        f"/api/v1/image/{name}/tag/v1/",
        "/api/v1/registry/",
        f"/api/v1/registry/{host}/",
        f"/api/v1/layer/{hex_id}/",
        "/api/v1/auth/",
    ]
    for path in paths:
        with_slash = await ok_json(await client.get(path, headers=user.headers))
        without = await client.get(path.removesuffix("/"), headers=user.headers)
        # Redirects are allowed by the spec; the client follows them for GET.
        assert without.status == 200, (path, without.status, await without.text())
        assert await without.json() == with_slash, path


async def test_mutations_work_without_the_trailing_slash(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('noslash')}/app"
    created = await client.post("/api/v1/image", json={"name": name}, headers=user.headers)
    assert created.status == 201, await created.text()
    await insert_image(pool, name=f"{name}-b", owner_id=user.account.id, tags=["v1"])

    patched = await client.patch(
        f"/api/v1/image/{name}", json={"description": "d"}, headers=user.headers
    )
    assert patched.status == 200 and (await patched.json())["description"] == "d"
    build = await client.post(f"/api/v1/image/{name}-b/tag/v1/build", headers=user.headers)
    assert build.status == 202, await build.text()
    deleted = await client.delete(f"/api/v1/image/{name}", headers=user.headers)
    assert deleted.status == 204
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM images WHERE owner_id = $1 AND name = $2", user.account.id, name
        )
        == 0
    )


async def test_a_path_component_named_tag_reads_as_the_image_when_it_exists(
    client, pool, make_user
) -> None:
    user = await make_user()
    team = f"example.com/{unique('team')}"
    full = f"{team}/tag/app"
    await insert_image(pool, name=team, owner_id=user.account.id, tags=["app", "other"])

    # No image of the full name: the path is tag `app` of `<team>`.
    tag = await ok_json(await client.get(f"/api/v1/image/{full}/", headers=user.headers))
    assert tag["full_name"] == f"{team}:app"
    assert tag["image"] == f"/api/v1/image/{team}/"

    await insert_image(pool, name=full, owner_id=user.account.id, tags=["v9"])

    image = await ok_json(await client.get(f"/api/v1/image/{full}/", headers=user.headers))
    assert image["name"] == full
    assert image["resource_uri"] == f"/api/v1/image/{full}/"
    assert image["tags"] == [f"/api/v1/image/{full}/tag/v9/"]
    tags = await ok_json(await client.get(f"/api/v1/image/{full}/tag/", headers=user.headers))
    assert [t["full_name"] for t in tags["objects"]] == [f"{full}:v9"]
    v9 = await ok_json(await client.get(f"/api/v1/image/{full}/tag/v9/", headers=user.headers))
    assert v9["full_name"] == f"{full}:v9"
    # The tag of the shorter image is still reachable through its own tag list.
    team_tags = await ok_json(await client.get(f"/api/v1/image/{team}/tag/", headers=user.headers))
    assert [t["name"] for t in team_tags["objects"]] == ["app", "other"]


async def test_tag_reading_does_not_see_another_accounts_image(client, pool, make_user) -> None:
    a, b = await make_user(), await make_user()
    team = f"example.com/{unique('team')}"
    full = f"{team}/tag/app"
    await insert_image(pool, name=team, owner_id=a.account.id, tags=["app"])
    await insert_image(pool, name=full, owner_id=b.account.id)

    tag = await ok_json(await client.get(f"/api/v1/image/{full}/", headers=a.headers))
    assert tag["full_name"] == f"{team}:app"
    image = await ok_json(await client.get(f"/api/v1/image/{full}/", headers=b.headers))
    assert image["name"] == full


async def test_a_path_that_is_neither_image_nor_tag_is_404(client, make_user) -> None:
    user = await make_user()
    team = f"example.com/{unique('none')}"
    await json_error(await client.get(f"/api/v1/image/{team}/tag/app/", headers=user.headers), 404)
    await json_error(await client.get(f"/api/v1/image/{team}/", headers=user.headers), 404)
    await json_error(await client.get("/api/v1/no-such-thing/", headers=user.headers), 404)


@pytest.mark.parametrize(
    "name",
    ["registry.local/user1/image1", "127.0.0.1:5000/team/app", "tutum/hello-world", "ubuntu"],
)
async def test_valid_names_are_accepted(client, make_user, name: str) -> None:
    user = await make_user()
    created = await ok_json(
        await client.post("/api/v1/image/", json={"name": name}, headers=user.headers), 201
    )
    assert created["name"] == name
    assert created["resource_uri"] == f"/api/v1/image/{name}/"
    assert created["state"] == "Empty"
    fetched = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
    assert fetched == created


async def test_build_answers_202_with_the_tag_and_requests_a_sync(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('build')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, tags=["latest", "dev"])
    assert (
        await pool.fetchval("SELECT sync_requested_at FROM images WHERE id = $1", image_id) is None
    )

    resp = await client.post(f"/api/v1/image/{name}/tag/latest/build/", headers=user.headers)

    body = await ok_json(resp, 202)
    detail = await ok_json(
        await client.get(f"/api/v1/image/{name}/tag/latest/", headers=user.headers)
    )
    assert body == detail
    assert body["full_name"] == f"{name}:latest"
    assert (
        await pool.fetchval("SELECT sync_requested_at FROM images WHERE id = $1", image_id)
        is not None
    )
    await json_error(
        await client.post(f"/api/v1/image/{name}/tag/nope/build/", headers=user.headers), 404
    )


async def test_post_to_sync_requests_a_sync_of_the_image_without_naming_a_tag(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('resync')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id)  # no tag yet

    body = await ok_json(await client.post(f"/api/v1/image/{name}/sync/", headers=user.headers), 202)

    assert body["image"] == f"/api/v1/image/{name}/"
    assert {"state", "syncing", "last_synced_at", "next_sync_at", "error"} <= set(body)
    assert await pool.fetchval("SELECT sync_requested_at FROM images WHERE id = $1", image_id) is not None
    other = await make_user()
    await json_error(await client.post(f"/api/v1/image/{name}/sync/", headers=other.headers), 404)
    await json_error(await client.delete(f"/api/v1/image/{name}/sync/", headers=user.headers), 405)


# (method, path template, the methods Allow must list)
NOT_ALLOWED = [
    ("PUT", "/api/v1/image/", {"GET", "POST"}),
    ("DELETE", "/api/v1/image/", {"GET", "POST"}),
    ("PUT", "/api/v1/image/{name}/", {"GET", "PATCH", "DELETE"}),
    ("POST", "/api/v1/image/{name}/", {"GET", "PATCH", "DELETE"}),
    ("POST", "/api/v1/image/{name}/tag/", {"GET"}),
    ("DELETE", "/api/v1/image/{name}/tag/v1/", {"GET"}),
    ("PATCH", "/api/v1/image/{name}/tag/v1/", {"GET"}),
    ("GET", "/api/v1/image/{name}/tag/v1/build/", {"POST"}),
    ("POST", "/api/v1/registry/", {"GET"}),
    ("DELETE", "/api/v1/registry/registry.local/", {"GET"}),
    ("POST", "/api/v1/auth/", {"GET"}),
]


@pytest.mark.parametrize(("method", "path", "allow"), NOT_ALLOWED)
async def test_unsupported_method_is_405_with_allow(
    client, pool, make_user, method: str, path: str, allow: set[str]
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('m')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])

    resp = await client.request(
        method, path.replace("{name}", name), json={"description": "x"}, headers=user.headers
    )

    await json_error(resp, 405)
    listed = {m.strip() for m in resp.headers.get("Allow", "").split(",") if m.strip()}
    assert allow <= listed, resp.headers.get("Allow")
    assert method not in listed
    assert await pool.fetchval("SELECT description FROM images WHERE id = $1", image_id) == ""


async def test_sdk_json_body_on_get_and_delete_is_served(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('sdk')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])
    sdk = {**user.headers, "Content-Type": "application/json"}

    listed = await ok_json(
        await client.get("/api/v1/image/?is_user_image=true", data=b"{}", headers=sdk)
    )
    assert [o["name"] for o in listed["objects"]] == [name]
    detail = await ok_json(await client.get(f"/api/v1/image/{name}/", data=b"{}", headers=sdk))
    assert detail["name"] == name
    tag = await ok_json(await client.get(f"/api/v1/image/{name}/tag/v1/", data=b"{}", headers=sdk))
    assert tag["name"] == "v1"
    await ok_json(await client.get("/api/v1/registry/", data=b"{}", headers=sdk))
    deleted = await client.delete(f"/api/v1/image/{name}/", data=b"{}", headers=sdk)
    assert deleted.status == 204, await deleted.text()
    assert await deleted.read() == b""
    await json_error(await client.get(f"/api/v1/image/{name}/", headers=user.headers), 404)


async def test_request_id_is_echoed(client, make_user) -> None:
    user = await make_user()
    rid = f"req-{unique('id')}.1_x"
    ok = await client.get("/api/v1/auth/", headers={**user.headers, "X-Request-ID": rid})
    assert ok.status == 200
    assert ok.headers["X-Request-ID"] == rid
    failed = await client.get("/api/v1/image/Bad/", headers={**user.headers, "X-Request-ID": rid})
    assert failed.status == 400
    assert failed.headers["X-Request-ID"] == rid
    generated = await client.get("/api/v1/auth/", headers=user.headers)
    assert len(generated.headers.get("X-Request-ID", "")) >= 16
    hostile = await client.get("/api/v1/auth/", headers={**user.headers, "X-Request-ID": "a b;<x>"})
    assert hostile.headers.get("X-Request-ID") not in (None, "", "a b;<x>")
