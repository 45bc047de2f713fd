"""A registry that serves plain HTTP, reached over TLS: the sync error says what to configure,
and `is_ssl` follows INSECURE_REGISTRIES."""

from __future__ import annotations

import dataclasses

import asyncpg

from core.registries import ensure_registry, refresh_registries
from core.settings import Settings
from tests.conftest import insert_image, unique
from tests.support.registry import RegistryServer, apush_image
from worker import sync
from worker.runtime import Runtime


async def test_tls_against_plain_http_names_insecure_registries(
    pool: asyncpg.Pool, settings: Settings, registry: RegistryServer,
) -> None:
    repo = f"{unique('tls')}/app"
    await apush_image(registry.url, repo, "v1", {"config": {"Cmd": ["sh"]}})
    image_id = await insert_image(pool, name=f"{registry.host}/{repo}", owner_id=None)
    strict = dataclasses.replace(settings, insecure_registries=frozenset(), registry_timeout_seconds=2.0)
    rt = await Runtime(strict, name="test-tls", backoff_base=0.01, max_retry_wait=0.1).open()
    try:
        assert await sync.sync_image(rt, image_id) == sync.FAILED
    finally:
        await rt.aclose()
    error = await pool.fetchval("SELECT sync_error FROM images WHERE id = $1", image_id)
    assert (f"add it to INSECURE_REGISTRIES (while `registry-sync dev` runs: registry-sync dev"
            f" --add-insecure-registry {registry.host})") in error
    assert f"if {registry.host} serves plain HTTP" in error

    relaxed = dataclasses.replace(settings, insecure_registries=frozenset({registry.host}))
    rt = await Runtime(relaxed, name="test-tls", backoff_base=0.01, max_retry_wait=0.1).open()
    try:
        assert await sync.sync_image(rt, image_id) == sync.SYNCED
    finally:
        await rt.aclose()


async def test_is_ssl_follows_the_configuration(pool: asyncpg.Pool, settings: Settings) -> None:
    host = f"{unique('reg')}.example:5000"
    image_id = await insert_image(pool, name=f"{host}/team/app", settings=settings)
    await pool.execute("UPDATE images SET next_sync_at = now() + interval '1 hour' WHERE id = $1", image_id)
    plain = dataclasses.replace(settings, insecure_registries=frozenset({host}), tutum_registry_host=host)

    async with pool.acquire() as conn:
        await ensure_registry(conn, host, plain)  # a later upsert applies the current settings
        row = await conn.fetchrow("SELECT is_ssl, is_tutum_registry FROM registries WHERE host = $1", host)
        assert tuple(row) == (False, True)
        changed = await refresh_registries(conn, settings)  # back to TLS: the image is due now
        assert (host, True) in changed
        row = await conn.fetchrow("SELECT is_ssl, is_tutum_registry FROM registries WHERE host = $1", host)
        assert tuple(row) == (True, False)
        assert await conn.fetchval("SELECT next_sync_at <= now() FROM images WHERE id = $1", image_id)
        assert (host, True) not in await refresh_registries(conn, settings)  # nothing changed
