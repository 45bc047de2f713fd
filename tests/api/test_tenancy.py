"""Tenancy (SPEC §1): an account sees the catalog and its own images; another account's
private image is a 404 everywhere (never a 403); the catalog is read-only but for admins."""

from __future__ import annotations

import pytest

from tests.api.helpers import json_error, ok_json, snapshot
from tests.conftest import User, insert_image, unique

OWN, OTHERS, CATALOG = "own", "other's", "catalog"
READ, UPDATE, DELETE = "read", "update", "delete"

# (whose image, operation, caller is admin) -> expected status
MATRIX = [
    (OWN, READ, False, 200),
    (OWN, UPDATE, False, 200),
    (OWN, DELETE, False, 204),
    (OTHERS, READ, False, 404),
    (OTHERS, UPDATE, False, 404),
    (OTHERS, DELETE, False, 404),
    (CATALOG, READ, False, 200),
    (CATALOG, UPDATE, False, 403),
    (CATALOG, DELETE, False, 403),
    (CATALOG, READ, True, 200),
    (CATALOG, UPDATE, True, 200),
    (CATALOG, DELETE, True, 204),
]


async def _call(client, op: str, name: str, user: User):
    path = f"/api/v1/image/{name}/"
    if op == READ:
        return await client.get(path, headers=user.headers)
    if op == UPDATE:
        return await client.patch(path, json={"description": "changed"}, headers=user.headers)
    return await client.delete(path, headers=user.headers)


@pytest.mark.parametrize(("whose", "op", "admin", "status"), MATRIX)
async def test_tenancy_matrix(
    client, pool, make_user, whose: str, op: str, admin: bool, status: int
) -> None:
    a = await make_user(is_admin=admin)
    b = await make_user()
    name = f"registry.local/{unique('ten')}/app"
    owner = {OWN: a.account.id, OTHERS: b.account.id, CATALOG: None}[whose]
    image_id = await insert_image(
        pool, name=name, owner_id=owner, description="original", tags=["v1"]
    )
    before = await snapshot(pool, image_id)

    resp = await _call(client, op, name, a)

    after = await snapshot(pool, image_id)
    if status >= 400:
        await json_error(resp, status)
        assert after == before, "a refused request changed the image"
        return
    assert resp.status == status, await resp.text()
    if op == READ:
        assert (await resp.json())["name"] == name
        assert after == before
    elif op == UPDATE:
        body = await resp.json()
        assert body["description"] == "changed"
        assert after is not None and after["description"] == "changed"
    else:
        assert await resp.read() == b""
        assert after is None
        assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", image_id) == 0


async def test_others_private_image_is_404_on_every_path(client, pool, make_user) -> None:
    a, b = await make_user(), await make_user()
    name = f"registry.local/{unique('priv')}/app"
    image_id = await insert_image(pool, name=name, owner_id=b.account.id, tags=["latest"])
    before = await snapshot(pool, image_id)
    base = f"/api/v1/image/{name}"

    requests = [
        ("GET", f"{base}/", None),
        ("PATCH", f"{base}/", {"description": "x"}),
        ("DELETE", f"{base}/", None),
        ("GET", f"{base}/tag/", None),
        ("GET", f"{base}/tag/latest/", None),
        ("POST", f"{base}/tag/latest/build/", None),
        ("GET", f"{base}/sync/", None),
    ]
    for method, path, body in requests:
        resp = await client.request(method, path, json=body, headers=a.headers)
        await json_error(resp, 404)
    assert await snapshot(pool, image_id) == before
    # The owner still gets all of them.
    assert (await client.get(f"{base}/tag/latest/", headers=b.headers)).status == 200


async def test_catalog_tag_paths_are_readable_but_build_is_refused(client, pool, make_user) -> None:
    a = await make_user()
    name = f"{unique('cat')}/app"
    await insert_image(pool, name=name, tags=["latest"])
    base = f"/api/v1/image/{name}"

    assert (await client.get(f"{base}/tag/", headers=a.headers)).status == 200
    assert (await client.get(f"{base}/tag/latest/", headers=a.headers)).status == 200
    await json_error(await client.post(f"{base}/tag/latest/build/", headers=a.headers), 403)


async def _all_names(client, user: User, query: str = "") -> list[str]:
    url: str | None = f"/api/v1/image/?limit=1000{query}"
    names: list[str] = []
    while url is not None:
        body = await ok_json(await client.get(url, headers=user.headers))
        names.extend(o["name"] for o in body["objects"])
        url = body["meta"]["next"]
    return names


async def test_a_list_never_shows_another_accounts_images(client, pool, make_user) -> None:
    a, b = await make_user(), await make_user()
    ns = unique("lst")
    a_names = [f"registry.local/{ns}/a{i}" for i in range(3)]
    b_names = [f"registry.local/{ns}/b{i}" for i in range(3)] + [f"{ns}/hub-b"]
    for n in a_names:
        await insert_image(pool, name=n, owner_id=a.account.id)
    for n in b_names:
        await insert_image(pool, name=n, owner_id=b.account.id, is_private_image=False)

    seen_by_a = await _all_names(client, a)
    assert set(a_names) <= set(seen_by_a)
    assert not set(b_names) & set(seen_by_a)
    assert len(seen_by_a) == len(set(seen_by_a))
    assert sorted(await _all_names(client, a, "&is_user_image=true")) == sorted(a_names)
    assert sorted(await _all_names(client, b, "&is_user_image=true")) == sorted(b_names)
    for n in b_names:
        assert await _all_names(client, a, f"&name={n}") == []


async def test_own_registration_of_a_catalog_name_wins_without_duplicates(
    client, pool, make_user
) -> None:
    a, b = await make_user(), await make_user()
    name = f"registry.local/{unique('dup')}/app"
    await insert_image(pool, name=name, description="catalog")
    await insert_image(pool, name=name, owner_id=a.account.id, description="mine")

    mine = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=a.headers))
    listed = await ok_json(await client.get(f"/api/v1/image/?name={name}", headers=a.headers))
    theirs = await ok_json(await client.get(f"/api/v1/image/?name={name}", headers=b.headers))

    assert mine["description"] == "mine"
    assert [o["description"] for o in listed["objects"]] == ["mine"]
    assert listed["meta"]["total_count"] == 1
    assert [o["description"] for o in theirs["objects"]] == ["catalog"]


async def test_registry_of_another_accounts_image_is_hidden(client, pool, make_user) -> None:
    a, b = await make_user(), await make_user()
    host = f"{unique('hidden')}.example.com"
    await insert_image(pool, name=f"{host}/team/app", owner_id=b.account.id)

    await json_error(await client.get(f"/api/v1/registry/{host}/", headers=a.headers), 404)
    assert (await client.get(f"/api/v1/registry/{host}/", headers=b.headers)).status == 200
    listed = await ok_json(await client.get("/api/v1/registry/?limit=1000", headers=a.headers))
    assert host not in {r["host"] for r in listed["objects"]}
