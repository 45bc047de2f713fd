"""`registry-sync worker`: Celery consumers for the two queues.

Each `worker` runs one consumer process per queue, so routine polling never delays priority
work (registrations, webhooks, user-requested syncs): they share no capacity, thread or
prefetch. The parent restarts a consumer that exits (see run_worker).
Each consumer process keeps one Runtime (loop, pool, session, caches, registry budgets) for
all its tasks. Its few Celery threads only hand work to the event loop (worker/dispatch.py),
which runs up to WORKER_CONCURRENCY syncs at once; on SIGTERM it drains them.
With NOTIFY_IN_WORKER (the default) it also runs NOTIFY_PROCESSES deliverer processes
(worker/notifier.py, one by default), which send the outgoing notifications and need no
queue: Postgres holds their work.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

import structlog
from celery.signals import worker_shutting_down

from core import metrics
from core.logs import configure_logging
from core.queue import PRIORITY_QUEUE, ROUTINE_QUEUE, make_celery
from core.settings import Settings
from worker.dispatch import Dispatcher
from worker.notifier import run_notifier
from worker.registry.limits import parse_limits
from worker.runtime import LoopThread, Runtime
from worker.tasks import register_tasks

log = structlog.get_logger("worker")

# Celery threads per consumer: they only hand messages to the event loop (or wait for room)
HANDOFF_THREADS = 4
NOTIFY = "notify"  # the deliverer's name among the supervised processes (then notify.2, …)


def _notify_names(n: int) -> tuple[str, ...]:
    return tuple(NOTIFY if i == 1 else f"{NOTIFY}.{i}" for i in range(1, max(1, n) + 1))


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a killed `worker` leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_consumer(settings: Settings, queue: str, concurrency: int) -> None:
    """One Celery consumer of `queue` running up to `concurrency` syncs at once, until SIGTERM:
    then it takes no new message, lets its syncs finish for WORKER_DRAIN_SECONDS and hands
    back the images of those still running."""
    _die_with_parent()
    configure_logging(settings.log_level, settings.log_format)
    app = make_celery(settings)
    loop = LoopThread().start()
    runtime = loop.run(Runtime(settings, name=queue, capacity=concurrency).open())
    dispatcher = Dispatcher(loop, concurrency, queue)
    register_tasks(app, runtime, dispatcher)
    # Celery's warm shutdown waits for its task threads: wake the ones waiting for room
    worker_shutting_down.connect(lambda **_: dispatcher.close(), weak=False)
    try:
        app.worker_main([
            "worker", "--queues", queue, "--pool", "threads", "--concurrency", str(HANDOFF_THREADS),
            "--hostname", f"{queue}@{socket.gethostname()}.{os.getpid()}",
            "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle",
        ])
    finally:
        dispatcher.drain(settings.worker_drain_seconds)
        loop.run(runtime.aclose())
        loop.stop()


def _notifier(settings: Settings) -> None:
    _die_with_parent()
    run_notifier(settings)


RESTART_DELAY_MAX = 30.0  # seconds between restarts of a consumer that keeps exiting
STABLE_AFTER = 60.0  # a consumer that ran this long starts its restart delay afresh


def run_worker(settings: Settings, queues: Sequence[str] = (PRIORITY_QUEUE, ROUTINE_QUEUE),
               concurrency: int | None = None) -> int:
    """Start one consumer process per queue and supervise them until SIGTERM/SIGINT, which is
    passed on (warm shutdown). A consumer that exits on its own is started again, with a
    delay that doubles while it keeps exiting: a consumer exits on purpose when it loses the
    broker (`broker_connection_retry=False` in core/queue.py), because Celery's threads-pool
    consumer can stay connected yet stop consuming after a Redis reconnect (celery#8030,
    #9054 and later reports); a fresh process has no such state."""
    parse_limits(settings.registry_limits)  # a malformed REGISTRY_LIMITS stops here, named
    ctx = multiprocessing.get_context("spawn")
    # before the spawn: the consumers write their metrics where this process can sum them
    metrics_dir, made_dir = metrics.prepare_multiprocess_dir()

    def spawn(queue: str) -> multiprocessing.process.BaseProcess:
        if queue == NOTIFY or queue.startswith(f"{NOTIFY}."):
            p = ctx.Process(target=_notifier, name=f"worker-{queue}", args=(settings,))
        else:
            p = ctx.Process(target=run_consumer, name=f"worker-{queue}",
                            args=(settings, queue, concurrency or settings.worker_concurrency))
        p.start()
        return p

    if settings.notify_in_worker or NOTIFY in queues:
        queues = (*(q for q in queues if q != NOTIFY), *_notify_names(settings.notify_processes))
    procs = {q: spawn(q) for q in queues}
    started = {q: time.monotonic() for q in queues}
    delays = dict.fromkeys(queues, 1.0)
    server = metrics.serve_metrics(settings.metrics_port, settings.bind_host)[0] if settings.metrics_port else None

    stopping: list[int] = []
    signalled: set[int] = set()

    def forward(signum: int, _: object) -> None:
        stopping.append(signum)
        for p in procs.values():
            # Once per child: a second SIGTERM that lands after Celery's warm shutdown has
            # restored the default handler kills the child before it closes its runtime.
            if p.pid and p.is_alive() and p.pid not in signalled:
                signalled.add(p.pid)
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        ready = multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=1.0)
        for queue, p in list(procs.items()):
            if p.sentinel not in ready or stopping:
                continue
            p.join()
            if time.monotonic() - started[queue] > STABLE_AFTER:
                delays[queue] = 1.0
            log.warning("worker.consumer_exited", queue=queue, code=p.exitcode, restart_in=delays[queue])
            deadline = time.monotonic() + delays[queue]
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            if stopping:
                break
            procs[queue] = spawn(queue)
            started[queue] = time.monotonic()
            delays[queue] = min(delays[queue] * 2, RESTART_DELAY_MAX)
    codes = []
    for p in procs.values():
        p.join()
        codes.append(p.exitcode or 0)
    if server is not None:
        server.shutdown()
    metrics.remove_multiprocess_dir(metrics_dir, made_dir)
    return max(codes, key=abs) if any(codes) else 0


if __name__ == "__main__":
    sys.exit(run_worker(Settings.from_env()))
