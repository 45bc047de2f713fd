"""`total_count` stays exact without counting rows per request (issue 14): after inserts,
deletes, ownership changes, category changes and catalog shadowing, for every filter and
combination, and the counts the triggers keep equal a recount from scratch (the upgrade
backfill); concurrent writers of one name cannot lose a shadow."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from api import pages
from api.app import create_app
from api.list_upkeep import split_buckets
from api.params import ImageFilter, Page
from core.db import SCHEMA_PATH
from core.settings import Settings
from tests.api.helpers import ok_json
from tests.api.lists import HUB, ListDb, expected
from tests.conftest import User

Q = "q.example.com"
MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "0004_list_counts.sql"
BOOLS = (None, True, False)


def _filters() -> list[ImageFilter]:
    return [
        ImageFilter(jumpstart=j, is_private=p, is_user=u, registry=r, category=c)
        for j, p, u, r, c in itertools.product(BOOLS, BOOLS, BOOLS, (None, HUB, Q), (None, "db", "web"))
    ]


async def _check_all(db: ListDb, *users: User) -> int:
    """Every filter combination, for every user: the rows and the total agree with the rule."""
    checked = 0
    for user in users:
        for f in _filters():
            want = await expected(db.pool, user.account.id, f)
            got = await pages.list_images(db.pool, user.account.id, f, Page(1000))
            assert [r["name"] for r in got.rows] == want, f
            assert got.total == len(want), f
            checked += 1
    return checked


async def test_total_count_is_exact_through_every_kind_of_change(list_db: ListDb) -> None:
    db = list_db
    a, b = await db.user("alice"), await db.user("bob")
    # the catalog: jumpstarts, private and public, two registries, categories
    await db.image("mysql", jumpstart=True, categories=("db",))
    await db.image("nginx", jumpstart=True, categories=("web",))
    await db.image("redis", categories=("db", "web"))
    await db.image(f"{Q}/team/tool", private=True, categories=("web",))
    await db.image(f"{Q}/team/base", private=True)
    await db.image("team/app")
    # own images: alice shadows two catalog names (one with categories), bob one
    await db.image("redis", a, private=True)
    await db.image(f"{Q}/team/tool", a, private=True, categories=("db",))
    await db.image("alice/own", a, categories=("web",))
    await db.image("nginx", b)
    await db.image(f"{Q}/bob/private", b, private=True)
    assert await _check_all(db, a, b) == 486

    # deletes: a catalog image alice shadows, and bob's shadowing image (un-hides nginx)
    await db.pool.execute("DELETE FROM images WHERE name = 'redis' AND owner_id IS NULL")
    await db.pool.execute("DELETE FROM images WHERE name = 'nginx' AND owner_id = $1", b.account.id)
    await _check_all(db, a, b)

    # ownership changes: alice's image goes to bob (who has a catalog twin to shadow), a catalog
    # image becomes alice's, and an own image becomes a catalog image that bob then shadows
    await db.image("team/mine", b)
    await db.pool.execute("UPDATE images SET owner_id = $1 WHERE name = $2 AND owner_id = $3",
                          b.account.id, f"{Q}/team/tool", a.account.id)
    await db.pool.execute("UPDATE images SET owner_id = $1 WHERE name = 'team/app' AND owner_id IS NULL",
                          a.account.id)
    await db.pool.execute("UPDATE images SET owner_id = NULL WHERE name = 'team/mine'")
    await db.image("team/mine", b, categories=("db",))
    await _check_all(db, a, b)

    # categories and catalog flags change under shadowing images
    db_id, web_id = db.categories["db"], db.categories["web"]
    await db.pool.execute("INSERT INTO image_categories SELECT id, $1 FROM images WHERE name = $2 AND owner_id IS NULL",
                          db_id, f"{Q}/team/tool")
    await db.pool.execute("DELETE FROM image_categories WHERE category_id = $1 AND image_id IN "
                          "(SELECT id FROM images WHERE name = 'mysql')", db_id)
    await db.pool.execute("UPDATE image_categories SET category_id = $1 WHERE category_id = $2 AND image_id IN "
                          "(SELECT id FROM images WHERE name = 'alice/own')", db_id, web_id)
    await db.pool.execute("UPDATE images SET jumpstart = NOT jumpstart, is_private_image = true WHERE name = 'nginx'")
    await db.pool.execute("DELETE FROM categories WHERE name = 'web'")
    await db.category("web")
    await _check_all(db, a, b)

    # an account goes away with its images
    await db.pool.execute("DELETE FROM accounts WHERE id = $1", b.account.id)
    await _check_all(db, a)

    # the same totals through the API, with the unknown registry and category too
    for query, f in (("", ImageFilter()), ("?jumpstart=true", ImageFilter(jumpstart=True)),
                     (f"?registry=/api/v1/registry/{Q}/&is_user_image=false", ImageFilter(registry=Q, is_user=False)),
                     ("?categories__name=db&is_private_image=1", ImageFilter(category="db", is_private=True)),
                     ("?registry=/api/v1/registry/nowhere.example/", ImageFilter(registry="nowhere.example")),
                     ("?categories__name=nothing", ImageFilter(category="nothing")),
                     ("?name=team/app&is_user_image=true", ImageFilter(name="team/app", is_user=True))):
        body = await ok_json(await db.client.get(f"/api/v1/image/{query}", headers=a.headers))
        want = await expected(db.pool, a.account.id, f)
        assert body["meta"]["total_count"] == len(want), query
        assert [o["name"] for o in body["objects"]] == want[:25], query


async def _entries_and_counts(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    entries = await pool.fetch("SELECT image_id, scope, category_id, name, registry_id, jumpstart, is_private,"
                               " (SELECT lower FROM list_buckets WHERE id = bucket) FROM list_entries ORDER BY 1, 2, 3")
    counts = await pool.fetch("SELECT c.scope, c.category_id, c.registry_id, b.lower, c.jumpstart, c.is_private, c.n"
                              " FROM list_counts AS c LEFT JOIN list_buckets AS b ON b.id = c.bucket"
                              " WHERE c.n <> 0 ORDER BY 1, 2, 3, 4, 5, 6")
    return list(entries), list(counts)


TAG_COUNTS_SQL = "SELECT image_id, n FROM tag_counts WHERE n <> 0 ORDER BY 1"
RECOUNT_TAGS_SQL = "SELECT image_id, count(*) AS n FROM tags GROUP BY 1 ORDER BY 1"


async def _world(db: ListDb) -> None:
    a, b = await db.user("alice"), await db.user("bob")
    for i in range(60):
        owner = (None, None, a, b)[i % 4]
        image_id = await db.image(f"team{i % 7}/app{i % 23}", owner, jumpstart=i % 5 == 0,
                                  private=i % 3 == 0, categories=(("db",), ("web",), ("db", "web"), ())[i % 4])
        await db.pool.execute("INSERT INTO tags (image_id, name) SELECT $1, 'v' || g FROM generate_series(1, $2) AS g",
                              image_id, i % 9)
    await db.pool.execute("DELETE FROM tags WHERE name = 'v3' OR (image_id % 5 = 0 AND name LIKE 'v%1')")
    await db.pool.execute("UPDATE tags SET image_id = image_id + 1 WHERE name = 'v8'"
                          " AND image_id + 1 IN (SELECT id FROM images) AND NOT EXISTS (SELECT 1 FROM tags AS o"
                          "  WHERE o.image_id = tags.image_id + 1 AND o.name = 'v8')")
    await db.pool.execute("DELETE FROM images WHERE id % 11 = 0")
    await db.pool.execute("UPDATE images SET owner_id = $1 WHERE id % 13 = 0", a.account.id)


async def test_maintained_counts_equal_a_recount_and_the_upgrade_backfill(list_db: ListDb) -> None:
    db = list_db
    await _world(db)
    await db.pool.execute("SELECT list_buckets_split(4)")
    maintained = await _entries_and_counts(db.pool)
    tag_counts = await db.pool.fetch(TAG_COUNTS_SQL)
    assert tag_counts == await db.pool.fetch(RECOUNT_TAGS_SQL) and len(tag_counts) > 20
    assert len(maintained[0]) > 60 and await db.pool.fetchval("SELECT count(*) FROM list_buckets") > 5

    # recount from scratch through the backfill at the end of schema.sql
    await db.pool.execute("TRUNCATE list_entries, list_counts")
    await db.pool.execute(SCHEMA_PATH.read_text())
    assert await _entries_and_counts(db.pool) == maintained

    # an upgrade from before the list tables: migration 0004, then schema.sql again
    await db.pool.execute("""
        DROP TABLE list_entries, list_counts, list_buckets, tag_counts CASCADE;
        DROP TRIGGER tags_counted_insert ON tags; DROP TRIGGER tags_counted_delete ON tags;
        DROP TRIGGER tags_counted_move ON tags;
        DROP INDEX tags_image_name_c_idx, registries_tutum_idx;
        DROP TRIGGER images_list_insert ON images; DROP TRIGGER images_list_update ON images;
        DROP TRIGGER images_list_delete ON images;
        DROP TRIGGER image_categories_list_insert ON image_categories;
        DROP TRIGGER image_categories_list_update ON image_categories;
        DROP TRIGGER image_categories_list_delete ON image_categories;
        DROP FUNCTION images_list_refresh, image_categories_list_refresh, list_entries_refresh,
                      list_buckets_split, list_entries_counted, tags_counted;
    """)
    await db.pool.execute(MIGRATION.read_text())
    await db.pool.execute(SCHEMA_PATH.read_text())
    entries, counts = await _entries_and_counts(db.pool)
    # the backfill buckets by 1,000 names: one bucket here, where the test split into many
    assert [e[:7] for e in entries] == [e[:7] for e in maintained[0]]
    assert [c for c in counts if c["lower"] is None] == [c for c in maintained[1] if c["lower"] is None]
    assert {c["lower"] for c in counts} == {None, ""}
    assert await db.pool.fetch(TAG_COUNTS_SQL) == tag_counts


async def test_concurrent_writers_of_one_name_take_turns(list_db: ListDb) -> None:
    """Alice registers `shared/app` while the catalog gets `shared/app` in another transaction:
    the second writer's trigger waits for the first one's commit and sees its row, so the
    catalog image is hidden from alice (without the name lock, neither trigger would see
    the other's uncommitted row and the shadow would be lost)."""
    db = list_db
    alice = await db.user("alice")
    hub = await db.registry(HUB)
    first = await db.pool.acquire()
    second = await db.pool.acquire()
    try:
        tx1 = first.transaction()
        await tx1.start()
        await first.execute("INSERT INTO images (name, owner_id, registry_id, repository)"
                            " VALUES ('shared/app', $1, $2, 'shared/app')", alice.account.id, hub)
        tx2 = second.transaction()
        await tx2.start()
        blocked = asyncio.create_task(second.execute(
            "INSERT INTO images (name, registry_id, repository) VALUES ('shared/app', $1, 'shared/app')", hub))
        for _ in range(200):
            waiting = await db.pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory'")
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, "the second writer waits for the name's lock"
        assert not blocked.done()
        await tx1.commit()
        await blocked
        await tx2.commit()
    finally:
        await db.pool.release(first)
        await db.pool.release(second)
    names = await pages.list_images(db.pool, alice.account.id, ImageFilter(), Page(25))
    assert [(r["name"], r["owner_id"]) for r in names.rows] == [("shared/app", alice.account.id)]
    assert names.total == 1
    assert await expected(db.pool, alice.account.id, ImageFilter()) == ["shared/app"]


async def test_api_processes_split_growing_buckets(list_db: ListDb, settings: Settings) -> None:
    db = list_db
    for i in range(30):
        await db.image(f"team/app{i:02d}")
    assert await db.pool.fetchval("SELECT count(*) FROM list_buckets") == 1
    app = create_app(dataclasses.replace(settings, database_url=db.dsn, list_bucket_size=4, list_upkeep_seconds=0.05))
    async with TestClient(TestServer(app)):
        for _ in range(200):
            if await db.pool.fetchval("SELECT count(*) FROM list_buckets") > 1:
                break
            await asyncio.sleep(0.05)
    lowers = [r[0] for r in await db.pool.fetch("SELECT lower FROM list_buckets ORDER BY lower")]
    assert lowers == ["", *(f"team/app{i:02d}" for i in range(4, 30, 4))]
    sizes = await db.pool.fetch("SELECT bucket, sum(n) FROM list_counts WHERE bucket > 0 AND category_id = 0"
                                " AND registry_id = 0 GROUP BY bucket HAVING sum(n) > 0")
    assert sorted(s[1] for s in sizes) == [2, 4, 4, 4, 4, 4, 4, 4]
    # a split while a writer holds the boundaries gives up at once and says so
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared(7305014, 0)")
        assert await split_buckets(db.pool, 1, lock_timeout=0.1) == 0
    assert await split_buckets(db.pool, 1) > 0
