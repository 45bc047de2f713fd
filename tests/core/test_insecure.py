"""INSECURE_REGISTRIES_FILE (core/insecure.py): read again when it changes, by every process;
beat brings the registries in line and makes their images due (core/registries.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import asyncpg
import pytest

from core.insecure import InsecureRegistries, add_host, read_hosts
from core.registries import InsecureWatch
from core.settings import Settings
from tests.conftest import create_database, insert_image, unique
from tests.support.services import worker_index


def test_the_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "insecure_registries"
    current = InsecureRegistries(["LocalHost:5000"], str(path))
    assert current.hosts() == {"localhost:5000"}  # no file yet
    assert add_host(path, " 127.0.0.1:5001 ") == ("127.0.0.1:5001", True)
    first = current.hosts()
    assert first == {"localhost:5000", "127.0.0.1:5001"}
    assert current.hosts() is first, "unchanged: the same set, not read again"
    assert add_host(path, "127.0.0.1:5001") == ("127.0.0.1:5001", False)
    assert add_host(path, "[::1]:5002") == ("[::1]:5002", True)
    assert current.hosts() == {"localhost:5000", "127.0.0.1:5001", "[::1]:5002"}
    assert read_hosts(path) == {"127.0.0.1:5001", "[::1]:5002"}
    for bad in ("http://x:5000", "a b", "host:99999"):
        with pytest.raises(ValueError, match="registry host"):
            add_host(path, bad)
    path.unlink()
    assert current.hosts() == {"localhost:5000"}


async def test_beat_brings_registries_in_line_when_the_file_changes(
    settings: Settings, postgres_dsn: str, tmp_path: Path,
) -> None:
    # a database of its own: the watch rewrites every registry of the database it is given
    dsn = await create_database(postgres_dsn, f"rs_insecure_{worker_index()}")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await _watch(settings, pool, tmp_path / "insecure_registries")
    finally:
        await pool.close()


async def _watch(settings: Settings, pool: asyncpg.Pool, path: Path) -> None:
    s = dataclasses.replace(settings, insecure_registries_file=str(path))
    host = f"{unique('reg')}.test:5000"
    iid = await insert_image(pool, name=f"{host}/team/app", settings=s,
                             next_sync_at=await pool.fetchval("SELECT now() + interval '1 hour'"))
    watch = InsecureWatch(s)
    assert (host, False) not in await watch(pool)
    assert await watch(pool) == [], "nothing changed: nothing done"
    add_host(path, host)
    assert (host, False) in await watch(pool)
    assert await pool.fetchval("SELECT is_ssl FROM registries WHERE host = $1", host) is False
    assert await pool.fetchval("SELECT next_sync_at <= now() FROM images WHERE id = $1", iid), "due at once"
