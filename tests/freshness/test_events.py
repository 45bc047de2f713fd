"""The events stream (done-means 3): WebSocket and SSE clients of account A see A's new image
go Empty → Success with its tag events, in commit order; B, connected at the same time,
sees none of them. Plus the stream's edges: auth, lagging clients, keep-alives."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.stream import EVENT_HUB
from core.settings import Settings
from tests.conftest import MakeUser, User, unique
from tests.freshness.conftest import OpenRuntime
from tests.freshness.streams import Listener
from tests.support.registry import RegistryServer, apush_image
from worker import sync

RFC2822 = re.compile(r"[A-Z][a-z]{2}, [1-9][0-9]? [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} \+0000")


async def _subscribed(client: TestClient, n: int) -> None:
    assert client.app is not None
    hub = client.app[EVENT_HUB]
    deadline = time.monotonic() + 5
    while hub.subscribers < n:
        assert time.monotonic() < deadline, f"{hub.subscribers} subscribers, expected {n}"
        await asyncio.sleep(0.01)


async def _register(client: TestClient, user: User, name: str, pool: asyncpg.Pool) -> int:
    resp = await client.post("/api/v1/image/", json={"name": name}, headers=user.headers)
    assert resp.status == 201, await resp.text()
    return int(await pool.fetchval("SELECT id FROM images WHERE name = $1 AND owner_id = $2", name, user.account.id))


async def test_a_sees_its_image_synced_over_websocket_and_sse_and_b_sees_nothing(
    client: TestClient, make_user: MakeUser, hub_registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    alice, bob = await make_user(), await make_user()
    session = client.session
    base = str(client.make_url("/api/v1/events/"))
    user, token = alice.headers["Authorization"].removeprefix("ApiKey ").split(":")
    a_ws = await Listener.websocket(session, base, headers=alice.headers)
    a_sse = await Listener.sse(session, f"{base}?user={user}&token={token}")  # Tutum's query auth
    b_ws = await Listener.websocket(session, base, headers=bob.basic_headers)
    b_sse = await Listener.sse(session, base, headers=bob.headers)
    listeners = (a_ws, a_sse, b_ws, b_sse)
    try:
        await _subscribed(client, 4)
        repo = f"{unique('ev')}/app"
        await apush_image(hub_registry.url, repo, "1.0", {"created": "2024-01-01T00:00:00Z"}, layers=0)
        await apush_image(hub_registry.url, repo, "2.0", {"created": "2024-02-01T00:00:00Z"}, layers=0)
        name = f"{hub_registry.host}/{repo}"
        iid = await _register(client, alice, name, pool)
        rt = await runtime(hub_registry.host)
        assert await sync.sync_image(rt, iid) == sync.SYNCED

        uri = f"/api/v1/image/{name}/"
        expected = [
            ("image", "create", uri, "Empty"),
            ("image", "update", uri, "Success"),
            ("imagetag", "create", f"{uri}tag/1.0/", "Success"),
            ("imagetag", "create", f"{uri}tag/2.0/", "Success"),
        ]
        for a in (a_ws, a_sse):
            await a.wait(lambda li: len(li.about(uri)) >= len(expected))
            got = a.about(uri)
            # image events in commit order; the tags of one write in any order
            assert got[:2] == expected[:2]
            assert sorted(got[2:]) == expected[2:]
            for m in a.messages:
                if m["resource_uri"].startswith(uri):
                    assert set(m) == {"type", "action", "resource_uri", "state", "parents", "datetime"}
                    assert RFC2822.fullmatch(m["datetime"]), m
                    assert m["parents"] == ([uri] if m["type"] == "imagetag" else [])

        # B's own change arrives; by then every event of A's has been fanned out (one LISTEN
        # connection, commit order), and B has seen none of them.
        b_name = f"{hub_registry.host}/{unique('evb')}/app"
        await _register(client, bob, b_name, pool)
        for b in (b_ws, b_sse):
            await b.wait(lambda li: any(m["resource_uri"] == f"/api/v1/image/{b_name}/" for m in li.messages))
            assert b.about(uri) == [], b.messages
            assert all(m["resource_uri"].startswith(f"/api/v1/image/{b_name}/") for m in b.messages
                       if "/ev" in m["resource_uri"]), b.messages
        # A does not see B's image either
        await asyncio.sleep(0.1)
        assert a_ws.about(f"/api/v1/image/{b_name}/") == [] and a_sse.about(f"/api/v1/image/{b_name}/") == []

        # and a delete is an event too
        resp = await client.delete(uri, headers=alice.headers)
        assert resp.status == 204
        await a_ws.wait(lambda li: ("image", "delete", uri, "Success") in li.about(uri))
    finally:
        for li in listeners:
            await li.close()


async def test_catalog_changes_reach_every_account(
    client: TestClient, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    from tests.conftest import insert_image

    alice, bob = await make_user(), await make_user()
    url = str(client.make_url("/api/v1/events/"))
    listeners = [await Listener.websocket(client.session, url, headers=u.headers) for u in (alice, bob)]
    try:
        await _subscribed(client, 2)
        name = f"example.com/{unique('cat')}/app"
        iid = await insert_image(pool, name=name)  # owner NULL: the shared catalog
        await pool.execute("INSERT INTO tags (image_id, name, state) VALUES ($1, 'v1', 'Building')", iid)
        uri = f"/api/v1/image/{name}/"
        for li in listeners:
            await li.wait(lambda x: len(x.about(uri)) == 3)
            assert li.about(uri) == [
                ("image", "create", uri, "Empty"),
                ("image", "update", uri, "Building"),
                ("imagetag", "create", f"{uri}tag/v1/", "Building"),
            ]
        # lease and schedule writes are not client-visible: no event
        await pool.execute("UPDATE images SET lease_owner = 'x', next_sync_at = now() WHERE id = $1", iid)
        await pool.execute("UPDATE images SET star_count = 7 WHERE id = $1", iid)
        await listeners[0].wait(lambda x: len(x.about(uri)) == 4)
        assert listeners[0].about(uri)[-1] == ("image", "update", uri, "Building")
    finally:
        for li in listeners:
            await li.close()


async def test_an_account_that_shadows_a_catalog_name_hears_only_its_own_image(
    client: TestClient, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    """Alice registered a name the catalog has too: that URI is her own image (SPEC §1), so the
    catalog image's changes are not sent to her (a catalog delete would read as hers); Bob
    gets them. Once her image is gone the catalog's is hers to see again."""
    from tests.conftest import insert_image

    alice, bob = await make_user(), await make_user()
    name = f"example.com/{unique('shadow')}/app"
    uri = f"/api/v1/image/{name}/"
    catalog = await insert_image(pool, name=name)
    own = await insert_image(pool, name=name, owner_id=alice.account.id)
    url = str(client.make_url("/api/v1/events/"))
    a, b = [await Listener.websocket(client.session, url, headers=u.headers) for u in (alice, bob)]
    try:
        await _subscribed(client, 2)
        await pool.execute("UPDATE images SET star_count = 1, state = 'Building' WHERE id = $1", catalog)
        await pool.execute("UPDATE images SET star_count = 2, state = 'Failed' WHERE id = $1", own)
        await a.wait(lambda li: len(li.about(uri)) >= 1)
        await b.wait(lambda li: len(li.about(uri)) >= 1)
        await asyncio.sleep(0.3)  # what would reach Alice wrongly has had its time
        assert a.about(uri) == [("image", "update", uri, "Failed")]
        assert b.about(uri) == [("image", "update", uri, "Building")]

        await pool.execute("DELETE FROM images WHERE id = $1", own)
        await a.wait(lambda li: len(li.about(uri)) == 2)
        await pool.execute("UPDATE images SET state = 'Success' WHERE id = $1", catalog)
        await a.wait(lambda li: len(li.about(uri)) == 3)
        assert a.about(uri)[1:] == [("image", "delete", uri, "Failed"), ("image", "update", uri, "Success")]
        # and an image she registers after connecting shadows the catalog's again
        await _register(client, alice, name, pool)
        await a.wait(lambda li: len(li.about(uri)) == 4)
        await pool.execute("UPDATE images SET state = 'Building' WHERE id = $1", catalog)
        await b.wait(lambda li: li.about(uri)[-1] == ("image", "update", uri, "Building"))
        await asyncio.sleep(0.3)
        assert a.about(uri)[3:] == [("image", "create", uri, "Empty")]
    finally:
        await a.close()
        await b.close()


async def test_uncommitted_changes_are_not_sent(client: TestClient, make_user: MakeUser, pool: asyncpg.Pool) -> None:
    from core.names import parse_image_name
    from core.registries import ensure_registry

    user = await make_user()
    li = await Listener.websocket(client.session, str(client.make_url("/api/v1/events/")), headers=user.headers)
    try:
        await _subscribed(client, 1)
        name = parse_image_name(f"example.com/{unique('rb')}/app")
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            rid = await ensure_registry(conn, name.host, Settings())
            await conn.execute("INSERT INTO images (name, registry_id, repository) VALUES ($1, $2, $3)",
                               name.name, rid, name.repository)
            await asyncio.sleep(0.2)
            assert li.about(f"/api/v1/image/{name.name}/") == []
            await tx.rollback()
        await asyncio.sleep(0.2)
        assert li.about(f"/api/v1/image/{name.name}/") == []
    finally:
        await li.close()


async def test_stream_needs_credentials_and_a_stream_transport(client: TestClient, make_user: MakeUser) -> None:
    user = await make_user()
    resp = await client.get("/api/v1/events/", headers={"Accept": "text/event-stream"})
    assert resp.status == 401 and (await resp.json())["error"]
    resp = await client.get("/api/v1/events/?user=nobody&token=wrong", headers={"Accept": "text/event-stream"})
    assert resp.status == 401
    resp = await client.get("/api/v1/events/", headers=user.headers)
    assert resp.status == 400 and "text/event-stream" in (await resp.json())["error"]
    # query credentials are for the stream only
    name, key = user.headers["Authorization"].removeprefix("ApiKey ").split(":")
    resp = await client.get(f"/api/v1/image/?user={name}&token={key}")
    assert resp.status == 401


async def test_lagging_client_is_told_and_disconnected(settings: Settings, make_user: MakeUser) -> None:
    """A subscriber the hub finds behind (here: every one, by a limit below zero) gets the
    error message and its stream ends; WebSocket and SSE alike."""
    app = create_app(settings)
    async with TestClient(TestServer(app)) as c:
        user = await make_user()
        li = await Listener.websocket(c.session, str(c.make_url("/api/v1/events/")), headers=user.headers)
        sse = await Listener.sse(c.session, str(c.make_url("/api/v1/events/")), headers=user.headers)
        try:
            await _subscribed(c, 2)
            hub = app[EVENT_HUB]
            hub.limit = -1
            hub.add({"type": "image", "action": "update", "owner": None, "name": "x", "state": "Empty", "at": 0})
            hub.flush()
            for x in (li, sse):
                await asyncio.wait_for(x.closed.wait(), 5)
                assert x.messages[-1]["type"] == "error" and "lagging" in x.messages[-1]["error"]
            assert hub.subscribers == 0 and hub.dropped == 2
        finally:
            await li.close()
            await sse.close()


async def test_sse_sends_keepalives(settings: Settings, make_user: MakeUser) -> None:
    async with TestClient(TestServer(create_app(dataclasses.replace(settings, events_ping_seconds=0.05)))) as c:
        user = await make_user()
        sse = await Listener.sse(c.session, str(c.make_url("/api/v1/events/")), headers=user.headers)
        try:
            await sse.wait(lambda x: x.pings >= 3, within=5)
        finally:
            await sse.close()

