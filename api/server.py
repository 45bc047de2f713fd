"""Serving the app: one process, or several sharing the port (SO_REUSEPORT).

A request that aiohttp cannot parse (a header over its 8,190-byte field limit, a broken
request line) never reaches the app's middlewares: aiohttp's RequestHandler answers it
itself, by `handle_error`, in plain text that quotes the offending bytes, and logs a
traceback. `JsonErrorsHandler` overrides that documented method to answer in the API's JSON
error shape, echo nothing, and log one line; `ApiRunner` makes the server use it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from api.app import create_app
from core import metrics
from core.logs import configure_logging
from core.settings import Settings

log = structlog.get_logger("api.server")


class JsonErrorsHandler(RequestHandler):
    """The connection protocol of the API: errors answered before the app runs are JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a started response cannot be replaced
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            log.error("request.failed", status=status, error=type(exc).__name__ if exc else None, exc_info=exc)
            text = "internal error" if status == 500 else "the request took too long"
        else:
            # the exception's text quotes the request's bytes (headers may carry secrets)
            log.info("request.malformed", status=status, error=type(exc).__name__ if exc else None,
                     client=request.remote)
            if isinstance(exc, LineTooLong):
                text = f"a request line or header is longer than {self.max_field_size} bytes"
            elif isinstance(exc, BadHttpMessage):
                text = "malformed HTTP request"
            else:
                text = "bad request"
        resp = web.Response(status=status, body=orjson.dumps({"error": text}), content_type="application/json")
        resp.force_close()
        return resp


class ApiServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections use JsonErrorsHandler."""

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()  # runs the app's startup
        return ApiServer(
            app_server.request_handler, request_factory=app_server.request_factory,
            loop=asyncio.get_running_loop(), **self._kwargs,
        )


async def serve_app(app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Serve `app` until SIGTERM/SIGINT, then let in-flight requests finish (30 s at most)."""
    runner = ApiRunner(app, access_log=None, shutdown_timeout=30.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _run(settings: Settings, port: int, reuse_port: bool) -> None:
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve_app(create_app(settings), settings.bind_host, port, reuse_port=reuse_port))


def serve(settings: Settings, *, port: int | None = None, workers: int = 1) -> None:
    """Serve until SIGTERM/SIGINT; with workers > 1, fork that many processes on one port."""
    port = port or settings.port
    if workers <= 1:
        _run(settings, port, reuse_port=False)
        return
    # before the spawn: every process counts into files of one folder, and a scrape of any
    # of them (SO_REUSEPORT picks one) reports the sum over all of them
    metrics_dir, made_dir = metrics.prepare_multiprocess_dir()
    run_processes(_run, (settings, port, True), workers)
    metrics.remove_multiprocess_dir(metrics_dir, made_dir)


def run_processes(target: Callable[..., None], args: tuple[Any, ...], count: int) -> None:
    """Run `target(*args)` in `count` spawned processes (each binding the port with
    SO_REUSEPORT), pass SIGTERM/SIGINT on to them, and wait until all have exited."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for _ in range(count)]
    for p in procs:
        p.start()

    def forward(signum: int, _: object) -> None:
        for p in procs:
            if p.pid:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
