"""The stream's fan-out (issue 14): each change encoded once and the same bytes written to
every client, bursts coalesced, streams per account capped (issue 13), and the stream served
by `registry-sync stream` processes of its own while the API leaves it to them."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from api import serializers, stream
from api.app import create_app
from api.stream import EVENT_HUB, TAG_BURST, EventHub
from api.stream_app import create_stream_app
from api.stream_clients import SSE, WS, ws_frame
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.freshness.streams import Listener
from tests.support.processes import Service, wait_for
from tests.support.services import free_port


class FakeTransport:
    def __init__(self, backlog: int = 0) -> None:
        self.writes: list[bytes] = []
        self.backlog = backlog

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.backlog


def _change(name: str, action: str = "update", state: str = "Success", owner: int | None = None,
            tag: str | None = None, at: float = 0.0) -> dict[str, Any]:
    body = {"type": "imagetag" if tag else "image", "action": action, "owner": owner, "name": name,
            "state": state, "at": at}
    return {**body, "tag": tag, "image_state": "Building"} if tag else body


async def test_each_change_is_encoded_once_and_every_client_gets_the_same_bytes(monkeypatch) -> None:
    hub = EventHub("postgresql://unused", window=0, max_per_account=1000)
    encoded = []
    real = serializers.event
    monkeypatch.setattr(serializers, "event", lambda p: encoded.append(p) or real(p))
    transports = [FakeTransport() for _ in range(300)]
    subs = [hub.subscribe(1 + i % 3, t, WS if i % 2 else SSE) for i, t in enumerate(transports)]
    hub.add(_change("team/a"))
    hub.add(_change("team/b", action="create", state="Empty"))
    hub.add(_change("team/mine", owner=2))
    hub.flush()
    assert len(encoded) == 3, "one encoding per change, not per client"
    pairs = list(zip(transports, subs, strict=True))
    ws_of_others = {id(t.writes[0]) for t, s in pairs if s.kind == WS and s.account_id != 2}
    assert len(ws_of_others) == 1, "one bytes object written to every WebSocket of other accounts"
    owner_ws = next(t for t, s in zip(transports, subs, strict=True) if s.kind == WS and s.account_id == 2)
    other_ws = next(t for t, s in zip(transports, subs, strict=True) if s.kind == WS and s.account_id == 1)
    frames = _ws_payloads(owner_ws.writes[0])
    assert [f["resource_uri"] for f in frames] == ["/api/v1/image/team/a/", "/api/v1/image/team/b/",
                                                   "/api/v1/image/team/mine/"]
    assert len(_ws_payloads(other_ws.writes[0])) == 2, "another account's image is not sent"
    sse = next(t for t, s in zip(transports, subs, strict=True) if s.kind == SSE and s.account_id == 1)
    size, _, body = sse.writes[0].partition(b"\r\n")
    assert int(size, 16) == len(body) - 2 and body.endswith(b"\n\n\r\n") and body.count(b"data: ") == 2
    assert hub.delivered == 200 * 2 + 100 * 3


def _ws_payloads(data: bytes) -> list[dict[str, Any]]:
    import orjson

    out = []
    while data:
        assert data[0] == 0x81
        n, start = data[1], 2
        if n == 126:
            n, start = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, start = int.from_bytes(data[2:10], "big"), 10
        out.append(orjson.loads(data[start:start + n]))
        data = data[start + n:]
    return out


def test_frame_lengths_follow_rfc_6455() -> None:
    for n, header in ((10, b"\x81\x0a"), (200, b"\x81\x7e\x00\xc8"), (70000, b"\x81\x7f" + (70000).to_bytes(8, "big"))):
        frame = ws_frame(b"x" * n)
        assert frame.startswith(header) and len(frame) == len(header) + n


async def test_a_window_coalesces_updates_and_tag_bursts() -> None:
    hub = EventHub("postgresql://unused", window=0)
    t = FakeTransport()
    hub.subscribe(1, t, WS)
    for state in ("Building", "Failed", "Success"):
        hub.add(_change("team/a", state=state))
    hub.add(_change("team/a", action="create", state="Empty", tag="v1"))
    hub.add(_change("team/a", action="delete", tag="v1"))
    for i in range(TAG_BURST + 150):
        hub.add(_change("team/big", action="create", tag=f"t{i}", at=float(i)))
    hub.add(_change("team/small", action="create", tag="only"))
    hub.flush()
    got = [(m["type"], m["action"], m["resource_uri"], m["state"]) for m in _ws_payloads(t.writes[0])]
    assert got == [
        ("image", "update", "/api/v1/image/team/a/", "Success"),
        ("imagetag", "create", "/api/v1/image/team/a/tag/v1/", "Empty"),
        ("imagetag", "delete", "/api/v1/image/team/a/tag/v1/", "Success"),
        ("image", "update", "/api/v1/image/team/big/", "Building"),
        ("imagetag", "create", "/api/v1/image/team/small/tag/only/", "Success"),
    ]


async def test_a_stream_starts_at_its_connection_not_at_the_last_flush() -> None:
    """A client that connects while changes wait for the window does not get those changes
    (they happened before it was there: its own image's create, say), but does get the
    ones received after it connected, in the same flush."""
    hub = EventHub("postgresql://unused", window=0)
    early, late = FakeTransport(), FakeTransport()
    hub.subscribe(7, early, WS)
    hub.add(_change("team/mine", action="create", state="Empty", owner=7))
    hub.add(_change("team/a", state="Building"))
    hub.subscribe(7, late, WS)
    hub.add(_change("team/a", state="Success"))  # replaces the pending update, after the join
    hub.add(_change("team/b", action="create", state="Empty"))
    hub.flush()
    uris = ["/api/v1/image/team/mine/", "/api/v1/image/team/a/", "/api/v1/image/team/b/"]
    assert [m["resource_uri"] for m in _ws_payloads(early.writes[0])] == uris
    assert [(m["resource_uri"], m["state"]) for m in _ws_payloads(late.writes[0])] == [
        (uris[1], "Success"), (uris[2], "Empty")]
    hub.add(_change("team/c"))
    hub.flush()
    assert len(early.writes) == len(late.writes) == 2 and early.writes[1] is late.writes[1]


async def test_a_change_heard_mid_round_reaches_everyone_once_in_order(monkeypatch) -> None:
    """A round writes to a slice of subscribers per turn of the event loop: a change heard
    while it runs goes to the subscribers it has not reached yet in the same write, to the
    others in the next round; each client gets every change once, in commit order, and the
    log is empty once everyone has had it."""
    monkeypatch.setattr(stream, "SLICE", 2)
    hub = EventHub("postgresql://unused", window=0)
    transports = [FakeTransport() for _ in range(7)]
    for t in transports:
        hub.subscribe(1, t, WS)
    hub.add(_change("team/a"))
    await asyncio.sleep(0)  # the round's first slice
    assert sum(bool(t.writes) for t in transports) == 2
    hub.add(_change("team/b"))
    for _ in range(20):
        await asyncio.sleep(0)
    uris = ["/api/v1/image/team/a/", "/api/v1/image/team/b/"]
    for t in transports:
        assert [m["resource_uri"] for w in t.writes for m in _ws_payloads(w)] == uris
    assert sorted(len(t.writes) for t in transports) == [1] * 5 + [2] * 2
    assert hub._log == [] and hub.delivered == 14


async def test_costly_rounds_go_out_less_often(monkeypatch) -> None:
    """A round whose CPU time passes EVENTS_FANOUT_SHARE of the time since it started pushes
    the next one back: with many clients the batches grow instead of the fan-out taking a
    whole core from the processes beside it."""
    hub = EventHub("postgresql://unused", window=0.1, fanout_share=0.5)
    t = FakeTransport()
    hub.subscribe(1, t, WS)
    cpu = iter([10.0, 10.2])  # the round's writes take 0.2 s of CPU
    monkeypatch.setattr(stream.time, "thread_time", lambda: next(cpu, 10.2))
    hub.add(_change("team/a"))
    await asyncio.sleep(0)  # the first change after a quiet spell goes out at once
    assert len(t.writes) == 1
    hub.add(_change("team/b"))
    loop = asyncio.get_running_loop()
    assert isinstance(hub._flush_at, asyncio.TimerHandle)
    assert 0.3 < hub._flush_at.when() - loop.time() <= 0.4, "0.2 s of CPU at a share of 0.5: 0.4 s apart"


async def test_catalog_changes_of_a_shadowed_name_skip_the_account_that_shadows_it() -> None:
    hub = EventHub("postgresql://unused", window=0)
    mine, other = FakeTransport(), FakeTransport()
    hub.subscribe(7, mine, WS, ["team/a"])
    hub.subscribe(8, other, WS)
    hub.add(_change("team/a", state="Building"))  # the catalog's team/a: not what 7 sees
    hub.add(_change("team/a", state="Failed", owner=7))
    hub.add(_change("team/b", action="create", state="Empty", owner=7))  # 7 now shadows team/b
    hub.add(_change("team/b", state="Building"))
    hub.add(_change("team/c"))
    hub.flush()

    def got(t: FakeTransport) -> list[tuple[str, str]]:
        return [(m["resource_uri"], m["state"]) for w in t.writes for m in _ws_payloads(w)]

    a, b, c = "/api/v1/image/team/a/", "/api/v1/image/team/b/", "/api/v1/image/team/c/"
    assert got(mine) == [(a, "Failed"), (b, "Empty"), (c, "Success")]
    assert got(other) == [(a, "Building"), (b, "Building"), (c, "Success")]
    hub.add(_change("team/a", action="delete", state="Failed", owner=7))  # its own team/a goes
    hub.add(_change("team/a", state="Success"))
    hub.flush()
    assert got(mine)[3:] == [(a, "Failed"), (a, "Success")]


async def test_a_lagging_subscriber_alone_is_closed() -> None:
    hub = EventHub("postgresql://unused", window=0, buffer_size=4)
    slow, fast = FakeTransport(backlog=5000), FakeTransport()
    s_slow, s_fast = hub.subscribe(1, slow, WS), hub.subscribe(1, fast, SSE)
    hub.add(_change("team/a"))
    hub.flush()
    assert s_slow.reason is not None and "lagging" in s_slow.reason and not slow.writes
    assert s_fast.reason is None and fast.writes and hub.dropped == 1


async def test_the_sync_of_a_big_image_is_one_message(client: TestClient, make_user: MakeUser,
                                                      pool: asyncpg.Pool) -> None:
    user = await make_user()
    li = await Listener.websocket(client.session, str(client.make_url("/api/v1/events/")), headers=user.headers)
    try:
        name = f"example.com/{unique('big')}/app"
        image_id = await insert_image(pool, name=name, owner_id=user.account.id)
        uri = f"/api/v1/image/{name}/"
        await li.wait(lambda x: len(x.about(uri)) == 1)
        await pool.execute("INSERT INTO tags (image_id, name, state) SELECT $1, 'v' || g, 'Success'"
                           " FROM generate_series(1, 10000) AS g", image_id)
        await pool.execute("UPDATE tags SET state = 'Building' WHERE image_id = $1", image_id)
        await li.wait(lambda x: len(x.about(uri)) >= 3)
        await asyncio.sleep(0.3)
        assert li.about(uri) == [("image", "create", uri, "Empty"), ("image", "update", uri, "Success"),
                                 ("image", "update", uri, "Building")]
    finally:
        await li.close()


async def test_streams_per_account_are_capped(settings: Settings, make_user: MakeUser) -> None:
    app = create_app(dataclasses.replace(settings, events_max_per_account=2))
    async with TestClient(TestServer(app)) as c:
        alice, bob = await make_user(), await make_user()
        url = str(c.make_url("/api/v1/events/"))
        open_ = [await c.session.ws_connect(url, headers=alice.headers) for _ in range(2)]
        try:
            third = await c.session.ws_connect(url, headers=alice.headers)
            msg = await third.receive(timeout=5)
            assert msg.type == WSMsgType.TEXT and "event streams open already" in msg.json()["error"]
            closing = await third.receive(timeout=5)
            assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert third.close_code == 1008
            resp = await c.session.get(url, headers={**alice.headers, "Accept": "text/event-stream"})
            assert resp.status == 429 and "close one first" in (await resp.json())["error"]
            assert resp.headers["Retry-After"]
            other = await Listener.sse(c.session, url, headers=bob.headers)  # another account is not limited
            await other.close()
        finally:
            for ws in open_:
                await ws.close()
        again = await c.session.ws_connect(url, headers=alice.headers)  # a closed stream frees its place
        await asyncio.sleep(0.1)
        assert not again.closed
        await again.close()


async def test_the_stream_app_serves_events_and_the_api_can_leave_them(
    settings: Settings, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    user = await make_user()
    api = create_app(dataclasses.replace(settings, events_in_web=False))
    async with TestClient(TestServer(create_stream_app(settings))) as sc, TestClient(TestServer(api)) as wc:
        resp = await wc.get("/api/v1/events/", headers={**user.headers, "Accept": "text/event-stream"})
        assert resp.status == 503 and "registry-sync stream" in (await resp.json())["error"]
        assert api[EVENT_HUB].connected and not api[EVENT_HUB].serve_events  # Hub lookups still wake
        assert (await sc.get("/readyz")).status == 200
        li = await Listener.websocket(sc.session, str(sc.make_url("/api/v1/events/")), headers=user.headers)
        try:
            name = f"example.com/{unique('st')}/app"
            await insert_image(pool, name=name)
            await li.wait(lambda x: len(x.about(f"/api/v1/image/{name}/")) == 1)
        finally:
            await li.close()
        assert (await sc.get("/api/v1/events/", headers={"Accept": "text/event-stream"})).status == 401
        text = await (await sc.get("/metrics")).text()
        assert "registry_sync_stream_subscribers" in text and "registry_sync_stream_messages_total" in text


async def test_a_client_that_stops_reading_is_dropped(settings: Settings, make_user: MakeUser) -> None:
    """A real socket nobody reads: once the kernel buffers are full the hub finds the bytes
    piling up, closes that subscriber, and the others keep getting messages."""
    app = create_app(dataclasses.replace(settings, events_buffer=8))
    async with TestClient(TestServer(app)) as c:
        user = await make_user()
        url = str(c.make_url("/api/v1/events/"))
        reader = await Listener.websocket(c.session, url, headers=user.headers)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect((c.host, c.port))
        key = user.headers["Authorization"]
        raw.sendall(f"GET /api/v1/events/ HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
                    "Accept: text/event-stream\r\n\r\n".encode())
        try:
            hub = app[EVENT_HUB]
            for _ in range(100):
                if hub.subscribers == 2:
                    break
                await asyncio.sleep(0.02)
            slow = next(s for s in hub._everyone if s.kind == SSE)
            slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            for i in range(3000):
                hub.add(_change(f"team/x{i}", action="create", state="Empty"))
                if i % 100 == 99:
                    hub.flush()
                    await asyncio.sleep(0)
            assert slow.reason is not None and "lagging" in slow.reason
            await reader.wait(lambda x: len(x.about("/api/v1/image/team/x")) == 3000, within=20)
            assert reader.messages[-1]["type"] != "error"
        finally:
            raw.close()
            await reader.close()


@pytest.mark.timeout(120)
def test_registry_sync_stream_runs_on_its_own_port(settings: Settings) -> None:
    port = free_port()
    svc = Service(["stream", "--port", str(port)],
                  {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "LOG_FORMAT": "json",
                   "BIND_HOST": "127.0.0.1"})
    try:
        wait_for(lambda: "events.listening" in svc.output(), 30, "the stream process")
        asyncio.run(_one_event(settings, port))
    finally:
        assert svc.stop() == 0, svc.output()[-2000:]


async def _one_event(settings: Settings, port: int) -> None:
    from core.accounts import create_account

    conn = await asyncpg.connect(settings.database_url)
    try:
        account, key = await create_account(conn, unique("sp"))
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{port}/api/v1/events/", headers={"Authorization": f"ApiKey {account.username}:{key}"}
        ) as ws:
            await asyncio.sleep(0.2)
            name = f"example.com/{unique('sp')}/app"
            registry = await conn.fetchval("INSERT INTO registries (host, name) VALUES ('example.com', 'e')"
                                           " ON CONFLICT (host) DO UPDATE SET host = EXCLUDED.host RETURNING id")
            await conn.execute("INSERT INTO images (name, registry_id, repository) VALUES ($1, $2, $1)", name, registry)
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.TEXT and msg.json()["resource_uri"] == f"/api/v1/image/{name}/"
    finally:
        await conn.close()
