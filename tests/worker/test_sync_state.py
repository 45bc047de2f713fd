"""What a sync records besides tags: times from the database, proof of access, a busy host,
the deadline and the tag-list cap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, User, insert_image, unique
from tests.support.fake_registry import FakeRegistry
from tests.support.registry import RegistryServer, push_image
from tests.worker.conftest import ALICE, OpenRuntime
from tests.worker.helpers import get, register, tag_names
from worker import sync
from worker.registry import HostBusyError, TagList, Target
from worker.runtime import Runtime

CONFIG: dict[str, Any] = {"created": "2024-01-01T00:00:00Z"}


def during_listing(rt: Runtime, monkeypatch: pytest.MonkeyPatch, act: Any, *, before: bool = False) -> None:
    """Run `await act()` while the sync is under way: right after its tag list (or right
    before it, when the sync has already read the image and built its target)."""
    real = rt.client.list_tags

    async def listing(target: Target) -> TagList:
        if before:
            await act()
        names = await real(target)
        if not before:
            await act()
        return names

    monkeypatch.setattr(rt.client, "list_tags", listing)


async def private_image(
    client: TestClient, user: User, registry: RegistryServer, password: str
) -> tuple[str, int]:
    """An image pushed to the htpasswd registry, registered by `user` as ALICE with
    `password`: (name, id)."""
    repo = f"{unique('private')}/app"
    await asyncio.to_thread(push_image, registry.url, repo, "v1", CONFIG, auth=ALICE)
    name = f"{registry.host}/{repo}"
    return name, await register(client, user, name, username=ALICE[0], password=password)


async def row(pool: asyncpg.Pool, iid: int) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT sync_error, sync_failures, access_proven, lease_owner, next_sync_at - now() AS due,"
        " tags_cut_at FROM images WHERE id = $1", iid)


@pytest.mark.parametrize("skew", [timedelta(hours=6), -timedelta(hours=6)], ids=["ahead", "behind"])
async def test_a_worker_clock_off_by_hours_neither_deletes_nor_keeps_the_wrong_tags(
    skew: timedelta, client: TestClient, make_user: MakeUser, registry: RegistryServer,
    runtime: OpenRuntime, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sync compares the tags' update times with its own start: both must come from the
    database. A tag a webhook pushed during the sync stays; a tag gone from the registry
    before the sync goes, however wrong the worker's clock."""
    user = await make_user()
    repo = f"{unique('skew')}/app"
    pushed = await asyncio.to_thread(push_image, registry.url, repo, "v1", CONFIG)
    iid = await register(client, user, f"{registry.host}/{repo}")
    await pool.execute(
        "INSERT INTO tags (image_id, name, state, updated_at) VALUES ($1, 'gone', 'Success',"
        " now() - interval '1 minute')", iid)

    class SkewedClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + skew

    monkeypatch.setattr(sync, "datetime", SkewedClock)
    rt = await runtime(registry.host)

    async def webhook_push() -> None:  # as the push receiver writes a tag: at the database's now()
        await pool.execute(
            "INSERT INTO tags (image_id, name, state, manifest_digest, pushed_at, build_date)"
            " VALUES ($1, 'hook', 'Success', $2, now(), now())", iid, pushed.digest)

    during_listing(rt, monkeypatch, webhook_push)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    names = [r[0] for r in await pool.fetch("SELECT name FROM tags WHERE image_id = $1 ORDER BY name", iid)]
    assert names == ["hook", "v1"]


async def test_new_credentials_during_a_failing_sync_resync_at_once(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await make_user()
    name, iid = await private_image(client, user, auth_registry, "wrong")
    rt = await runtime(auth_registry.host)

    async def patch_to_right() -> None:  # the sync goes on with the credentials it began with
        resp = await client.patch(f"/api/v1/image/{name}/", headers=user.headers,
                                  json={"username": ALICE[0], "password": ALICE[1]})
        assert resp.status == 200

    during_listing(rt, monkeypatch, patch_to_right, before=True)
    assert await sync.sync_image(rt, iid) == sync.FAILED
    r = await row(pool, iid)
    assert r["sync_error"].startswith("RegistryAuthError") and not r["access_proven"]
    assert r["due"] <= timedelta(0), "a permanent error's backoff (an hour) instead of at once"
    monkeypatch.undo()
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    r = await row(pool, iid)
    assert r["sync_error"] is None and r["access_proven"]
    assert (await get(client, user, f"/api/v1/image/{name}/"))["state"] == "Success"


async def test_access_is_proven_only_for_the_credentials_the_sync_used(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await make_user()
    name, iid = await private_image(client, user, auth_registry, ALICE[1])
    assert not (await row(pool, iid))["access_proven"]
    rt = await runtime(auth_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert (await row(pool, iid))["access_proven"]

    # a PATCH clears the proof at once; a sync that began with the old credentials and
    # succeeds does not restore it, and the new credentials are tried right after
    async def patch_to_wrong() -> None:
        resp = await client.patch(f"/api/v1/image/{name}/", headers=user.headers,
                                  json={"username": ALICE[0], "password": "not-hers"})
        assert resp.status == 200
        assert not (await row(pool, iid))["access_proven"]

    during_listing(rt, monkeypatch, patch_to_wrong)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    r = await row(pool, iid)
    assert not r["access_proven"] and r["due"] <= timedelta(0)
    monkeypatch.undo()
    assert await sync.sync_image(rt, iid) == sync.FAILED
    assert not (await row(pool, iid))["access_proven"]


@pytest.mark.parametrize(
    ("prefix", "outcome", "proven"),
    [
        ("ok", sync.SYNCED, True),
        ("halfdown", sync.FAILED, True),  # the tag list succeeded: access is proven
        ("down", sync.FAILED, None),  # nothing learnt: left as it was
    ],
)
async def test_proof_of_access_follows_the_tag_list(
    prefix: str, outcome: str, proven: bool | None, make_user: MakeUser,
    fake_registry: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    for before in (False, True):
        iid = await insert_image(
            pool, name=f"{fake_registry.host}/{prefix}/{unique('r')}", owner_id=user.account.id,
            access_proven=before,
        )
        rt = await runtime(fake_registry.host)
        assert await sync.sync_image(rt, iid) == outcome
        assert (await row(pool, iid))["access_proven"] is (before if proven is None else proven)


async def test_an_unknown_repository_loses_its_proof(
    make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    iid = await insert_image(pool, name=f"{registry.host}/{unique('nobody')}/app",
                             owner_id=user.account.id, access_proven=True)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.FAILED
    r = await row(pool, iid)
    assert r["sync_error"].startswith("RepositoryNotFoundError") and not r["access_proven"]


@pytest.mark.parametrize("where", ["slot", "request"])
async def test_a_busy_host_hands_the_image_back_without_a_failure(
    where: str, make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime,
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/ok/{unique('r')}", owner_id=user.account.id,
                             sync_failures=2)
    rt = await runtime(fake_registry.host)
    busy = HostBusyError(f"{fake_registry.host} is paused", retry_after=42.0)
    if where == "slot":
        @contextlib.asynccontextmanager
        async def slot(host: str, **_: object) -> AsyncIterator[None]:
            assert host == fake_registry.host
            raise busy
            yield

        monkeypatch.setattr(rt, "host_slot", slot)
    else:
        async def refused(target: Target) -> TagList:
            raise busy

        monkeypatch.setattr(rt.client, "list_tags", refused)
    assert await sync.sync_image(rt, iid) == sync.SKIPPED
    r = await row(pool, iid)
    assert r["lease_owner"] is None and r["sync_error"] is None and r["sync_failures"] == 2
    assert timedelta(seconds=40) < r["due"] <= timedelta(seconds=42)


async def test_the_host_slot_is_held_around_the_registry_work(
    make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/ok/{unique('r')}", owner_id=user.account.id)
    rt = await runtime(fake_registry.host)
    held: list[str] = []
    real = rt.client.list_tags

    @contextlib.asynccontextmanager
    async def slot(host: str, **_: object) -> AsyncIterator[None]:
        held.append("enter")
        yield
        held.append("exit")

    async def listing(target: Target) -> TagList:
        held.append("list")
        return await real(target)

    monkeypatch.setattr(rt, "host_slot", slot)
    monkeypatch.setattr(rt.client, "list_tags", listing)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert held == ["enter", "list", "exit"]


async def test_a_sync_past_its_deadline_gives_up_and_releases_its_lease(
    make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/slow/{unique('r')}", owner_id=user.account.id,
                             tags=[{"name": "kept", "build_date": datetime(2023, 1, 1, tzinfo=UTC)}])
    rt = await runtime(fake_registry.host, with_settings={"sync_deadline_seconds": 0.3,
                                                          "registry_timeout_seconds": 5.0})
    started = asyncio.get_running_loop().time()
    assert await sync.sync_image(rt, iid) == sync.FAILED
    assert asyncio.get_running_loop().time() - started < 1.0  # the slow registry answers after 1 s
    r = await row(pool, iid)
    assert r["sync_error"] == (
        "SyncDeadlineError: the sync did not finish within SYNC_DEADLINE_SECONDS=0.3s and gave up"
        " (the registry is too slow or the repository too large)"
    )
    assert r["lease_owner"] is None and r["sync_failures"] == 1 and r["due"] > timedelta(seconds=4)
    assert await pool.fetchval("SELECT array_agg(name) FROM tags WHERE image_id = $1", iid) == ["kept"]


async def test_a_tag_list_beyond_the_cap_keeps_the_first_names(
    client: TestClient, make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    name = f"{fake_registry.host}/paged/{unique('r')}"
    iid = await insert_image(pool, name=name, owner_id=user.account.id, tags=["t4"])
    rt = await runtime(fake_registry.host, with_settings={"max_tags_per_image": 3})
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert tag_names(await get(client, user, f"/api/v1/image/{name}/")) == ["t0", "t1", "t2"]
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["tags_truncated"] is True
    assert status["tags_note"].startswith("more than 3 tags: only 3 are kept (the first by name")
    rt_all = await runtime(fake_registry.host)
    assert await sync.sync_image(rt_all, iid) == sync.SYNCED
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["tags_truncated"] is False and status["tags_note"] is None
