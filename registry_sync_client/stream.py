"""The live events stream, `GET /api/v1/events/`, as an async iterator that reconnects.

    async with api.events() as events:
        async for event in events:
            print(event.datetime, event.full_name, event.state)

Transports: a WebSocket (default; aiohttp's heartbeat notices a dead peer) or Server-Sent
Events (`transport="sse"`; a stream silent for longer than two keep-alives is dead). When the
stream drops (network, a restart of the service, the service closing a lagging client), the
iterator connects again after a delay that doubles from `backoff` to `max_backoff`, and goes
on. Events that happened while it was away are not replayed: the service keeps no backlog,
so a consumer that must not miss a change re-reads what it needs on "reconnecting".

Errors that another try cannot fix end the iteration with their exception: wrong
credentials (AuthError), a 400/403/404. With `reconnect=False` any drop ends it: an error
when the stream could not be read, StopAsyncIteration when the service closed it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import aiohttp

from registry_sync_client.errors import (
    ServerError,
    ThrottledError,
    UnavailableError,
    UnreachableError,
    error_for,
    unreachable,
)
from registry_sync_client.models import Event

if TYPE_CHECKING:
    from registry_sync_client.client import AsyncClient

Transport = Literal["websocket", "sse"]
StatusCallback = Callable[[str, str], object]  # (state: "connected" | "reconnecting", detail)

# Worth another try: the service (or the way to it) is down or busy, not the request wrong.
RETRYABLE = (UnreachableError, UnavailableError, ServerError, ThrottledError)


class _Connection(Protocol):
    async def receive(self) -> dict[str, Any] | None: ...  # None: the stream ended
    async def close(self) -> None: ...


class _WebSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, client: AsyncClient, url: str, heartbeat: float) -> _WebSocket:
        try:
            ws = await client.session().ws_connect(
                url, headers=client.headers, heartbeat=heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise error_for(exc.status, {}, url=url) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(url, exc, client.timeout) from None
        return cls(ws)

    async def receive(self) -> dict[str, Any] | None:
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                decoded = _decode(msg.data)
                if decoded is not None:
                    return decoded
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
                return None

    async def close(self) -> None:
        await self.ws.close()


class _ServerSentEvents:
    def __init__(self, resp: aiohttp.ClientResponse, url: str) -> None:
        self.resp = resp
        self.url = url

    @classmethod
    async def open(cls, client: AsyncClient, url: str, heartbeat: float) -> _ServerSentEvents:
        # No total timeout: the stream lasts; a read that waits past two keep-alives is a drop.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=client.timeout, sock_read=2 * heartbeat + 5)
        headers = {**client.headers, "Accept": "text/event-stream"}
        try:
            resp = await client.session().get(url, headers=headers, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(url, exc, client.timeout) from None
        if resp.status != 200:
            try:
                body = _decode(await resp.read())
            except (aiohttp.ClientError, TimeoutError):
                body = None
            finally:
                resp.release()
            raise error_for(resp.status, body, url=url, retry_after=resp.headers.get("Retry-After"))
        return cls(resp, url)

    async def receive(self) -> dict[str, Any] | None:
        data: list[str] = []
        try:
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    return None
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line.removeprefix("data:").removeprefix(" "))
                elif not line and data:
                    decoded = _decode("\n".join(data))
                    data.clear()
                    if decoded is not None:
                        return decoded
                # comments (": ping") and other fields carry nothing for us
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(self.url, exc, None) from None

    async def close(self) -> None:
        self.resp.close()


def _decode(text: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class EventStream:
    """An async iterator of `Event`s that reconnects on its own; close it (`aclose()` or
    `async with`) when done. Built by `AsyncClient.events()`."""

    def __init__(self, client: AsyncClient, *, transport: Transport = "websocket", reconnect: bool = True,
                 backoff: float = 0.5, max_backoff: float = 10.0, heartbeat: float = 25.0,
                 on_status: StatusCallback | None = None) -> None:
        if transport not in ("websocket", "sse"):
            raise ValueError(f"transport must be 'websocket' or 'sse', not {transport!r}")
        self.client = client
        self.transport = transport
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.heartbeat = heartbeat
        self.on_status = on_status
        self.url = client.url("events/")
        self.connects = 0  # successful connections so far (1 + reconnections)
        self._conn: _Connection | None = None
        self._delay = backoff
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while not self._closed:
            try:
                if self._conn is None:
                    await self._open()
                assert self._conn is not None
                message = await self._conn.receive()
            except RETRYABLE as exc:
                if not self.reconnect:
                    await self.aclose()
                    raise
                reason = str(exc)
            except BaseException:
                await self.aclose()  # cancelled, or an error no retry can fix
                raise
            else:
                if message is not None and message.get("type") != "error":
                    return Event.from_json(message)
                # The service says why before it closes a stream (lagging, shutting down).
                reason = str(message.get("error")) if message else "the service closed the stream"
                if not self.reconnect:
                    await self.aclose()
                    raise StopAsyncIteration
            await self._drop()
            self._status("reconnecting", f"{reason}; again in {self._delay:g} s")
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.max_backoff)
        raise StopAsyncIteration

    async def _open(self) -> None:
        opener = _WebSocket.open if self.transport == "websocket" else _ServerSentEvents.open
        self._conn = await opener(self.client, self.url, self.heartbeat)
        self.connects += 1
        self._delay = self.backoff
        self._status("connected", self.url)

    def _status(self, state: str, detail: str) -> None:
        if self.on_status is not None:
            self.on_status(state, detail)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass  # it is gone either way

    async def aclose(self) -> None:
        self._closed = True
        await self._drop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

