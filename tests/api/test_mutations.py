"""POST, PATCH and DELETE of images (SPEC §1 Mutations)."""

from __future__ import annotations

from core.crypto import CredentialBox
from tests.api.helpers import IMAGE_KEYS, assert_same, json_error, ok_json, snapshot
from tests.conftest import insert_image, unique


async def _image_id(pool, owner_id: int, name: str) -> int:
    image_id = await pool.fetchval(
        "SELECT id FROM images WHERE owner_id = $1 AND name = $2", owner_id, name
    )
    assert image_id is not None
    return int(image_id)


async def test_post_registers_an_empty_private_image(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('new')}/image1"

    resp = await client.post(
        "/api/v1/image/", json={"name": name, "description": "Image1"}, headers=user.headers
    )

    body = await ok_json(resp, 201)
    assert set(body) == IMAGE_KEYS
    assert_same(
        body,
        {
            "resource_uri": f"/api/v1/image/{name}/",
            "name": name,
            "description": "Image1",
            "icon_url": None,
            "state": "Empty",
            "star_count": 0,
            "jumpstart": False,
            "in_use": False,
            "categories": [],
            "is_private_image": True,
            "public_url": "",
            "registry": "/api/v1/registry/registry.local/",
            "last_build_date": None,
            "tags": [],
            "build_source": None,
        },
    )
    row = await snapshot(pool, await _image_id(pool, user.account.id, name))
    assert row is not None
    assert row["owner_id"] == user.account.id
    assert row["repository"] == name.removeprefix("registry.local/")
    assert row["credentials"] is None
    assert row["sync_requested_at"] is not None


async def test_post_accepts_json_with_a_charset(client, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('cs')}/app"
    resp = await client.post(
        "/api/v1/image/",
        data=f'{{"name": "{name}"}}'.encode(),
        headers={**user.headers, "Content-Type": "application/json; charset=utf-8"},
    )
    assert (await ok_json(resp, 201))["name"] == name


async def test_post_with_credentials_stores_them_encrypted(
    client, pool, make_user, settings
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('cred')}/app"
    password = f"hunter2-{unique('pw')}"

    resp = await client.post(
        "/api/v1/image/",
        json={"name": name, "username": "robot", "password": password},
        headers=user.headers,
    )

    body = await ok_json(resp, 201)
    assert body["is_private_image"] is True
    stored = await pool.fetchval(
        "SELECT credentials FROM images WHERE id = $1", await _image_id(pool, user.account.id, name)
    )
    assert password.encode() not in stored and b"robot" not in stored
    creds = CredentialBox(settings.secret_key).open(stored)
    assert (creds.username, creds.password) == ("robot", password)


async def test_reregistering_is_409_but_another_account_may_register_the_name(
    client, pool, make_user
) -> None:
    a, b = await make_user(), await make_user()
    name = f"registry.local/{unique('same')}/app"

    first = await client.post("/api/v1/image/", json={"name": name}, headers=a.headers)
    again = await client.post("/api/v1/image/", json={"name": name}, headers=a.headers)
    other = await client.post("/api/v1/image/", json={"name": name}, headers=b.headers)

    assert first.status == 201, await first.text()
    body = await json_error(again, 409, "name")
    assert name in body["error"]
    assert (await ok_json(other, 201))["name"] == name
    owners = await pool.fetch("SELECT owner_id FROM images WHERE name = $1 ORDER BY owner_id", name)
    assert sorted(r["owner_id"] for r in owners) == sorted([a.account.id, b.account.id])


async def test_hub_alias_is_stored_in_its_short_form(client, make_user) -> None:
    user = await make_user()
    ns = unique("alias")
    body = await ok_json(
        await client.post(
            "/api/v1/image/", json={"name": f"docker.io/{ns}/app"}, headers=user.headers
        ),
        201,
    )
    assert body["name"] == f"{ns}/app"
    again = await client.post("/api/v1/image/", json={"name": f"{ns}/app"}, headers=user.headers)
    await json_error(again, 409, "name")


async def test_patch_changes_the_description(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('patch')}/app"
    image_id = await insert_image(
        pool, name=name, owner_id=user.account.id, description="old", tags=["v1"]
    )

    body = await ok_json(
        await client.patch(
            f"/api/v1/image/{name}/",
            json={"description": "New image description"},
            headers=user.headers,
        )
    )

    assert body["description"] == "New image description"
    assert body["tags"] == [f"/api/v1/image/{name}/tag/v1/"]
    row = await snapshot(pool, image_id)
    assert row is not None and row["description"] == "New image description"
    again = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
    assert again == body

    # An empty string is a description too.
    cleared = await ok_json(
        await client.patch(f"/api/v1/image/{name}/", json={"description": ""}, headers=user.headers)
    )
    assert cleared["description"] == ""


async def test_patch_with_an_empty_object_changes_nothing(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('noop')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, description="keep")
    before = await snapshot(pool, image_id)

    body = await ok_json(
        await client.patch(f"/api/v1/image/{name}/", json={}, headers=user.headers)
    )

    assert body["description"] == "keep"
    after = await snapshot(pool, image_id)
    assert before is not None and after is not None
    after.pop("updated_at"), before.pop("updated_at")
    assert after == before


async def test_patch_credentials_replaces_them_and_requests_a_sync(
    client, pool, make_user, settings
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('newcred')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, description="same")

    body = await ok_json(
        await client.patch(
            f"/api/v1/image/{name}/",
            json={"username": "u2", "password": "p2-secret"},
            headers=user.headers,
        )
    )

    assert body["description"] == "same"
    row = await snapshot(pool, image_id)
    assert row is not None and row["credentials"] is not None
    creds = CredentialBox(settings.secret_key).open(row["credentials"])
    assert (creds.username, creds.password) == ("u2", "p2-secret")
    assert row["sync_requested_at"] is not None


async def test_delete_answers_204_and_removes_the_tags(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('del')}/app"
    image_id = await insert_image(pool, name=name, owner_id=user.account.id, tags=["a", "b", "c"])
    keep = await insert_image(pool, name=f"{name}-keep", owner_id=user.account.id, tags=["a"])

    resp = await client.delete(f"/api/v1/image/{name}/", headers=user.headers)

    assert resp.status == 204
    assert await resp.read() == b""
    assert await pool.fetchval("SELECT count(*) FROM images WHERE id = $1", image_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", image_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", keep) == 1
    await json_error(await client.get(f"/api/v1/image/{name}/", headers=user.headers), 404)
    await json_error(await client.get(f"/api/v1/image/{name}/tag/a/", headers=user.headers), 404)
    await json_error(await client.delete(f"/api/v1/image/{name}/", headers=user.headers), 404)


async def test_delete_of_own_image_keeps_the_catalog_image_of_the_same_name(
    client, pool, make_user
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('shadow')}/app"
    catalog = await insert_image(pool, name=name, description="catalog", tags=["v1"])
    await insert_image(pool, name=name, owner_id=user.account.id, description="mine")

    assert (await client.delete(f"/api/v1/image/{name}/", headers=user.headers)).status == 204

    assert await pool.fetchval("SELECT count(*) FROM images WHERE id = $1", catalog) == 1
    body = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
    assert body["description"] == "catalog"
