"""`GET /api/v1/events/` (a WebSocket, or Server-Sent Events) and `registry-sync stream`.

The endpoint subscribes the caller's connection to the process's hub (api/stream.py) and then
only watches it: the hub writes the messages itself. A WebSocket handler reads what the client
sends (pongs, its close); an SSE handler sends a keep-alive comment every EVENTS_PING_SECONDS.
When the hub closes a subscriber (lagging, the LISTEN connection lost, shutdown) the client
gets `{"type": "error", "error": <reason>}` and the stream ends; past EVENTS_MAX_PER_ACCOUNT
streams of one account on one process, a new WebSocket is closed with code 1008 and the
reason, a new SSE request answered 429.

`registry-sync web` serves the endpoint too unless EVENTS_IN_WEB=0. `registry-sync stream`
serves only the endpoint (plus health and metrics) on STREAM_PORT, so the fan-out to many
clients runs in processes of its own that operators scale apart from the API; each process
has its own LISTEN connection and serves the clients connected to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import orjson
import structlog
from aiohttp import WSCloseCode, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import outage, queries, throttle
from api.auth import AUTH_CACHE, AuthCache, auth_middleware, request_account
from api.errors import BadRequestError, ThrottledError, UnavailableError, error_middleware, json_response
from api.keys import POOL, SETTINGS
from api.stream import EVENT_HUB, EventHub
from api.stream_clients import SSE, SSE_UNCHUNKED, WS, TooManyStreamsError
from core import metrics
from core.db import create_pool
from core.settings import Settings

log = structlog.get_logger("api.stream")


def _error(reason: str) -> bytes:
    return orjson.dumps({"type": "error", "error": reason})


async def stream(request: web.Request) -> web.StreamResponse:
    """A WebSocket when the client asks to upgrade, else SSE when it accepts
    text/event-stream; anything else is a 400 that says how to connect."""
    hub = request.app[EVENT_HUB]
    account = request_account(request)
    wants_ws = request.headers.get("Upgrade", "").lower() == "websocket"
    if not wants_ws and "text/event-stream" not in request.headers.get("Accept", ""):
        raise BadRequestError(
            "the events stream is a WebSocket (send an Upgrade) or Server-Sent Events "
            "(send 'Accept: text/event-stream')"
        )
    if not hub.serve_events:
        raise UnavailableError("this process does not serve the events stream; the `registry-sync stream` "
                               "processes do (STREAM_PORT)", headers={"Retry-After": "60"})
    if not hub.connected:
        raise UnavailableError("the events stream is reconnecting to the database; try again shortly",
                               headers={"Retry-After": "2"})
    every = request.app[SETTINGS].events_ping_seconds
    if not wants_ws:  # (a WebSocket over the cap is told after the upgrade, in its own protocol)
        try:
            hub.check_room(account.id)
        except TooManyStreamsError as exc:
            raise ThrottledError(str(exc), headers={"Retry-After": "30"}) from None
    shadowed = await queries.shadowed_names(request.app[POOL], account.id)
    if wants_ws:
        return await _websocket(request, hub, account.id, every, shadowed)
    return await _sse(request, hub, account.id, every, shadowed)


async def _websocket(request: web.Request, hub: EventHub, account_id: int, every: float,
                     shadowed: list[str]) -> web.StreamResponse:
    # aiohttp's heartbeat pings every `every` s and closes a peer that does not answer. No
    # permessage-deflate: the hub writes the same uncompressed frames to every client.
    ws = web.WebSocketResponse(heartbeat=every, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    assert request.transport is not None
    try:
        sub = hub.subscribe(account_id, request.transport, WS, shadowed)
    except TooManyStreamsError as exc:
        await _close_ws(request, ws, str(exc), WSCloseCode.POLICY_VIOLATION)
        return ws

    async def drain() -> None:  # clients send nothing we use; reading notices their close
        async for _ in ws:
            pass

    reader = asyncio.create_task(drain())
    try:
        await asyncio.wait({reader, sub.done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.unsubscribe(sub)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    if sub.reason is not None and not ws.closed:
        code = WSCloseCode.GOING_AWAY if "shutting down" in sub.reason else WSCloseCode.TRY_AGAIN_LATER
        await _close_ws(request, ws, sub.reason, code)
    return ws


async def _close_ws(request: web.Request, ws: web.WebSocketResponse, reason: str, code: int) -> None:
    """Tell the client why, close with `code`; a client that does not take it is cut off."""
    try:
        async with asyncio.timeout(2.0):
            await ws.send_str(_error(reason).decode())
            await ws.close(code=code, message=reason.encode()[:120])
    except (TimeoutError, ConnectionError, RuntimeError):
        if request.transport is not None:
            request.transport.abort()


async def _sse(request: web.Request, hub: EventHub, account_id: int, every: float,
               shadowed: list[str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    })
    await resp.prepare(request)
    assert request.transport is not None
    await resp.write(b": ping\n\n")  # sends the headers before the hub writes to the socket
    kind = SSE if request.version >= (1, 1) else SSE_UNCHUNKED
    try:
        sub = hub.subscribe(account_id, request.transport, kind, shadowed)
    except TooManyStreamsError as exc:
        await resp.write(b"data: %b\n\n" % _error(str(exc)))
        return resp
    try:
        while sub.reason is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sub.done), every)
            if sub.reason is None:
                await resp.write(b": ping\n\n")
        if sub.reason != "client closed":
            await asyncio.wait_for(resp.write(b"data: %b\n\n" % _error(sub.reason)), 1.0)
    except (ConnectionError, TimeoutError, RuntimeError):
        pass  # the client went away
    finally:
        hub.unsubscribe(sub)
    return resp


def make_hub(app: web.Application, *, serve_events: bool) -> EventHub:
    s = app[SETTINGS]
    return EventHub(s.database_url, buffer_size=s.events_buffer, window=s.events_coalesce_seconds,
                    fanout_share=s.events_fanout_share, max_per_account=s.events_max_per_account,
                    serve_events=serve_events)


async def listen(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx of the API: the process's one LISTEN connection (Hub lookups; the events
    too unless EVENTS_IN_WEB=0)."""
    hub = make_hub(app, serve_events=app[SETTINGS].events_in_web)
    await hub.start()
    app[EVENT_HUB] = hub
    yield
    await hub.stop()


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end the open streams first, or the server would wait for them to time out
    before cleanup_ctx (which closes the hub) ever runs."""
    if EVENT_HUB in app:
        app[EVENT_HUB].close_all("the server is shutting down")


# ---------------------------------------------------------------- `registry-sync stream`

async def _pool(app: web.Application) -> AsyncIterator[None]:
    """For authentication only: a couple of connections are plenty."""
    app[POOL] = await create_pool(app[SETTINGS].database_url, min_size=1, max_size=4, stateless=True)
    yield
    await app[POOL].close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    hub = make_hub(app, serve_events=True)
    await hub.start()
    app[EVENT_HUB] = hub
    yield
    await hub.stop()


async def _healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    up = request.app[EVENT_HUB].connected
    body = {"status": "ok" if up else "unavailable", "checks": {"postgres": "ok" if up else "unreachable"}}
    return json_response(body, status=200 if up else 503)


class _Live:
    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("registry_sync_stream_subscribers", "Open event streams on this process",
                                value=self.hub.subscribers)
        yield CounterMetricFamily("registry_sync_stream_messages", "Messages written to stream clients",
                                  value=self.hub.delivered)
        yield CounterMetricFamily("registry_sync_stream_lagging", "Stream clients closed for not keeping up",
                                  value=self.hub.dropped)


async def _metrics(request: web.Request) -> web.Response:
    live = CollectorRegistry(auto_describe=False)
    live.register(_Live(request.app[EVENT_HUB]))
    body = generate_latest(metrics.scrape_registry()) + generate_latest(live)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_stream_app(settings: Settings) -> web.Application:
    """The events stream alone: what `registry-sync stream` serves. No I/O here."""
    settings.require("database_url", "redis_url")
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[AUTH_CACHE] = AuthCache(ttl=settings.auth_cache_seconds)
    # the API's answers to a database outage (503) and its failed-key throttling, shared in Redis
    app.cleanup_ctx.extend([_pool, outage.watch_ctx, _hub])
    throttle.configure(app, settings)
    app.on_shutdown.append(close_streams)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/events{slash:/?}", stream, allow_head=False)
    return app


def _run(settings: Settings, port: int, reuse_port: bool) -> None:
    from core.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    web.run_app(create_stream_app(settings), host=settings.bind_host, port=port, access_log=None,
                reuse_port=reuse_port, print=None, shutdown_timeout=10.0)


def serve_stream(settings: Settings, *, port: int | None = None, workers: int = 1) -> None:
    """Serve the stream until SIGTERM/SIGINT; with workers > 1, that many processes share the port."""
    from api.server import run_processes

    port = port or settings.stream_port
    if workers <= 1:
        _run(settings, port, reuse_port=False)
        return
    run_processes(_run, (settings, port, True), workers)
