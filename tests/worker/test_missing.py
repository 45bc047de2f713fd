"""A repository that does not exist yet (registered before its first push): retried from the
base backoff, permanent only after REPOSITORY_MISSING_GRACE_SECONDS, and the image still
loses its proof of access (worker/missing.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from tests.conftest import MakeUser, insert_image, unique
from tests.support.registry import RegistryServer, push_image
from tests.worker.conftest import OpenRuntime
from worker import sync

BASE, CAP, GRACE = 10.0, 3600.0, 600.0


async def _row(pool: asyncpg.Pool, iid: int) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT sync_error, sync_failures, access_proven, missing_since, next_sync_at - now() AS due"
        " FROM images WHERE id = $1", iid)


async def test_a_missing_repository_is_retried_soon_until_it_has_been_missing_for_the_grace(
    make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    repo = f"{unique('later')}/app"
    iid = await insert_image(pool, name=f"{registry.host}/{repo}", owner_id=user.account.id, access_proven=True)
    rt = await runtime(registry.host, with_settings={
        "sync_backoff_base_seconds": BASE, "sync_backoff_max_seconds": CAP,
        "repository_missing_grace_seconds": GRACE})

    assert await sync.sync_image(rt, iid) == sync.FAILED
    first = await _row(pool, iid)
    assert first["sync_error"].startswith("RepositoryNotFoundError: repository not found: push it, or check the name.")
    assert "Next try in " in first["sync_error"] and "404" in first["sync_error"]
    assert timedelta(0) < first["due"] <= timedelta(seconds=BASE), "the base backoff, not the cap"
    assert not first["access_proven"], "a 404 is also what credentials that cannot see it get"
    assert first["missing_since"] is not None

    assert await sync.sync_image(rt, iid) == sync.FAILED  # doubling, from the same start
    second = await _row(pool, iid)
    assert timedelta(0) < second["due"] <= timedelta(seconds=2 * BASE)
    assert second["missing_since"] == first["missing_since"] and second["sync_failures"] == 2

    # missing for longer than the grace: waited on like a permanent error
    await pool.execute("UPDATE images SET missing_since = now() - make_interval(secs => $2) WHERE id = $1",
                       iid, GRACE + 1)
    assert await sync.sync_image(rt, iid) == sync.FAILED
    late = await _row(pool, iid)
    assert late["due"] >= timedelta(seconds=0.9 * CAP - 5)
    assert f"Missing for over {GRACE / 60:.0f} min: next try in " in late["sync_error"]

    # pushed at last: the next sync (a re-sync request, here) finds it and ends the streak
    await asyncio.to_thread(push_image, registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    done = await _row(pool, iid)
    assert done["sync_error"] is None and done["missing_since"] is None and done["access_proven"]
