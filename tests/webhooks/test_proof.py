"""Access follows proof: two accounts register the same private repository of a real
registry with htpasswd auth, whose notifications reach the API. Only the account whose
credentials the registry accepted learns from the events; the others' copies never show a
tag, a date or a state of it, and their events streams stay silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from core import webhooks as wh
from core.settings import Settings
from tests.conftest import MakeUser, User, unique
from tests.freshness.streams import Listener
from tests.support.registry import RegistryServer, adelete_tag, apush_image
from tests.webhooks.conftest import KINDS, Sender, make_sender, new_user, notifying_registry, runtime_for
from worker import inbox, sync
from worker.runtime import Runtime

ALICE = ("alice", "wonderland")


@pytest.fixture(scope="module", params=KINDS)
async def sender(request: pytest.FixtureRequest, wh_client: TestClient, pool: asyncpg.Pool) -> Sender:
    """Whose receiver the registry notifies: the account that holds the registry's credentials."""
    return await make_sender(wh_client, request.param, await new_user(pool))


@pytest.fixture(scope="module")
def private_registry(
    wh_client: TestClient, sender: Sender, notifying_hosts: tuple[str, str],
) -> Iterator[RegistryServer]:
    """htpasswd auth."""
    with notifying_registry(wh_client, sender, notifying_hosts[1], htpasswd=dict([ALICE])) as reg:
        yield reg


@pytest.fixture
async def rt(wh_settings: Settings, private_registry: RegistryServer) -> AsyncIterator[Runtime]:
    async with runtime_for(wh_settings, private_registry, "proof") as runtime:
        yield runtime


async def _events_stored(pool: asyncpg.Pool, repository: str, n: int) -> None:
    deadline = time.monotonic() + 10
    sql = "SELECT count(*) FROM webhook_events WHERE repository = $1"
    while await pool.fetchval(sql, repository) < n:
        assert time.monotonic() < deadline, f"fewer than {n} events stored for {repository}"
        await asyncio.sleep(0.02)


async def _process_pending(rt: Runtime, repository: str) -> None:
    for event_id in await rt.pool.fetch(
        "SELECT id FROM webhook_events WHERE repository = $1 AND status = 'pending' ORDER BY id", repository
    ):
        await inbox.process_event(rt, event_id["id"])


async def _view(client: TestClient, user: User, name: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/image/{name}/", headers=user.headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return {"state": body["state"], "last_build_date": body["last_build_date"], "tags": body["tags"]}


async def test_events_reach_only_the_account_whose_credentials_were_accepted(
    wh_client: TestClient, pool: asyncpg.Pool, rt: Runtime, private_registry: RegistryServer,
    make_user: MakeUser, sender: Sender,
) -> None:
    reg = private_registry
    repo = f"{unique('private')}/app"
    name = f"{reg.host}/{repo}"
    await apush_image(reg.url, repo, "v0", {"created": "2024-01-01T00:00:00Z"}, auth=ALICE)
    await _events_stored(pool, repo, 1)
    owner, anonymous, wrong = sender.user, await make_user(), await make_user()
    bodies = {
        owner: {"name": name, "username": ALICE[0], "password": ALICE[1]},
        anonymous: {"name": name},
        wrong: {"name": name, "username": ALICE[0], "password": "not-the-password"},
    }
    for user, body in bodies.items():
        resp = await wh_client.post("/api/v1/image/", json=body, headers=user.headers)
        assert resp.status == 201, await resp.text()
        image_id = await pool.fetchval(
            "SELECT id FROM images WHERE name = $1 AND owner_id = $2", name, user.account.id)
        assert await sync.sync_image(rt, image_id) == (sync.SYNCED if user is owner else sync.FAILED)
    await _process_pending(rt, repo)  # the push of v0, stored before anyone registered
    proven = dict(await pool.fetch(
        "SELECT owner_id, access_proven FROM images WHERE name = $1", name))
    assert proven == {owner.account.id: True, anonymous.account.id: False, wrong.account.id: False}
    before = {u: await _view(wh_client, u, name) for u in (anonymous, wrong)}
    assert all(v == {"state": "Empty", "last_build_date": None, "tags": []} for v in before.values())
    failed_at = dict(await pool.fetch("SELECT owner_id, sync_error_at FROM images WHERE name = $1", name))

    url = str(wh_client.make_url("/api/v1/events/"))
    streams = {u: await Listener.sse(wh_client.session, url, headers=u.headers) for u in (owner, anonymous, wrong)}
    uri = f"/api/v1/image/{name}/"
    try:
        # a push, a build event, a delete, each seen by the registry's owner only
        await apush_image(reg.url, repo, "v1", {"created": "2024-02-01T00:00:00Z"}, auth=ALICE)
        await _events_stored(pool, repo, 2)
        await _process_pending(rt, repo)
        body = orjson.dumps({"image": name, "tag": "v1", "status": "building",
                             "timestamp": datetime.now(UTC).isoformat(), "build_id": "b1"})
        resp = await sender.post(wh_client, wh.BUILD, body)
        assert resp.status == 202, await resp.text()
        await _process_pending(rt, repo)
        owned = await _view(wh_client, owner, name)
        assert owned["state"] == "Building" and len(owned["tags"]) == 2
        await adelete_tag(reg.url, repo, "v0", auth=ALICE)
        await _events_stored(pool, repo, 5)  # the registry notifies the manifest's and the tag's delete
        await _process_pending(rt, repo)
        owned = await _view(wh_client, owner, name)
        assert [t.rsplit("/", 2)[-2] for t in owned["tags"]] == ["v1"]
        await streams[owner].wait(lambda li: any("/tag/v0/" in m[2] for m in li.about(uri)
                                                if m[1] == "delete"))
        await asyncio.sleep(0.2)  # what would leak has had its time
        for user in (anonymous, wrong):
            assert await _view(wh_client, user, name) == before[user]
            assert streams[user].about(uri) == [], streams[user].messages
        # their images were not synced again by the events: no timing of the owner's pushes
        assert dict(await pool.fetch(
            "SELECT owner_id, sync_error_at FROM images WHERE name = $1", name)) == failed_at
        statuses = await pool.fetch(
            "SELECT status, count(*) FROM webhook_events WHERE repository = $1 GROUP BY status", repo)
        assert dict(statuses) == {"done": 5}
    finally:
        for li in streams.values():
            await li.close()


async def test_an_image_registered_before_its_first_push_proves_access_on_the_push(
    wh_client: TestClient, pool: asyncpg.Pool, rt: Runtime, private_registry: RegistryServer,
    sender: Sender,
) -> None:
    reg = private_registry
    repo = f"{unique('first')}/app"
    name = f"{reg.host}/{repo}"
    owner = sender.user
    resp = await wh_client.post("/api/v1/image/", json={"name": name, "username": ALICE[0], "password": ALICE[1]},
                                headers=owner.headers)
    assert resp.status == 201, await resp.text()
    image_id = await pool.fetchval("SELECT id FROM images WHERE name = $1 AND owner_id = $2", name, owner.account.id)
    assert await sync.sync_image(rt, image_id) == sync.FAILED  # the repository does not exist yet
    row = await pool.fetchrow("SELECT access_proven, sync_error FROM images WHERE id = $1", image_id)
    assert not row["access_proven"] and row["sync_error"].startswith("RepositoryNotFoundError")

    await apush_image(reg.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, auth=ALICE)
    await _events_stored(pool, repo, 1)
    await _process_pending(rt, repo)  # the event asks the image to prove access: it syncs
    row = await pool.fetchrow("SELECT access_proven, sync_error FROM images WHERE id = $1", image_id)
    assert row["access_proven"] and row["sync_error"] is None
    assert (await _view(wh_client, owner, name))["tags"] == [f"/api/v1/image/{name}/tag/v1/"]
    note = await pool.fetchval("SELECT note FROM webhook_events WHERE repository = $1", repo)
    assert "synced instead" in note
