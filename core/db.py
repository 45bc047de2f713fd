"""Postgres access shared by the API and the worker: pools and the schema."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from core.migrations import MIGRATE_LOCK, SCHEMA_PATH, MigrateResult, migrate_sync


async def _init_connection(conn: asyncpg.Connection) -> None:
    for codec in ("json", "jsonb"):
        await conn.set_type_codec(
            codec, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(_: asyncpg.Connection) -> None:
    """No reset on release: saves a round trip per query (the default resets every release)."""


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, stateless: bool = False, **kw: Any
) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb with orjson.

    `stateless=True` skips asyncpg's reset query when a connection goes back to the pool. Only
    for callers that never leave session state behind (no SET, LISTEN, session advisory locks,
    open cursors): the API's pool. It halves the round trips of a detail GET.
    """
    if stateless:
        kw["reset"] = _keep_session
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kw
    )
    assert pool is not None
    return pool


async def apply_schema(conn: asyncpg.Connection) -> None:
    """Apply schema.sql alone, recording no migration: the tests' databases (fast), never a
    deployment's (`migrate` below). Safe on a database that already has it."""
    sql = SCHEMA_PATH.read_text()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        # NOTICEs like "relation already exists, skipping" are expected on every re-run
        await conn.execute("SET LOCAL client_min_messages = warning")
        await conn.execute(sql)


async def migrate(dsn: str, progress: Callable[[str], None] | None = None) -> MigrateResult:
    """`registry-sync migrate` (core/migrations.py), in a thread: yoyo's driver blocks."""
    return await asyncio.to_thread(migrate_sync, dsn, progress=progress)
