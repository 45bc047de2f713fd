"""A database of its own for the list tests (they need to know every catalog image), and the
visibility rule written out in Python to check the lists and counts against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from api.params import ImageFilter
from core.accounts import create_account
from tests.conftest import User

HUB = "registry.hub.docker.com"


@dataclass
class ListDb:
    dsn: str
    pool: asyncpg.Pool
    client: TestClient
    registries: dict[str, int]  # host -> id
    categories: dict[str, int]  # name -> id

    async def user(self, name: str) -> User:
        async with self.pool.acquire() as conn:
            account, key = await create_account(conn, name)
        return User(account, key)

    async def registry(self, host: str) -> int:
        if host not in self.registries:
            self.registries[host] = await self.pool.fetchval(
                "INSERT INTO registries (host, name) VALUES ($1, $1) RETURNING id", host)
        return self.registries[host]

    async def category(self, name: str) -> int:
        if name not in self.categories:
            self.categories[name] = await self.pool.fetchval(
                "INSERT INTO categories (name) VALUES ($1) RETURNING id", name)
        return self.categories[name]

    async def image(self, name: str, owner: User | None = None, *, host: str | None = None,
                    jumpstart: bool = False, private: bool = False, categories: tuple[str, ...] = ()) -> int:
        host = host or (name.split("/")[0] if "." in name.split("/")[0] else HUB)
        registry_id = await self.registry(host)
        cats = [await self.category(c) for c in categories]
        async with self.pool.acquire() as conn, conn.transaction():
            image_id: int = await conn.fetchval(
                "INSERT INTO images (name, owner_id, registry_id, repository, jumpstart, is_private_image)"
                " VALUES ($1, $2, $3, $1, $4, $5) RETURNING id",
                name, owner.account.id if owner else None, registry_id, jumpstart, private)
            if cats:
                await conn.executemany("INSERT INTO image_categories VALUES ($1, $2)",
                                       [(image_id, c) for c in cats])
        return image_id


IMAGES_SQL = """
SELECT i.name, i.owner_id, i.jumpstart, i.is_private_image, r.host,
       ARRAY(SELECT c.name FROM image_categories AS ic JOIN categories AS c ON c.id = ic.category_id
              WHERE ic.image_id = i.id) AS categories
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id
"""


def c_order(names: Any) -> list[str]:
    return sorted(names, key=lambda n: n.encode())


async def expected(pool: asyncpg.Pool, account_id: int, f: ImageFilter) -> list[str]:
    """The names `account_id` sees under `f`, by the rule in SPEC §1, from the raw rows."""
    rows = await pool.fetch(IMAGES_SQL)
    own = {r["name"] for r in rows if r["owner_id"] == account_id}
    out = []
    for r in rows:
        mine = r["owner_id"] == account_id
        if not (mine or (r["owner_id"] is None and r["name"] not in own)):
            continue
        if ((f.name is None or r["name"] == f.name)
                and (f.jumpstart is None or r["jumpstart"] == f.jumpstart)
                and (f.is_private is None or r["is_private_image"] == f.is_private)
                and (f.is_user is None or mine == f.is_user)
                and (f.registry is None or r["host"] == f.registry)
                and (f.category is None or f.category in r["categories"])):
            out.append(r["name"])
    return c_order(out)
