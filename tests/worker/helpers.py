"""API calls the worker tests make to check what a sync wrote, as a client sees it."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import User


async def register(client: TestClient, user: User, name: str, **body: str) -> int:
    """POST the image as `user`; its id."""
    resp = await client.post("/api/v1/image/", json={"name": name, **body}, headers=user.headers)
    assert resp.status == 201, await resp.text()
    return await image_id(client.server.app, name, user)


async def image_id(app: Any, name: str, user: User) -> int:
    from api.keys import POOL

    return int(await app[POOL].fetchval(
        "SELECT id FROM images WHERE name = $1 AND owner_id = $2", name, user.account.id))


async def get(client: TestClient, user: User, path: str) -> dict[str, Any]:
    resp = await client.get(path, headers=user.headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def tag_names(image: dict[str, Any]) -> list[str]:
    """The tag names of an image resource (its `tags` are resource URIs)."""
    return [uri.rstrip("/").rsplit("/", 1)[-1] for uri in image["tags"]]
