"""The events stream (SPEC §5): `GET /api/v1/events/` as a WebSocket or as Server-Sent Events.

Postgres triggers (schema.sql, freshness section) NOTIFY `registry_sync_events` from the
transaction that changes an image or a tag, so only committed changes are heard, in commit
order. Each API process holds one LISTEN connection (`listen`, in app.cleanup_ctx) and fans
every notification out in-process: the message is serialized once and offered to the
subscribers allowed to see it (the shared catalog: everyone; an own image: its owner).

Slow consumers cannot slow anyone else: the fan-out never awaits, each subscriber has a
bounded buffer, and a subscriber whose buffer overflows (or whose socket does not take a
message within SEND_TIMEOUT) is sent one `{"type": "error"}` message and disconnected; it
reconnects and re-reads what it needs. If the LISTEN connection is lost, every subscriber is
disconnected the same way (events may have been missed) and the hub reconnects.

The same connection listens on `registry_sync_inspect`, which wakes the requests waiting for
a Docker Hub lookup (api/inspect.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import WSCloseCode, web

from api import serializers
from api.auth import request_account
from api.errors import BadRequestError, UnavailableError
from api.keys import SETTINGS
from core.accounts import Account

log = structlog.get_logger("api.events")

EVENTS_CHANNEL = "registry_sync_events"
INSPECT_CHANNEL = "registry_sync_inspect"
SEND_TIMEOUT = 10.0  # a socket that takes no message for this long is a lagging client
HEALTH_EVERY = 10.0  # seconds between checks that the LISTEN connection still answers
WATCHDOG_EVERY = 1.0  # seconds between looks for sends that hang (cheaper than a timer per send)
RECONNECT_MAX = 10.0


class StreamClosedError(Exception):
    """The subscriber was closed: `Subscriber.reason` says why."""


@dataclass(frozen=True)
class Message:
    """One event, encoded once for every subscriber: WebSocket text and an SSE record."""

    text: str
    sse: bytes

    @classmethod
    def of(cls, body: dict[str, Any]) -> Message:
        text = orjson.dumps(body).decode()
        return cls(text, f"data: {text}\n\n".encode())


class Subscriber:
    """One connected client: a bounded buffer of messages, and the task that sends them."""

    def __init__(self, account_id: int, size: int) -> None:
        self.account_id = account_id
        self.size = size
        self.reason: str | None = None
        self.task: asyncio.Task[Any] | None = None  # the sender, cancelled if a send hangs
        self.sending_since: float | None = None  # loop time a send began; None when idle
        self._items: deque[Message] = deque()
        self._ready = asyncio.Event()

    def offer(self, message: Message) -> None:
        """Never blocks: a full buffer closes the subscriber instead."""
        if self.reason is not None:
            return
        if len(self._items) >= self.size:
            self.close("lagging: the client did not keep up with the stream")
            return
        self._items.append(message)
        self._ready.set()

    def close(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._items.clear()
            self._ready.set()

    async def next(self, idle: float | None) -> Message | None:
        """The next message; None after `idle` s without one (time for a keep-alive).
        Raises StreamClosedError once closed."""
        if self.reason is None and not self._items:
            self._ready.clear()
            # asyncio.timeout, not wait_for: no extra task per wake-up of each subscriber
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._ready.wait()
        if self.reason is not None:
            raise StreamClosedError(self.reason)
        return self._items.popleft() if self._items else None


class EventHub:
    """The process's LISTEN connection and its subscribers."""

    def __init__(self, dsn: str, buffer_size: int) -> None:
        self._dsn = dsn
        self.buffer_size = buffer_size
        self._everyone: set[Subscriber] = set()
        self._by_account: dict[int, set[Subscriber]] = {}
        self._inspect_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0  # messages offered to subscribers, for tests and benchmarks

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def subscribers(self) -> int:
        return len(self._everyone)

    # ------------------------------------------------------------ connection

    async def start(self) -> None:
        """Connect once (fail fast at startup), then keep the connection in the background."""
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="events-listen")

    async def stop(self) -> None:
        self.close_all("the server is shutting down")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close(timeout=2)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _: self._lost.set())
            await conn.add_listener(EVENTS_CHANNEL, self._on_event)
            await conn.add_listener(INSPECT_CHANNEL, self._on_inspect)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        log.info("events.listening")

    async def _supervise(self) -> None:
        delay = 0.5
        loop = asyncio.get_running_loop()
        next_health = loop.time() + HEALTH_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), WATCHDOG_EVERY)
            self._watchdog(loop.time())
            if loop.time() < next_health and not self._lost.is_set():
                continue
            next_health = loop.time() + HEALTH_EVERY
            conn = self._conn
            if conn is not None and not self._lost.is_set():
                try:
                    await conn.execute("SELECT 1", timeout=5)
                    continue
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    pass
            log.warning("events.listen_lost")
            self._conn = None
            if conn is not None:
                conn.terminate()
            # Events may have been missed: say so rather than let clients believe they are current.
            self.close_all("the events stream was interrupted; reconnect")
            while self._conn is None:
                try:
                    await self._connect()
                    delay = 0.5
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("events.reconnect_failed", error=type(exc).__name__, retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX)

    def _watchdog(self, now: float) -> None:
        for sub in tuple(self._everyone):
            if sub.sending_since is not None and now - sub.sending_since > SEND_TIMEOUT:
                sub.close("lagging: the client did not read the stream")
                if sub.task is not None:
                    sub.task.cancel()

    # ------------------------------------------------------------ fan-out

    def _on_event(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = orjson.loads(payload)
            message = Message.of(serializers.event(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.exception("events.bad_payload")
            return
        owner = data.get("owner")
        targets = self._everyone if owner is None else self._by_account.get(owner, ())
        for sub in tuple(targets):
            sub.offer(message)
        self.delivered += len(targets)

    def _on_inspect(self, _conn: object, _pid: int, _channel: str, name: str) -> None:
        for fut in self._inspect_waiters.pop(name, ()):
            if not fut.done():
                fut.set_result(None)

    @contextlib.contextmanager
    def inspection(self, name: str) -> Iterator[asyncio.Future[None]]:
        """A future resolved when the worker reports on the Hub lookup of `name`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inspect_waiters.setdefault(name, set()).add(fut)
        try:
            yield fut
        finally:
            waiting = self._inspect_waiters.get(name)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._inspect_waiters[name]

    def subscribe(self, account: Account) -> Subscriber:
        sub = Subscriber(account.id, self.buffer_size)
        self._everyone.add(sub)
        self._by_account.setdefault(account.id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._everyone.discard(sub)
        mine = self._by_account.get(sub.account_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._by_account[sub.account_id]

    def close_all(self, reason: str) -> None:
        for sub in tuple(self._everyone):
            sub.close(reason)


EVENT_HUB = web.AppKey("event_hub", EventHub)


async def listen(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's one LISTEN connection."""
    s = app[SETTINGS]
    hub = EventHub(s.database_url, s.events_buffer)
    await hub.start()
    app[EVENT_HUB] = hub
    yield
    await hub.stop()


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end the open streams first, or the server would wait for them to time out
    before cleanup_ctx (which closes the hub) ever runs."""
    if EVENT_HUB in app:
        app[EVENT_HUB].close_all("the server is shutting down")


# ---------------------------------------------------------------- the endpoint

Send = Callable[[Message], Awaitable[object]]


async def _pump(sub: Subscriber, send: Send, ping: Callable[[], Awaitable[object]] | None,
                every: float) -> None:
    """Send the subscriber's messages (and keep-alives) until it is closed. The hub's watchdog
    cancels this task when one send takes longer than SEND_TIMEOUT (a lagging client)."""
    sub.task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    while True:
        try:
            message = await sub.next(every if ping is not None else None)
        except StreamClosedError:
            return
        sub.sending_since = loop.time()
        if message is not None:
            await send(message)
        elif ping is not None:
            await ping()
        sub.sending_since = None


def _error_message(reason: str) -> Message:
    return Message.of({"type": "error", "error": reason})


async def stream(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/events/`: a WebSocket when the client asks to upgrade, else SSE when it
    accepts text/event-stream; anything else is a 400 that says how to connect."""
    hub = request.app[EVENT_HUB]
    account = request_account(request)
    wants_ws = request.headers.get("Upgrade", "").lower() == "websocket"
    if not wants_ws and "text/event-stream" not in request.headers.get("Accept", ""):
        raise BadRequestError(
            "the events stream is a WebSocket (send an Upgrade) or Server-Sent Events "
            "(send 'Accept: text/event-stream')"
        )
    if not hub.connected:
        raise UnavailableError("the events stream is reconnecting to the database; try again shortly",
                               headers={"Retry-After": "2"})
    every = request.app[SETTINGS].events_ping_seconds
    if wants_ws:
        return await _websocket(request, hub, account, every)
    return await _sse(request, hub, account, every)


async def _websocket(request: web.Request, hub: EventHub, account: Account, every: float) -> web.StreamResponse:
    # aiohttp's heartbeat pings every `every` s and closes a peer that does not answer. No
    # permessage-deflate: it would compress every message once per client (the fan-out's cost).
    ws = web.WebSocketResponse(heartbeat=every, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    sub = hub.subscribe(account)
    log.info("events.connected", transport="websocket", subscribers=hub.subscribers)

    async def drain() -> None:  # clients send nothing we use; reading notices their close
        async for _ in ws:
            pass

    reader = asyncio.create_task(drain())
    writer = asyncio.create_task(_pump(sub, lambda m: ws.send_str(m.text), None, every))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.unsubscribe(sub)
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    if sub.reason is not None and not ws.closed:
        with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
            await asyncio.wait_for(ws.send_str(_error_message(sub.reason).text), 1.0)
        code = WSCloseCode.GOING_AWAY if "shutting down" in sub.reason else WSCloseCode.TRY_AGAIN_LATER
        await ws.close(code=code, message=sub.reason[:100].encode())
    log.info("events.disconnected", transport="websocket", reason=sub.reason or "client closed")
    return ws


async def _sse(request: web.Request, hub: EventHub, account: Account, every: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    })
    await resp.prepare(request)
    sub = hub.subscribe(account)
    log.info("events.connected", transport="sse", subscribers=hub.subscribers)

    async def send(message: Message) -> None:
        await resp.write(message.sse)

    async def ping() -> None:
        await resp.write(b": ping\n\n")

    # The sender is a task of its own, so the watchdog can cancel it without cancelling us.
    pump = asyncio.create_task(_pump(sub, send, ping, every))
    try:
        await ping()
        await asyncio.wait({pump})
        if not pump.cancelled() and isinstance(pump.exception(), ConnectionError | RuntimeError):
            sub.close("client closed")  # the client went away
        elif sub.reason is not None:
            await asyncio.wait_for(send(_error_message(sub.reason)), 1.0)
    except (ConnectionError, TimeoutError, RuntimeError):
        pass  # the client went away
    finally:
        pump.cancel()
        hub.unsubscribe(sub)
    log.info("events.disconnected", transport="sse", reason=sub.reason or "client closed")
    return resp
