"""Walking lists (issue 14): following `next` while rows are inserted and deleted never
repeats or skips a row that existed throughout; a page fetched by `offset` equals the page
reached by following `next` (also where an offset lands in a small name bucket); previous
links lead back; tag and registry lists walk the same way."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from api.params import ImageFilter
from tests.api.helpers import ok_json
from tests.api.lists import HUB, ListDb, c_order, expected
from tests.conftest import User

Q = "q.example.com"


async def _walk(db: ListDb, user: User, url: str, key: str = "name",
                between: Callable[[], Awaitable[None]] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Follow `next` from `url`, calling `between` after each page; (keys seen, each meta)."""
    seen: list[str] = []
    metas = []
    next_url: str | None = url
    while next_url is not None:
        assert next_url.startswith("/api/v1/"), next_url
        body = await ok_json(await db.client.get(next_url, headers=user.headers))
        seen.extend(o[key] for o in body["objects"])
        metas.append(body["meta"])
        next_url = body["meta"]["next"]
        assert len(metas) < 1000, "next never ends"
        if between is not None:
            await between()
    return seen, metas


async def _seed(db: ListDb, alice: User, n: int) -> None:
    for i in range(n):
        owner = alice if i % 5 == 0 else None
        await db.image(f"team{i % 9}/app-{i:04d}" if i % 4 else f"{Q}/team{i % 9}/app-{i:04d}", owner,
                       jumpstart=i % 6 == 0, private=i % 4 == 0, categories=("db",) if i % 3 == 0 else ())
    # alice shadows some catalog names
    for i in (i for i in range(1, n, 17) if i % 5):
        await db.image(f"team{i % 9}/app-{i:04d}" if i % 4 else f"{Q}/team{i % 9}/app-{i:04d}", alice)


class Churn:
    """Inserts a new image (some alice's) and deletes a seeded one at each step."""

    def __init__(self, db: ListDb, alice: User, seed: int) -> None:
        self.db, self.alice, self.rng = db, alice, random.Random(seed)
        self.inserted: list[str] = []
        self.deleted: set[str] = set()

    async def step(self) -> None:
        n = len(self.inserted) + 1
        name = f"team{self.rng.randrange(9)}/new-{self.rng.randrange(10**9)}"
        await self.db.image(name, self.alice if n % 3 == 0 else None, categories=("db",) if n % 2 else ())
        self.inserted.append(name)
        victim = await self.db.pool.fetchval(
            "SELECT name FROM images WHERE name LIKE 'team%/app-%' ORDER BY random() LIMIT 1")
        if victim is not None:
            self.deleted.add(victim)
            await self.db.pool.execute("DELETE FROM images WHERE name = $1", victim)


async def test_following_next_under_concurrent_inserts_and_deletes(list_db: ListDb) -> None:
    db = list_db
    alice = await db.user("alice")
    await _seed(db, alice, 240)
    queries = {
        "": ImageFilter(),
        "?categories__name=db": ImageFilter(category="db"),
        f"?registry={quote(f'/api/v1/registry/{Q}/', safe='')}": ImageFilter(registry=Q),
        "?is_user_image=false&is_private_image=false": ImageFilter(is_user=False, is_private=False),
    }
    for query, f in queries.items():
        before = set(await expected(db.pool, alice.account.id, f))
        churn = Churn(db, alice, len(query))
        sep = "&" if query else "?"
        # between every two pages an image is inserted and another deleted, and a writer keeps
        # writing while each page is read
        stop = asyncio.Event()

        async def writer(churn: Churn = churn, stop: asyncio.Event = stop) -> None:
            while not stop.is_set():
                await churn.step()

        background = asyncio.create_task(writer())
        try:
            seen, metas = await _walk(db, alice, f"/api/v1/image/{query}{sep}limit=5", between=churn.step)
        finally:
            stop.set()
            await background
        deleted = churn.deleted
        assert len(seen) == len(set(seen)), f"{query}: a row came twice"
        assert seen == c_order(seen), f"{query}: out of order"
        throughout = before - deleted
        missing = throughout - set(seen)
        assert not missing, f"{query}: rows that existed throughout were skipped: {sorted(missing)[:5]}"
        assert len(metas) >= len(throughout) // 5
        # every link kept the filters, the limit and a growing offset
        for i, meta in enumerate(metas[:-1]):
            link = dict(parse_qsl(urlsplit(meta["next"]).query))
            assert link["limit"] == "5" and link["offset"] == str(5 * (i + 1)) and "after" in link
            for k, v in parse_qsl(query.lstrip("?")):
                assert link[k] == v


async def test_offset_pages_equal_cursor_pages(list_db: ListDb) -> None:
    db = list_db
    alice = await db.user("alice")
    await _seed(db, alice, 150)
    await db.pool.execute("SELECT list_buckets_split(3)")  # many small buckets: offsets land mid-bucket
    assert await db.pool.fetchval("SELECT count(*) FROM list_buckets") > 20
    for query in ("", "?categories__name=db", f"?registry=/api/v1/registry/{Q}/", "?is_user_image=true",
                  "?is_user_image=false&jumpstart=false", f"?registry=/api/v1/registry/{HUB}/&is_private_image=0"):
        sep = "&" if query else "?"
        seen, metas = await _walk(db, alice, f"/api/v1/image/{query}{sep}limit=4")
        total = metas[0]["total_count"]
        assert len(seen) == total and total > 0
        for offset in range(0, total + 4, 4):
            body = await ok_json(await db.client.get(f"/api/v1/image/{query}{sep}limit=4&offset={offset}",
                                                     headers=alice.headers))
            assert [o["name"] for o in body["objects"]] == seen[offset:offset + 4], (query, offset)
            assert body["meta"]["total_count"] == total
        # odd offsets too (not page-aligned)
        for offset in (1, 5, total // 2 + 1, max(total - 3, 0)):
            body = await ok_json(await db.client.get(f"/api/v1/image/{query}{sep}limit=4&offset={offset}",
                                                     headers=alice.headers))
            assert [o["name"] for o in body["objects"]] == seen[offset:offset + 4], (query, offset)


async def test_previous_links_walk_back(list_db: ListDb) -> None:
    db = list_db
    alice = await db.user("alice")
    await _seed(db, alice, 60)
    forward, metas = await _walk(db, alice, "/api/v1/image/?limit=5")
    assert metas[0]["previous"] is None
    # from the last page, follow previous to the first
    last = await ok_json(await db.client.get(metas[-2]["next"], headers=alice.headers))
    back = [o["name"] for o in last["objects"]]
    url = last["meta"]["previous"]
    while url is not None:
        body = await ok_json(await db.client.get(url, headers=alice.headers))
        back = [o["name"] for o in body["objects"]] + back
        url = body["meta"]["previous"]
    assert back == forward


async def test_tag_and_registry_lists_walk_by_cursor(list_db: ListDb) -> None:
    db = list_db
    alice = await db.user("alice")
    image_id = await db.image("alice/big", alice)
    tags = [f"v{i}" for i in range(40)] + ["a-1", "a", "a.2", "Z", "latest"]
    await db.pool.executemany("INSERT INTO tags (image_id, name) VALUES ($1, $2)", [(image_id, t) for t in tags])
    seen, metas = await _walk(db, alice, "/api/v1/image/alice/big/tag/?limit=6")
    assert seen == c_order(tags) and metas[0]["total_count"] == len(tags)
    assert all("after" in dict(parse_qsl(urlsplit(m["next"]).query)) for m in metas[:-1])
    for offset in (0, 6, 13, 44):
        body = await ok_json(await db.client.get(f"/api/v1/image/alice/big/tag/?limit=6&offset={offset}",
                                                 headers=alice.headers))
        assert [t["name"] for t in body["objects"]] == seen[offset:offset + 6]

    for i in range(12):
        await db.image(f"reg{i:02d}.example.com/x/y", alice if i % 2 else None)
    await db.image("only-bob.example.com/x/y", await db.user("bob"))
    seen, metas = await _walk(db, alice, "/api/v1/registry/?limit=5", key="host")
    assert seen == c_order([f"reg{i:02d}.example.com" for i in range(12)] + [HUB])
    assert metas[0]["total_count"] == 13
