"""Test clients of the events stream: a WebSocket and an SSE reader that collect messages."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson


class Listener:
    """Collects the stream's JSON messages in the background (`messages`); `closed` when the
    server ends the stream."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pings = 0
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._close: list[Any] = []

    @classmethod
    async def websocket(cls, session: aiohttp.ClientSession, url: str, **kw: Any) -> Listener:
        self = cls()
        ws = await session.ws_connect(url, **kw)
        self._close.append(ws)

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.messages.append(orjson.loads(msg.data))
            self.closed.set()

        self._task = asyncio.create_task(read())
        return self

    @classmethod
    async def sse(cls, session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Listener:
        self = cls()
        resp = await session.get(url, headers={**(headers or {}), "Accept": "text/event-stream"})
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        self._close.append(resp)

        async def read() -> None:
            try:
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data: "):
                        self.messages.append(orjson.loads(line.removeprefix("data: ")))
                    elif line.startswith(": ping"):
                        self.pings += 1
            except aiohttp.ClientPayloadError:
                pass
            self.closed.set()

        self._task = asyncio.create_task(read())
        return self

    def about(self, uri_prefix: str) -> list[tuple[str, str, str, str]]:
        """(type, action, resource_uri, state) of the messages whose URI starts with the prefix."""
        return [
            (m["type"], m["action"], m["resource_uri"], m["state"])
            for m in self.messages if m.get("resource_uri", "").startswith(uri_prefix)
        ]

    async def wait(self, predicate: Any, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not predicate(self):
            assert time.monotonic() < deadline, f"timed out; got {self.messages}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for c in self._close:
            c.close() if isinstance(c, aiohttp.ClientResponse) else await c.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
