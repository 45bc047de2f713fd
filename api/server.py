"""Serving the app: one process, or several sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from api.app import create_app
from core import metrics
from core.logs import configure_logging
from core.settings import Settings


def _run(settings: Settings, port: int, reuse_port: bool) -> None:
    configure_logging(settings.log_level, settings.log_format)
    web.run_app(
        create_app(settings), host=settings.bind_host, port=port, access_log=None,
        reuse_port=reuse_port, print=None, shutdown_timeout=30.0,
    )


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
