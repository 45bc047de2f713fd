"""Per-account rate limits (api/account_limits.py, SPEC §4): registrations, re-sync requests
and Docker Hub look-ups past their limit are a 429 with Retry-After, counted in Redis so every
web process sees the same count; within the limits, an account's burst goes to a later lane
of the priority queue than another account's first request."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import redis
from aiohttp import test_utils

from api.app import create_app
from core.queue import PRIORITY_QUEUE, SYNC_IMAGE_TASK, queue_keys
from core.settings import Settings
from tests.api.helpers import json_error, ok_json
from tests.conftest import MakeUser, User, insert_image, unique
from tests.support.resolver import stub_resolver
from tests.support.services import redis_db

Client = test_utils.TestClient


@pytest.fixture(scope="module")
def limited(settings: Settings, redis_server_url: str) -> Settings:
    """Low limits, counted on a Redis database of their own (which is also their broker)."""
    return dataclasses.replace(
        settings, redis_url=f"{redis_server_url}/{redis_db('spare')}", account_registration_limit=3,
        account_resync_limit=2, account_hub_lookup_limit=2, inspect_timeout_seconds=0.2,
    )


async def _client(settings: Settings) -> AsyncIterator[Client]:
    app = create_app(settings)
    stub_resolver(app)
    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        yield c


@pytest.fixture
async def web1(limited: Settings) -> AsyncIterator[Client]:
    async for c in _client(limited):
        yield c


@pytest.fixture
async def web2(limited: Settings) -> AsyncIterator[Client]:
    """A second web process of the same service: its own app, the same Redis."""
    async for c in _client(limited):
        yield c


async def register(client: Client, user: User, name: str | None = None) -> int:
    resp = await client.post("/api/v1/image/", json={"name": name or f"registry.example/{unique('lim')}/app"},
                             headers=user.headers)
    return resp.status


async def test_registrations_past_the_limit_are_refused_by_every_web_process(
    web1: Client, web2: Client, make_user: MakeUser, pool: asyncpg.Pool,
) -> None:
    alice, bob = await make_user(), await make_user()
    assert [await register(web1, alice), await register(web2, alice), await register(web1, alice)] == [201] * 3
    name = f"registry.example/{unique('lim')}/fourth"
    resp = await web2.post("/api/v1/image/", json={"name": name}, headers=alice.headers)
    body = await json_error(resp, 429)
    assert body["error"] == (f"too many image registrations from this account: at most 3 per 60 s; "
                             f"try again in {resp.headers['Retry-After']} s")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name) == 0  # nothing done
    assert await register(web1, bob) == 201  # per account


async def test_resync_requests_past_the_limit_are_refused(
    web1: Client, make_user: MakeUser, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    name = f"registry.example/{unique('lim')}/app"
    await insert_image(pool, name=name, owner_id=user.account.id, tags=["v1"])
    build = f"/api/v1/image/{name}/tag/v1/build/"
    for _ in range(2):
        await ok_json(await web1.post(build, headers=user.headers), 202)
    before = await pool.fetchval("SELECT sync_requested_at FROM images WHERE name = $1", name)
    resp = await web1.post(build, headers=user.headers)
    assert "re-sync requests" in (await json_error(resp, 429))["error"] and resp.headers["Retry-After"]
    assert await pool.fetchval("SELECT sync_requested_at FROM images WHERE name = $1", name) == before
    # new credentials queue a sync: a re-sync request too; a new description does not
    resp = await web1.patch(f"/api/v1/image/{name}/", json={"username": "u", "password": "p"}, headers=user.headers)
    await json_error(resp, 429)
    assert await pool.fetchval("SELECT credentials FROM images WHERE name = $1", name) is None
    await ok_json(await web1.patch(f"/api/v1/image/{name}/", json={"description": "d"}, headers=user.headers))


async def test_hub_lookups_past_the_limit_ask_the_hub_no_more(
    web1: Client, make_user: MakeUser, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    names = [f"{unique('hublim')}/app" for _ in range(3)]
    for name in names[:2]:  # no worker answers here: each look-up waits, then is a 503
        await json_error(await web1.get(f"/api/v1/image/{name}/", headers=user.headers), 503)
    resp = await web1.get(f"/api/v1/image/{names[2]}/", headers=user.headers)
    assert "look-ups of new Docker Hub images" in (await json_error(resp, 429))["error"]
    asked = await pool.fetch("SELECT name FROM hub_inspections WHERE name = ANY ($1)", names)
    assert sorted(r["name"] for r in asked) == sorted(names[:2])


async def test_a_burst_queues_behind_another_accounts_first_request(
    limited: Settings, make_user: MakeUser, pool: asyncpg.Pool,
) -> None:
    """B registers 12 images, then A one: B's first 10 and A's go to the first lane of the
    priority queue, B's last two to the next one, which consumers empty only after it."""
    broker = redis.Redis.from_url(limited.redis_url)
    broker.delete(*queue_keys(PRIORITY_QUEUE))
    async for web in _client(dataclasses.replace(limited, account_registration_limit=100)):
        alice, bob = await make_user(), await make_user()
        for _ in range(12):
            assert await register(web, bob) == 201
        assert await register(web, alice) == 201
    ids = {r["id"]: r["owner_id"] for r in await pool.fetch(
        "SELECT id, owner_id FROM images WHERE owner_id = ANY ($1)", [alice.account.id, bob.account.id])}

    def owners(key: str) -> list[int]:
        raw = [orjson.loads(m) for m in reversed(broker.lrange(key, 0, -1))]  # oldest first
        assert all(m["headers"]["task"] == SYNC_IMAGE_TASK for m in raw)
        return [ids[orjson.loads(base64.b64decode(m["body"]))[0][0]] for m in raw]

    first, second, *later = queue_keys(PRIORITY_QUEUE)
    assert owners(first) == [bob.account.id] * 10 + [alice.account.id]
    assert owners(second) == [bob.account.id] * 2
    assert all(broker.llen(key) == 0 for key in later)
