"""The Tutum v1 wire format (SPEC §1): every field of Image, Image tag, layer and Registry,
exact key sets, types, null vs "", RFC 2822 dates in UTC, resource URIs, the list envelope."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import asyncpg

from core.registries import DOCKER_HUB_ICON
from tests.api.helpers import (
    IMAGE_KEYS,
    LAYER_KEYS,
    META_KEYS,
    REGISTRY_KEYS,
    TAG_KEYS,
    add_layer,
    assert_same,
    is_rfc2822,
    ok_json,
    utc,
)
from tests.conftest import insert_image, unique


async def test_image_detail_has_every_field_with_its_type(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('user')}/image1"
    await insert_image(
        pool,
        name=name,
        owner_id=user.account.id,
        description="Test image",
        star_count=3,
        categories=["test", "Another"],
        tags=[
            {"name": "staging", "build_date": utc(2012, 1, 2, 3, 4, 5)},
            {"name": "latest", "build_date": utc(2013, 11, 8, 0, 22, 26)},
        ],
    )

    body = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))

    assert set(body) == IMAGE_KEYS
    assert_same(
        body,
        {
            "resource_uri": f"/api/v1/image/{name}/",
            "name": name,
            "description": "Test image",
            "icon_url": None,
            "state": "Success",
            "star_count": 3,
            "jumpstart": False,
            "in_use": False,
            "categories": [{"name": "Another"}, {"name": "test"}],
            "is_private_image": True,
            "public_url": "",
            "registry": "/api/v1/registry/registry.local/",
            "last_build_date": "Fri, 8 Nov 2013 00:22:26 +0000",
            "tags": [
                f"/api/v1/image/{name}/tag/latest/",
                f"/api/v1/image/{name}/tag/staging/",
            ],
            "build_source": None,
        },
    )


async def test_image_without_tags_uses_null_and_empty_strings(client, pool, make_user) -> None:
    user = await make_user()
    name = f"127.0.0.1:5000/{unique('team')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id)

    body = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))

    assert_same(
        body,
        {
            "resource_uri": f"/api/v1/image/{name}/",
            "name": name,
            "description": "",
            "icon_url": None,
            "state": "Empty",
            "star_count": 0,
            "jumpstart": False,
            "in_use": False,
            "categories": [],
            "is_private_image": True,
            "public_url": "",
            "registry": "/api/v1/registry/127.0.0.1:5000/",
            "last_build_date": None,
            "tags": [],
            "build_source": None,
        },
    )


async def test_last_build_date_is_null_while_no_tag_has_succeeded(client, pool, make_user) -> None:
    user = await make_user()
    name = f"example.com/{unique('ns')}/app"
    await insert_image(
        pool,
        name=name,
        owner_id=user.account.id,
        tags=[{"name": "a", "state": "Empty"}, {"name": "b", "state": "Building"}],
    )

    body = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))

    assert body["last_build_date"] is None
    assert body["state"] == "Building"
    assert len(body["tags"]) == 2


async def test_dates_are_rfc2822_in_utc_without_a_leading_zero(client, pool, make_user) -> None:
    user = await make_user()
    plus5 = timezone(timedelta(hours=5))
    cases = [
        # (stored build date, what the API must write)
        (datetime(2021, 3, 5, 1, 2, 3, tzinfo=plus5), "Thu, 4 Mar 2021 20:02:03 +0000"),
        (utc(2024, 1, 15, 9, 8, 7), "Mon, 15 Jan 2024 09:08:07 +0000"),
        (utc(2020, 2, 29, 23, 59, 59), "Sat, 29 Feb 2020 23:59:59 +0000"),
    ]
    for stored, wire in cases:
        name = f"example.com/{unique('dates')}/app"
        await insert_image(
            pool, name=name, owner_id=user.account.id, tags=[{"name": "v1", "build_date": stored}]
        )
        body = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
        assert body["last_build_date"] == wire
        assert is_rfc2822(body["last_build_date"])


async def test_tags_are_sorted_by_name_in_byte_order(client, pool, make_user) -> None:
    user = await make_user()
    name = f"example.com/{unique('sort')}/app"
    await insert_image(
        pool, name=name, owner_id=user.account.id, tags=["b", "a", "Z", "_x", "A1", "10", "9"]
    )
    order = ["10", "9", "A1", "Z", "_x", "a", "b"]

    image = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
    listed = await ok_json(await client.get(f"/api/v1/image/{name}/tag/", headers=user.headers))

    assert image["tags"] == [f"/api/v1/image/{name}/tag/{t}/" for t in order]
    assert [t["name"] for t in listed["objects"]] == order


async def test_public_url_of_hub_names(client, make_user) -> None:
    user = await make_user()
    ns = unique("ns")
    cases = {
        "ubuntu": "https://hub.docker.com/_/ubuntu/",
        "tutum/hello-world": "https://hub.docker.com/r/tutum/hello-world/",
        f"{ns}/repo": f"https://hub.docker.com/r/{ns}/repo/",
        f"registry.local/{ns}/repo": "",
    }
    for name, public_url in cases.items():
        body = await ok_json(
            await client.post("/api/v1/image/", json={"name": name}, headers=user.headers), 201
        )
        assert body["public_url"] == public_url, name
        assert body["name"] == name
        host = "registry.local" if name.startswith("registry.local/") else "registry.hub.docker.com"
        assert body["registry"] == f"/api/v1/registry/{host}/"


async def test_tag_detail_has_every_field_and_the_layer(client, pool, make_user) -> None:
    user = await make_user()
    name = f"registry.local/{unique('user')}/image1"
    image_id = await insert_image(
        pool,
        name=name,
        owner_id=user.account.id,
        tags=[{"name": "latest", "build_date": utc(2013, 11, 8, 0, 22, 26)}],
    )
    hex_id = await add_layer(
        pool,
        image_id,
        "latest",
        author="Jane <jane@example.com>",
        created=datetime(2015, 6, 1, 14, 0, 9, tzinfo=timezone(timedelta(hours=-2))),
        entrypoint="/docker-entrypoint.sh",
        run_command="nginx -g 'daemon off;'",
        envvars=[{"key": "PATH", "value": "/usr/bin:/bin"}, {"key": "EMPTY", "value": ""}],
        labels=[{"key": "maintainer", "value": "jane"}],
        ports=[{"port": 80, "protocol": "tcp"}, {"port": 53, "protocol": "udp"}],
        volumes=[{"container_path": "/data"}],
    )
    await pool.execute("UPDATE tags SET buildable = true WHERE image_id = $1", image_id)

    body = await ok_json(
        await client.get(f"/api/v1/image/{name}/tag/latest/", headers=user.headers)
    )

    assert set(body) == TAG_KEYS
    assert set(body["layer"]) == LAYER_KEYS
    assert_same(
        body,
        {
            "resource_uri": f"/api/v1/image/{name}/tag/latest/",
            "name": "latest",
            "full_name": f"{name}:latest",
            "image": f"/api/v1/image/{name}/",
            "state": "Success",
            "buildable": True,
            "layer": {
                "author": "Jane <jane@example.com>",
                "creation": "Mon, 1 Jun 2015 16:00:09 +0000",
                "docker_id": hex_id,
                "entrypoint": "/docker-entrypoint.sh",
                "run_command": "nginx -g 'daemon off;'",
                "envvars": [
                    {"key": "PATH", "value": "/usr/bin:/bin"},
                    {"key": "EMPTY", "value": ""},
                ],
                "labels": [{"key": "maintainer", "value": "jane"}],
                "ports": [{"port": 80, "protocol": "tcp"}, {"port": 53, "protocol": "udp"}],
                "volumes": [{"container_path": "/data"}],
                "resource_uri": f"/api/v1/layer/{hex_id}/",
            },
        },
    )

    layer = await ok_json(await client.get(f"/api/v1/layer/{hex_id}/", headers=user.headers))
    assert_same(layer, body["layer"])


async def test_tag_without_a_known_config_has_a_null_layer(client, pool, make_user) -> None:
    user = await make_user()
    name = f"example.com/{unique('ns')}/app"
    await insert_image(
        pool, name=name, owner_id=user.account.id, tags=[{"name": "v1.0", "state": "Failed"}]
    )

    body = await ok_json(await client.get(f"/api/v1/image/{name}/tag/v1.0/", headers=user.headers))

    assert_same(
        body,
        {
            "resource_uri": f"/api/v1/image/{name}/tag/v1.0/",
            "name": "v1.0",
            "full_name": f"{name}:v1.0",
            "image": f"/api/v1/image/{name}/",
            "state": "Failed",
            "buildable": False,
            "layer": None,
        },
    )


async def test_layer_of_an_invisible_image_is_404_and_a_bad_id_400(client, pool, make_user) -> None:
    owner, other = await make_user(), await make_user()
    image_id = await insert_image(
        pool, name=f"example.com/{unique('ns')}/app", owner_id=owner.account.id, tags=["v1"]
    )
    hex_id = await add_layer(pool, image_id, "v1", author="x")

    assert (await client.get(f"/api/v1/layer/{hex_id}/", headers=owner.headers)).status == 200
    resp = await client.get(f"/api/v1/layer/{hex_id}/", headers=other.headers)
    assert resp.status == 404
    resp = await client.get("/api/v1/layer/not-hex/", headers=owner.headers)
    assert resp.status == 400


async def test_tag_list_envelope(client, pool, make_user) -> None:
    user = await make_user()
    name = f"example.com/{unique('ns')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id, tags=["v2", "v1"])

    body = await ok_json(await client.get(f"/api/v1/image/{name}/tag/", headers=user.headers))

    assert_same(
        body["meta"], {"limit": 25, "offset": 0, "total_count": 2, "next": None, "previous": None}
    )
    assert [set(t) for t in body["objects"]] == [TAG_KEYS, TAG_KEYS]
    assert [t["full_name"] for t in body["objects"]] == [f"{name}:v1", f"{name}:v2"]


async def test_image_list_envelope_and_objects(client, pool, make_user) -> None:
    user = await make_user()
    name = f"example.com/{unique('ns')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id, tags=["latest"])

    body = await ok_json(
        await client.get("/api/v1/image/?is_user_image=true", headers=user.headers)
    )

    assert set(body) == {"meta", "objects"}
    assert set(body["meta"]) == META_KEYS
    assert_same(
        body["meta"], {"limit": 25, "offset": 0, "total_count": 1, "next": None, "previous": None}
    )
    detail = await ok_json(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
    assert_same(body["objects"], [detail])
    assert body["objects"][0]["build_source"] is None


async def test_registry_detail_and_list(client, pool, make_user) -> None:
    user = await make_user()
    host = f"{unique('reg')}.example.com"
    await insert_image(pool, name=f"{host}/team/app", owner_id=user.account.id)
    await ok_json(
        await client.post("/api/v1/image/", json={"name": "ubuntu"}, headers=user.headers), 201
    )
    expected = {
        "resource_uri": f"/api/v1/registry/{host}/",
        "name": host,
        "host": host,
        "icon_url": None,
        "is_ssl": True,
        "is_tutum_registry": False,
    }
    hub = {
        "resource_uri": "/api/v1/registry/registry.hub.docker.com/",
        "name": "Docker Hub",
        "host": "registry.hub.docker.com",
        "icon_url": DOCKER_HUB_ICON,
        "is_ssl": True,
        "is_tutum_registry": False,
    }

    body = await ok_json(await client.get(f"/api/v1/registry/{host}/", headers=user.headers))
    assert set(body) == REGISTRY_KEYS
    assert_same(body, expected)
    body = await ok_json(
        await client.get("/api/v1/registry/registry.hub.docker.com/", headers=user.headers)
    )
    assert_same(body, hub)

    listed = await ok_json(await client.get("/api/v1/registry/?limit=1000", headers=user.headers))
    assert set(listed["meta"]) == META_KEYS
    assert listed["meta"]["total_count"] == len(listed["objects"])
    by_host = {r["host"]: r for r in listed["objects"]}
    assert_same(by_host[host], expected)
    assert_same(by_host["registry.hub.docker.com"], hub)
    hosts = [r["host"] for r in listed["objects"]]
    assert hosts == sorted(hosts, key=lambda h: h.encode())


async def test_auth_endpoint_describes_the_caller(client, make_user) -> None:
    user = await make_user()
    admin = await make_user(is_admin=True)
    for headers in (user.headers, user.basic_headers):
        body = await ok_json(await client.get("/api/v1/auth/", headers=headers))
        assert body["username"] == user.account.username
        assert body["is_admin"] is False
    body = await ok_json(await client.get("/api/v1/auth/", headers=admin.headers))
    assert body["username"] == admin.account.username
    assert body["is_admin"] is True


async def test_credentials_are_never_returned_nor_stored_in_clear(
    client, pool: asyncpg.Pool, make_user
) -> None:
    user = await make_user()
    name = f"registry.local/{unique('sec')}/app"
    password, username = f"pw-{unique('s3cret')}-x", f"robot-{unique('u')}"
    responses = [
        await client.post(
            "/api/v1/image/",
            json={"name": name, "username": username, "password": password},
            headers=user.headers,
        )
    ]
    new_password = f"pw-{unique('n3w')}-y"
    responses.append(
        await client.patch(
            f"/api/v1/image/{name}/",
            json={"username": username, "password": new_password},
            headers=user.headers,
        )
    )
    responses.append(await client.get(f"/api/v1/image/{name}/", headers=user.headers))
    responses.append(await client.get(f"/api/v1/image/?name={name}", headers=user.headers))
    responses.append(await client.get(f"/api/v1/image/{name}/sync/", headers=user.headers))

    assert [r.status for r in responses] == [201, 200, 200, 200, 200]
    for resp in responses:
        text = await resp.text()
        for secret in (password, new_password, username):
            assert secret not in text
        assert '"password"' not in text and '"username"' not in text and "credentials" not in text
    stored = await pool.fetchval(
        "SELECT credentials FROM images WHERE owner_id = $1 AND name = $2", user.account.id, name
    )
    assert isinstance(stored, bytes) and stored
    for secret in (password, new_password):
        assert secret.encode() not in stored
