"""Upgrades: release 1's schema + `registry-sync migrate` gives exactly schema.sql (SPEC §7).

Every file in migrations/ takes part: a branch that adds a column to schema.sql and forgets its
migration (or writes one that differs) fails here. The comparison is a catalog query: tables,
columns (type, default, nullability), constraints and indexes with their definitions,
functions with their bodies, triggers, sequences and types.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core.db import apply_schema
from core.migrations import BASELINE, MIGRATIONS_DIR, YOYO_TABLES, MigrationError, migrate_sync, migration_files
from tests.conftest import _created, _with_db, unique
from tests.support.services import run_tag

ROOT = Path(__file__).resolve().parents[2]

CATALOG_SQL: dict[str, str] = {
    "tables": """
        SELECT c.relname, c.relkind::text FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, character_maximum_length,
               numeric_precision, column_default, is_nullable, collation_name, is_identity,
               is_generated, generation_expression
          FROM information_schema.columns WHERE table_schema = 'public'""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid), condeferrable
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
          FROM pg_proc AS p WHERE p.pronamespace = 'public'::regnamespace""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled::text
          FROM pg_trigger WHERE NOT tgisinternal""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, max_value, cycle
          FROM pg_sequences WHERE schemaname = 'public'""",
    "types": """
        SELECT t.typname, t.typtype::text,
               ARRAY(SELECT e.enumlabel::text FROM pg_enum AS e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
          FROM pg_type AS t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd')""",
}
_YOYO = re.compile(r"\b(" + "|".join(YOYO_TABLES) + r")(_[a-z]+)?\b")


async def catalog(dsn: str) -> dict[str, set[tuple[Any, ...]]]:
    """The schema of `dsn` as sets of rows (column order inside a table does not matter:
    ALTER TABLE adds at the end), without yoyo's bookkeeping tables."""
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for part, sql in CATALOG_SQL.items():
            rows = {tuple(r) for r in await conn.fetch(sql)}
            out[part] = {r for r in rows if not any(isinstance(v, str) and _YOYO.search(v) for v in r[:2])}
        return out
    finally:
        await conn.close()


def assert_same_schema(got: dict[str, set[tuple[Any, ...]]], want: dict[str, set[tuple[Any, ...]]]) -> None:
    problems = []
    for part in CATALOG_SQL:
        for row in sorted(want[part] - got[part], key=repr):
            problems.append(f"{part}: missing after migrate: {row}")
        for row in sorted(got[part] - want[part], key=repr):
            problems.append(f"{part}: only after migrate: {row}")
    assert not problems, "migrating release 1 does not give schema.sql:\n" + "\n".join(problems)


NewDb = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_db(postgres_dsn: str) -> AsyncIterator[NewDb]:
    """A factory of empty databases (dropped at the end of the session)."""

    async def make(prefix: str = "rs_mig") -> str:
        name = f"{unique(prefix)}_{run_tag()}"
        _created.add(name)
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return _with_db(postgres_dsn, name)

    yield make


async def build_release1(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(next(p for p in migration_files() if p.name.startswith(BASELINE + "_")).read_text())
    finally:
        await conn.close()


async def applied(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")]
    finally:
        await conn.close()


def run_migrate(dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )


async def test_release1_migrated_equals_a_fresh_schema(new_db: NewDb) -> None:
    old, fresh = await new_db(), await new_db()
    await build_release1(old)
    conn = await asyncpg.connect(fresh)
    try:
        await apply_schema(conn)  # what the tests and a fresh install start from
    finally:
        await conn.close()

    done = await asyncio.to_thread(run_migrate, old)
    assert done.returncode == 0, done.stderr
    assert "release-1 database" in done.stdout

    assert_same_schema(await catalog(old), await catalog(fresh))
    assert await applied(old) == [p.stem for p in migration_files()]


async def test_a_fresh_database_gets_schema_sql_and_every_migration_recorded(new_db: NewDb) -> None:
    fresh, reference = await new_db(), await new_db()
    result = await asyncio.to_thread(migrate_sync, fresh)
    assert result.created and result.applied == ()
    assert await applied(fresh) == [p.stem for p in migration_files()]
    conn = await asyncpg.connect(reference)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    assert_same_schema(await catalog(fresh), await catalog(reference))


async def test_migrate_twice_changes_nothing(new_db: NewDb) -> None:
    dsn = await new_db()
    await build_release1(dsn)
    first = await asyncio.to_thread(migrate_sync, dsn)
    before = await catalog(dsn)
    second = await asyncio.to_thread(migrate_sync, dsn)
    assert first.recorded == (next(p.stem for p in migration_files()),)
    assert second.applied == () and second.recorded == () and not second.created
    assert await catalog(dsn) == before
    assert await applied(dsn) == [p.stem for p in migration_files()]


@pytest.mark.parametrize("start", ["empty", "release1"])
async def test_racing_migrations_apply_each_file_once(new_db: NewDb, start: str) -> None:
    dsn, reference = await new_db(), await new_db()
    if start == "release1":
        await build_release1(dsn)
    conn = await asyncpg.connect(reference)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate_sync(dsn), range(4)))

    assert sum(r.created for r in results) == (1 if start == "empty" else 0)
    ran = [m for r in results for m in r.applied]
    assert len(ran) == len(set(ran)), f"a file ran twice: {ran}"
    assert await applied(dsn) == [p.stem for p in migration_files()]
    assert_same_schema(await catalog(dsn), await catalog(reference))


async def test_a_failing_migration_leaves_nothing_half_done(new_db: NewDb, tmp_path: Path) -> None:
    dsn = await new_db()
    await build_release1(dsn)
    for p in migration_files():
        (tmp_path / p.name).write_text(p.read_text())
    (tmp_path / "9998_fine.sql").write_text("ALTER TABLE accounts ADD COLUMN IF NOT EXISTS note text;\n")
    (tmp_path / "9999_broken.sql").write_text(
        "ALTER TABLE accounts ADD COLUMN half_done text;\nALTER TABLE no_such_table ADD COLUMN x int;\n"
    )
    with pytest.raises(MigrationError, match="9999_broken"):
        await asyncio.to_thread(migrate_sync, dsn, directory=tmp_path)
    conn = await asyncpg.connect(dsn)
    try:
        columns = {r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'")}
    finally:
        await conn.close()
    assert "note" in columns and "half_done" not in columns
    assert "9999_broken" not in await applied(dsn) and "9998_fine" in await applied(dsn)


def test_migration_files_follow_the_rules() -> None:
    files = migration_files()
    assert files[0].name.startswith(BASELINE + "_")
    for path in files[1:]:
        sql = re.sub(r"--[^\n]*", "", path.read_text()).upper()
        assert "CREATE FUNCTION" not in sql and "CREATE OR REPLACE FUNCTION" not in sql, (
            f"{path.name}: functions live in schema.sql only (re-applied by migrate)")
        assert "CREATE TRIGGER" not in sql and "CREATE OR REPLACE TRIGGER" not in sql, (
            f"{path.name}: triggers live in schema.sql only (re-applied by migrate)")
    assert MIGRATIONS_DIR == ROOT / "migrations"


def test_misnamed_or_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0002_a.sql").write_text("SELECT 1;")
    (tmp_path / "0002_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="same number"):
        migration_files(tmp_path)
    (tmp_path / "0002_b.sql").unlink()
    (tmp_path / "3_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"3_x\.sql"):
        migration_files(tmp_path)


async def test_0009_leaves_no_head_claim_counting_and_no_squatter_reading(new_db: NewDb) -> None:
    """Data of the previous release through migrations/0009: every layer_sources row is
    unproven (a HEAD claim and a GET are indistinguishable there); on the service's own
    registry, an image an ordinary account registered in another's namespace loses its tags
    and its proof of access, while the namespace's own, an admin's and other registries' keep
    theirs."""
    dsn = await new_db()
    conn = await asyncpg.connect(dsn)
    try:
        await apply_schema(conn)
        await conn.execute("ALTER TABLE layer_sources DROP COLUMN proven_by_content")  # before 0009
        ids = {}
        for user, admin in (("alice", False), ("bob", False), ("root", True)):
            ids[user] = await conn.fetchval(
                "INSERT INTO accounts (username, is_admin) VALUES ($1, $2) RETURNING id", user, admin)
        own = await conn.fetchval(
            "INSERT INTO registries (host, name, is_tutum_registry) VALUES ('own:5000', 'own', true) RETURNING id")
        other = await conn.fetchval(
            "INSERT INTO registries (host, name) VALUES ('other:5000', 'other') RETURNING id")
        images = {}
        for key, owner, registry, repository in [
            ("squatted", "bob", own, "alice/app"), ("hers", "alice", own, "alice/app"),
            ("admins", "root", own, "alice/app"), ("elsewhere", "bob", other, "alice/app"),
        ]:
            images[key] = await conn.fetchval(
                "INSERT INTO images (name, owner_id, registry_id, repository, access_proven)"
                " VALUES ($1, $2, $3, $4, true) RETURNING id",
                f"{'own:5000' if registry == own else 'other:5000'}/{repository}", ids[owner], registry, repository)
            await conn.execute("INSERT INTO tags (image_id, name, state) VALUES ($1, 'v1', 'Success')", images[key])
        await conn.execute("INSERT INTO layers (config_digest) VALUES ('sha256:' || repeat('a', 64))")
        await conn.execute("INSERT INTO layer_sources (registry_id, repository, config_digest)"
                           " VALUES ($1, 'alice/app', 'sha256:' || repeat('a', 64))", other)

        sql = next(p for p in migration_files() if p.name.startswith("0009_")).read_text()
        for _ in range(2):  # a crash between commit and record re-runs the file
            async with conn.transaction():
                await conn.execute(sql)

        assert await conn.fetchval("SELECT bool_or(proven_by_content) FROM layer_sources") is False
        rows = {r["id"]: r for r in await conn.fetch(
            "SELECT i.id, i.access_proven, (SELECT count(*) FROM tags AS t WHERE t.image_id = i.id) AS tags"
            " FROM images AS i")}
        assert (rows[images["squatted"]]["access_proven"], rows[images["squatted"]]["tags"]) == (False, 0)
        for key in ("hers", "admins", "elsewhere"):
            assert (rows[images[key]]["access_proven"], rows[images[key]]["tags"]) == (True, 1), key
    finally:
        await conn.close()
