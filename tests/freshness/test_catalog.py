"""The jumpstart catalog (done-means 2): `registry-sync load-catalog` twice leaves one copy of
each jumpstart; the `jumpstart` and `categories__name` filters (URL-quoted spaces) find them.
Runs against a database of its own: the catalog is shared by every account."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.keys import POOL
from core.accounts import create_account
from core.catalog import DEFAULT_CATALOG, CatalogError, parse_catalog
from core.settings import Settings
from tests.conftest import create_database
from tests.support.services import worker_index

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def catalog_db(postgres_dsn: str) -> str:
    return await create_database(postgres_dsn, f"rs_catalog_{worker_index()}")


def load(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "load-catalog", *args], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": dsn, "LOG_LEVEL": "warning"}, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
async def catalog_client(settings: Settings, catalog_db: str) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    conn = await asyncpg.connect(catalog_db)
    try:
        account, key = await create_account(conn, "catalog-reader")
    finally:
        await conn.close()
    c = TestClient(TestServer(create_app(dataclasses.replace(settings, database_url=catalog_db))))
    await c.start_server()
    yield c, {"Authorization": f"ApiKey {account.username}:{key}"}
    await c.close()


async def _names(c: TestClient, headers: dict[str, str], query: str) -> list[str]:
    resp = await c.get(f"/api/v1/image/?limit=1000&{query}", headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["meta"]["total_count"] == len(body["objects"])
    return [o["name"] for o in body["objects"]]


async def test_loading_twice_keeps_one_copy_and_filters_find_them(
    catalog_db: str, catalog_client: tuple[TestClient, dict[str, str]]
) -> None:
    entries = parse_catalog(DEFAULT_CATALOG.read_bytes())
    first = await asyncio.to_thread(load, catalog_db)
    assert first.returncode == 0, first.stderr
    assert f"{len(entries)} new" in first.stdout
    second = await asyncio.to_thread(load, catalog_db)
    assert second.returncode == 0, second.stderr
    assert "0 new" in second.stdout

    conn = await asyncpg.connect(catalog_db)
    try:
        rows = await conn.fetch("SELECT name, count(*) AS n FROM images WHERE owner_id IS NULL GROUP BY name")
        assert {r["name"]: r["n"] for r in rows} == {e.name.name: 1 for e in entries}
        assert await conn.fetchval("SELECT count(*) FROM categories") == len({c for e in entries for c in e.categories})
        assert await conn.fetchval("SELECT count(*) FROM image_categories") == sum(len(e.categories) for e in entries)
        # loading contacts no registry: each image is synced when someone first reads it
        assert await conn.fetchval("SELECT count(*) FROM images WHERE next_sync_at = 'infinity'") == len(entries)
    finally:
        await conn.close()

    c, headers = catalog_client
    assert sorted(await _names(c, headers, "jumpstart=true")) == sorted(e.name.name for e in entries)
    assert await _names(c, headers, "jumpstart=false") == []
    for category in ("Web servers", "Message queues", "Databases"):
        expected = sorted(e.name.name for e in entries if category in e.categories)
        assert expected, category
        got = await _names(c, headers, f"categories__name={quote(category)}&jumpstart=True")
        assert sorted(got) == expected, category
    resp = await c.get("/api/v1/image/mysql/", headers=headers)
    mysql = await resp.json()
    assert mysql["jumpstart"] is True and mysql["is_private_image"] is False
    assert mysql["categories"] == [{"name": "Databases"}]
    assert mysql["public_url"] == "https://hub.docker.com/_/mysql/"
    assert mysql["icon_url"] and mysql["description"]


async def test_reloading_a_changed_file_updates_categories_and_retires_dropped_entries(
    catalog_db: str, tmp_path: Path
) -> None:
    doc = {"jumpstarts": [
        {"name": "tutum/edited-a", "description": "A", "categories": ["Web servers", "Old"]},
        {"name": "tutum/edited-b", "description": "B", "categories": ["Caches"]},
    ]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    assert (await asyncio.to_thread(load, catalog_db, str(path))).returncode == 0
    doc["jumpstarts"] = [{"name": "tutum/edited-a", "description": "A2", "categories": ["Web servers", "New one"]}]
    path.write_text(json.dumps(doc))
    out = await asyncio.to_thread(load, catalog_db, str(path))
    assert out.returncode == 0 and "0 new, 1 updated" in out.stdout, out.stdout
    conn = await asyncpg.connect(catalog_db)
    try:
        cats = await conn.fetch(
            "SELECT c.name FROM image_categories ic JOIN categories c ON c.id = ic.category_id"
            " JOIN images i ON i.id = ic.image_id WHERE i.name = 'tutum/edited-a' ORDER BY c.name")
        assert [r["name"] for r in cats] == ["New one", "Web servers"]
        assert await conn.fetchval("SELECT description FROM images WHERE name = 'tutum/edited-a'") == "A2"
        # dropped from the file: still in the catalog, no longer a jumpstart
        assert await conn.fetchval("SELECT jumpstart FROM images WHERE name = 'tutum/edited-b'") is False
    finally:
        await conn.close()
    # restore the real catalog for any later test of this module
    assert (await asyncio.to_thread(load, catalog_db)).returncode == 0


def test_a_bad_catalog_is_refused_with_a_reason(tmp_path: Path, catalog_db: str) -> None:
    for doc, words in [
        ({"jumpstarts": [{"name": "Bad Name"}]}, "jumpstarts[0].name"),
        ({"jumpstarts": [{"name": "a/b", "colour": "red"}]}, "unknown field"),
        ({"jumpstarts": [{"name": "a/b"}, {"name": "a/b"}]}, "listed twice"),
        ({"jumpstarts": [{"name": "a/b", "categories": "Databases"}]}, "categories"),
    ]:
        with pytest.raises(CatalogError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_catalog(json.dumps(doc).encode())
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    out = load(catalog_db, str(path))
    assert out.returncode == 1 and "not JSON" in out.stderr


async def test_a_catalog_image_is_first_synced_when_someone_reads_it(
    catalog_db: str, catalog_client: tuple[TestClient, dict[str, str]]
) -> None:
    from api.read_marks import READ_MARKS
    from worker.scheduler import claim_due

    assert (await asyncio.to_thread(load, catalog_db)).returncode == 0
    c, headers = catalog_client
    name = "tutum/wordpress"
    conn = await asyncpg.connect(catalog_db)
    try:
        await c.server.app[READ_MARKS].flush(c.server.app[POOL])  # the reads of the tests before
        await conn.execute("UPDATE images SET read_at = NULL, next_sync_at = 'infinity' WHERE owner_id IS NULL")
        _, claimed = await claim_due(conn, 10_000, 60)  # the scheduler finds nothing to poll
        assert claimed == []
        status = await (await c.get(f"/api/v1/image/{name}/sync/", headers=headers)).json()
        assert status["next_sync_at"] is None and status["last_synced_at"] is None
        assert await c.server.app[READ_MARKS].flush(c.server.app[POOL]) >= 1  # the read marks, as every 5 s
        due = await conn.fetch("SELECT name FROM images WHERE next_sync_at <= now()")
        assert [r["name"] for r in due] == [name]
        _, claimed = await claim_due(conn, 10_000, 60)
        assert claimed == [await conn.fetchval("SELECT id FROM images WHERE owner_id IS NULL AND name = $1", name)]
        await conn.execute("UPDATE images SET lease_owner = NULL, lease_until = NULL")
    finally:
        await conn.close()
