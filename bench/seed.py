"""A catalog at scale for the read benchmarks: 1,000,000 images and ~6,500,000 tags by default,
in minutes, generated inside Postgres (generate_series), secondary indexes built after the load.

The mix (image g = 1..N):
- 70% shared catalog (80% on Docker Hub, some official `appN`, the rest on quay.io, ghcr.io,
  gcr.io, registry.example.com:5000), 1% of it jumpstarts, 0-2 of 12 categories each;
- 29% owned by `--accounts` other accounts (a third on Hub, the rest on two private hosts);
- 1% owned by the bench account, a fifth of those shadowing a catalog image of the same name;
- 3-10 tags per image (6.5 on average; ~90% Success), half of them with one of 20,000
  layers; the bench account's first image has `big_tags` tags (the tag-list benchmark).

Triggers are off during the bulk load (session_replication_role = replica): each image's
state comes from the schema's own `refresh_image_state()`, the lists' entries and counts from
`list_entries_refresh()` (with the counting trigger on), so nothing here restates a rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from core.db import apply_schema

CATEGORIES = ["Databases", "Web servers", "Languages", "Operating systems", "Message queues", "Caches",
              "Monitoring", "CI/CD", "Security", "Storage", "Networking", "Machine learning"]
REGISTRIES = ["registry.hub.docker.com", "quay.io", "ghcr.io", "gcr.io", "registry.example.com:5000",
              "registry.gitlab.com"]
TAG_POOL = ["latest", "stable", "edge", "alpine", "slim", "bookworm", "bullseye", "jammy", "1", "1.0",
            "1.0.1", "1.1", "1.2.3", "2", "2.0", "2.1.0", "3.9", "3.11", "3.12", "v4.0.0-rc1", "lts",
            "nightly", "dev", "main", "20240101", "windowsservercore"]
CHUNK = 100_000
BIG_IMAGE = 99  # the bench account's first image: g % 100 == 99

IMAGES_SQL = """
INSERT INTO images (id, name, owner_id, registry_id, repository, description, star_count, jumpstart,
                    is_private_image, public_url, next_sync_at)
SELECT b.g, CASE WHEN b.reg = 1 THEN b.repo ELSE r.host || '/' || b.repo END, b.owner, b.reg,
       CASE WHEN b.reg = 1 AND b.repo NOT LIKE '%/%' THEN 'library/' || b.repo ELSE b.repo END,
       'image ' || b.repo || ': a container image to benchmark the read path of the API',
       (b.g * 37) % 5000, b.owner IS NULL AND b.g % 100 = 0, b.reg <> 1 OR (b.owner IS NOT NULL AND b.g % 3 = 0),
       CASE WHEN b.reg = 1 THEN 'https://hub.docker.com/r/' || b.repo || '/' ELSE '' END, now() + interval '1 day'
  FROM (SELECT a.g, a.owner, a.reg,
               CASE WHEN a.reg = 1 AND a.ng % 50 = 0 THEN 'app' || a.ng
                    ELSE 'ns' || (a.ng % 9973) || '/app-' || a.ng END AS repo
          FROM (SELECT g, ng, owner,
                       CASE WHEN catalog_style THEN (CASE WHEN ng % 10 < 8 THEN 1 ELSE 2 + ng % 4 END)
                            WHEN g % 3 = 0 THEN 1 ELSE 5 + g % 2 END AS reg
                  FROM (SELECT g,
                               CASE WHEN g % 500 = 199 THEN g - 99 ELSE g END AS ng,  -- shadows catalog image g-99
                               CASE WHEN g % 100 < 70 THEN NULL WHEN g % 100 = 99 THEN $2::bigint
                                    ELSE 2 + (g * 7919) % $3 END AS owner,
                               g % 100 < 70 OR g % 500 = 199 AS catalog_style
                          FROM generate_series(1, $1::bigint) AS g) AS z) AS a) AS b
  JOIN registries AS r ON r.id = b.reg
"""

CATEGORIES_SQL = """
INSERT INTO image_categories (image_id, category_id)
SELECT DISTINCT id, c FROM images,
       LATERAL (SELECT 1 + id % 12 WHERE id % 4 <> 0 UNION ALL SELECT 1 + (id / 12) % 12 WHERE id % 3 = 0) AS x (c)
 WHERE owner_id IS NULL
"""

LAYERS_SQL = """
INSERT INTO layers (config_digest, author, created, entrypoint, run_command, envvars, labels, ports, volumes)
SELECT 'sha256:' || md5('l' || i) || md5('m' || i), 'maintainer' || i % 100 || '@example.com',
       now() - make_interval(days => i % 900), '/docker-entrypoint.sh', '/usr/bin/app --serve',
       jsonb_build_array(jsonb_build_object('key', 'PATH', 'value', '/usr/local/bin:/usr/bin')),
       '[]', '[{"port": 8080, "protocol": "tcp"}]', '[{"container_path": "/data"}]'
  FROM generate_series(0, 19999) AS i
"""

TAGS_SQL = """
INSERT INTO tags (image_id, name, state, buildable, config_digest, build_date)
SELECT i.id, CASE WHEN k <= 26 THEN ($3::text[])[k] ELSE 'v' || k END,
       CASE WHEN (i.id + k) % 100 < 90 THEN 'Success' WHEN (i.id + k) % 100 < 95 THEN 'Failed'
            WHEN (i.id + k) % 100 < 98 THEN 'Building' ELSE 'Empty' END,
       (i.id + k) % 3 = 0,
       CASE WHEN (i.id + k) % 2 = 0
            THEN 'sha256:' || md5('l' || (i.id * 31 + k) % 20000) || md5('m' || (i.id * 31 + k) % 20000) END,
       CASE WHEN (i.id + k) % 100 < 90 THEN now() - make_interval(hours => ((i.id + k) % 20000)::int) END
  FROM images AS i
 CROSS JOIN LATERAL generate_series(1, CASE WHEN i.id = $4 THEN $5 ELSE 3 + i.id % 8 END) AS k
 WHERE i.id BETWEEN $1 AND $2
"""

SECONDARY_INDEXES_SQL = """
SELECT c.relname AS tab, x.relname AS name, pg_get_indexdef(i.indexrelid) AS def
  FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid JOIN pg_class AS x ON x.oid = i.indexrelid
 WHERE c.relname = ANY ($1::text[]) AND NOT i.indisunique AND c.relnamespace = 'public'::regnamespace
"""


@dataclass(frozen=True)
class Seeded:
    images: int
    tags: int
    seconds: float
    big_image: str  # name of the image with `big_tags` tags


async def _drop_indexes(conn: asyncpg.Connection, tables: list[str]) -> list[str]:
    rows = await conn.fetch(SECONDARY_INDEXES_SQL, tables)
    for r in rows:
        await conn.execute(f'DROP INDEX "{r["name"]}"')
    return [r["def"] for r in rows]


async def _chunks(conn: asyncpg.Connection, sql: str, n: int, *args: object) -> None:
    for start in range(1, n + 1, CHUNK):
        await conn.execute(sql, start, min(start + CHUNK - 1, n), *args)


async def seed(dsn: str, *, images: int, accounts: int, bench_account: int, big_tags: int = 10_000,
               log: bool = True) -> Seeded:
    started = time.monotonic()

    def say(what: str) -> None:
        if log:
            print(f"  seed: {what} ({time.monotonic() - started:.0f} s)", flush=True)

    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        await conn.execute("SET session_replication_role = replica; SET maintenance_work_mem = '256MB'")
        await conn.executemany("INSERT INTO registries (id, host, name) VALUES ($1, $2, $2)",
                               list(enumerate(REGISTRIES, 1)))
        await conn.executemany("INSERT INTO categories (id, name) VALUES ($1, $2)", list(enumerate(CATEGORIES, 1)))
        await conn.execute("INSERT INTO accounts (id, username) SELECT g, 'user' || g FROM generate_series(2, $1) AS g",
                           accounts + 1)
        dropped = await _drop_indexes(conn, ["images", "tags", "image_categories"])
        await conn.execute(IMAGES_SQL, images, bench_account, accounts)
        await conn.execute(CATEGORIES_SQL)
        await conn.execute(LAYERS_SQL)
        say(f"{images} images")
        await _chunks(conn, TAGS_SQL, images, TAG_POOL, BIG_IMAGE, big_tags)
        say("tags")
        for definition in dropped:
            await conn.execute(definition)
        await conn.execute("ANALYZE images, tags, image_categories")
        say("indexes")
        await _chunks(conn, "SELECT refresh_image_state(ARRAY(SELECT id FROM images WHERE id BETWEEN $1 AND $2))",
                      images)
        say("image states")
        # the lists: buckets of ~1,000 names first, then every image's entries (counted by trigger)
        await conn.execute("SET session_replication_role = origin")
        await conn.execute("""
            INSERT INTO list_buckets (lower)
            SELECT name FROM (SELECT name, row_number() OVER (ORDER BY name) AS rn
                                FROM (SELECT DISTINCT name COLLATE "C" AS name FROM images) AS d) AS x
             WHERE (rn - 1) % 1000 = 0 AND rn > 1""")
        dropped = await _drop_indexes(conn, ["list_entries"])
        await _chunks(conn, "SELECT list_entries_refresh(ARRAY(SELECT name FROM images WHERE id BETWEEN $1 AND $2))",
                      images)
        for definition in dropped:
            await conn.execute(definition)
        say("list entries and counts")
        # the tag counts, as an upgraded database gets them: the backfill at the end of schema.sql
        await apply_schema(conn)
        for table in ("accounts", "registries", "categories", "images", "tags"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        # as autovacuum would leave it: statistics, and a visibility map for index-only scans
        await conn.execute("VACUUM ANALYZE")
        say("vacuum")
        n_tags = await conn.fetchval("SELECT count(*) FROM tags")
        big = await conn.fetchval("SELECT name FROM images WHERE id = $1", BIG_IMAGE)
    finally:
        await conn.close()
    return Seeded(images, n_tags, time.monotonic() - started, big)
