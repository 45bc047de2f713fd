"""`/ui/live/`: the pages' live updates, as HTML fragments for htmx's SSE extension.

A page opens one EventSource here (`sse-connect`), naming what it shows: the images page its
view (dashboard/listing.py View), the image page `?image=<name>`. The handler subscribes to
the process's events hub (api/stream.py) with the session's account, exactly as the API's
events stream does, so the hub's one rule decides what reaches it: an account's own images
and the catalog's it does not shadow. Its "transport" is a HubInbox: the hub writes the SSE
records it would send a browser, the inbox reads the messages back. Each message only says
which image changed; the fragment is rendered from a fresh read through the API's queries as
the account (`get_image`: a name it cannot see renders nothing), never from the message.

Every update is one SSE event `update` whose data are elements with `hx-swap-oob`: the page's
element of the same id is replaced (or deleted). The first update, sent on connecting,
renders the page's live parts afresh: what changed between the page's render and the
connection (or during a reconnection) is not lost.

- images page: a change of an image on the page replaces its row (or deletes it); an image
  created while the first page is shown re-renders the listing (it takes its place in order).
- image page: any change of the image or its tags re-renders its summary and its tag table.

Changes that arrive together (within LIVE_BATCH_SECONDS) are rendered once. EVENTS_IN_WEB=0
(the hub of this process hears no events): answered 204, which tells the browser not to
reconnect; the page says it is not live.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import aiohttp_jinja2
import asyncpg
import orjson
import structlog
from aiohttp import web

from api import queries
from api.keys import POOL, SETTINGS
from api.serializers import API
from api.stream import EVENT_HUB
from api.stream_clients import MESSAGE_BYTES, SSE_UNCHUNKED, TooManyStreamsError
from dashboard import listing
from dashboard.guard import Ctx, page
from dashboard.image_page import image_context
from dashboard.images_page import parse_view, view_query

log = structlog.get_logger("dashboard.live")

LIVE_BATCH_SECONDS = 0.05
IMAGE_PREFIX = f"{API}/image/"


class HubInbox(asyncio.Transport):
    """The transport the hub writes one subscriber's SSE records to, read back as messages.
    Its buffer size is what the hub measures a lagging client by (MESSAGE_BYTES a message)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: deque[dict[str, Any]] = deque()
        self.arrived = asyncio.Event()
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        for record in bytes(data).split(b"\n\n"):
            if record.startswith(b"data: "):
                self.messages.append(orjson.loads(record[6:]))
        self.arrived.set()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_write_buffer_size(self) -> int:
        return len(self.messages) * MESSAGE_BYTES

    def take(self) -> list[dict[str, Any]]:
        out = list(self.messages)
        self.messages.clear()
        self.arrived.clear()
        return out


def image_name(message: dict[str, Any]) -> str:
    """The name of the image a stream message is about (its own, or its tag's parent)."""
    uri = message["parents"][0] if message["type"] == "imagetag" else message["resource_uri"]
    return str(uri).removeprefix(IMAGE_PREFIX).removesuffix("/")


def _render(app: web.Application, template: str, **values: Any) -> str:
    env = aiohttp_jinja2.get_env(app)
    return env.get_template(template).render(oob=True, **values)


def sse(html: str) -> bytes:
    """One `update` event; every line of the fragment is a `data:` line."""
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: update\n{lines}\n".encode()


class ListWatch:
    """The images page: its view and the names its rows show."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.view = parse_view(ctx.request.query)
        self.shown: set[str] = set()

    async def snapshot(self) -> str:
        app, account = self.ctx.request.app, self.ctx.user
        result = await listing.list_view(app[POOL], account.id, self.view)
        self.shown = {r["name"] for r in result.rows}
        return _render(app, "_listing.html", result=result, view=self.view, view_query=view_query,
                       filtered=bool(self.view.prefix or self.view.state or self.view.registry) or not self.view.mine)

    async def changes(self, messages: list[dict[str, Any]]) -> str:
        app, account = self.ctx.request.app, self.ctx.user
        names = dict.fromkeys(image_name(m) for m in messages)
        created = any(m["type"] == "image" and m["action"] == "create" and image_name(m) not in self.shown
                      for m in messages)
        if created and self.view.after is None and self.view.before is None:
            return await self.snapshot()
        parts = []
        for name in names:
            if name not in self.shown:
                continue
            row = await queries.get_image(app[POOL], account.id, name)
            if row is None:
                self.shown.discard(name)
            parts.append(_render(app, "_row.html", r=row, name=name))
        return "\n".join(parts)


class ImageWatch:
    """The image page: one image, its summary and its tag table."""

    def __init__(self, ctx: Ctx, name: str) -> None:
        self.ctx = ctx
        self.name = name

    async def snapshot(self) -> str:
        app, account = self.ctx.request.app, self.ctx.user
        image = await queries.get_image(app[POOL], account.id, self.name)
        if image is None:
            return _render(app, "_gone.html", name=self.name)
        values = await image_context(app, account, image, self.ctx.request.query.get("after", ""))
        return _render(app, "_summary.html", **values) + "\n" + _render(app, "_tags.html", **values)

    async def changes(self, messages: list[dict[str, Any]]) -> str:
        if any(image_name(m) == self.name for m in messages):
            return await self.snapshot()
        return ""


async def _write(resp: web.StreamResponse, html: str) -> None:
    if html:
        await resp.write(sse(html))


@page()
async def live(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    hub = request.app[EVENT_HUB]
    account = ctx.user
    if not hub.serve_events:
        return web.Response(status=204)
    try:
        hub.check_room(account.id)
    except TooManyStreamsError:
        return web.Response(status=429, headers={"Retry-After": "30"})
    name = request.query.get("image")
    watch: ListWatch | ImageWatch = ImageWatch(ctx, name) if name else ListWatch(ctx)
    shadowed = await queries.shadowed_names(request.app[POOL], account.id)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    inbox = HubInbox()
    sub = hub.subscribe(account.id, inbox, SSE_UNCHUNKED, shadowed)
    every = request.app[SETTINGS].events_ping_seconds
    try:
        await _write(resp, await watch.snapshot())
        while sub.reason is None:
            arrived: asyncio.Future[object] = asyncio.ensure_future(inbox.arrived.wait())
            ended: asyncio.Future[object] = asyncio.shield(sub.done)
            done, _ = await asyncio.wait({arrived, ended}, timeout=every, return_when=asyncio.FIRST_COMPLETED)
            arrived.cancel()
            if not done:
                await resp.write(b": ping\n\n")
                continue
            if sub.reason is not None:
                break
            await asyncio.sleep(LIVE_BATCH_SECONDS)  # the rest of a burst joins this render
            await _write(resp, await watch.changes(inbox.take()))
    except (ConnectionError, RuntimeError):
        pass  # the browser went away
    except asyncpg.PostgresError as exc:
        log.warning("ui.live_failed", error=type(exc).__name__)
    finally:
        hub.unsubscribe(sub)
        inbox.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
    return resp
