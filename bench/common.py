"""What every benchmark needs: the local Postgres server and fresh databases on it."""

from __future__ import annotations

import os

import asyncpg

from core.db import apply_schema

HOST = "127.0.0.1"


def with_db(dsn: str, dbname: str) -> str:
    """`dsn` pointed at database `dbname` (query string kept)."""
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{dbname}" + (f"?{query}" if query else "")


def server_dsn() -> str:
    """The server of DATABASE_URL, else the machine's Postgres on 127.0.0.1:5432."""
    url = os.environ.get("DATABASE_URL", "")
    return with_db(url, "postgres") if url else f"postgresql://postgres@{HOST}:5432/postgres"


async def recreate_database(server: str, dbname: str, *, schema: bool = True, drop_only: bool = False) -> str:
    """Drop `dbname` and (unless `drop_only`) create it again, with schema.sql applied when
    `schema`; returns its DSN."""
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        if not drop_only:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
    dsn = with_db(server, dbname)
    if schema and not drop_only:
        conn = await asyncpg.connect(dsn)
        try:
            await apply_schema(conn)
        finally:
            await conn.close()
    return dsn
