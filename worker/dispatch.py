"""How a consumer process runs its work: Celery delivers, the event loop works.

Celery stays the transport, but its task threads no longer wait for a sync: a task hands its
coroutine to the process's event loop (runtime.LoopThread) and returns, and Celery then
acknowledges the message. So one process keeps up to WORKER_CONCURRENCY syncs (or webhook
events) in flight, with as many registry requests as the registry budgets allow, instead of
one sync per thread. When the process is full, `Dispatcher.start` blocks the Celery thread
that brought the next message until a sync ends: Celery fetches nothing more meanwhile
(backpressure), and the message stays unacknowledged in Redis terms.

A message acknowledged before its coroutine finished is never lost, because Postgres, not
the message, holds the work:
- a routine batch's images carry the scheduler's claim lease, and each sync its run lease:
  if the process dies, the leases lapse and the scheduler claims the images again;
- a user-requested sync (registration, PATCH, build) is due again at its fallback time;
- a webhook event stays `pending` until the transaction that applies it commits, and the
  inbox sweep queues it again;
- a Hub inspection that never answers leaves the API's request to time out and be asked again.

SIGTERM (`close` then `drain`): the threads waiting for room hand their messages back to
Redis (Reject, requeue), the running coroutines get WORKER_DRAIN_SECONDS to finish, and
whatever is still running then is cancelled: each cancelled sync releases its lease, a
cancelled batch releases the claims it had not started (worker/tasks.py), so the images are
due again at once rather than after their leases lapse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from core import metrics
from worker.runtime import LoopThread

log = structlog.get_logger("worker.dispatch")

CANCEL_GRACE = 15.0  # after cancelling, how long the cancelled work may take to hand images back

Release = Callable[[], None]
Work = Callable[[Release], Coroutine[Any, Any, object]]


class ShuttingDownError(Exception):
    """The consumer is stopping: the message goes back to the queue."""


class _Units:
    """The units one piece of work holds; released one by one or all at the end."""

    def __init__(self, dispatcher: Dispatcher, n: int) -> None:
        self._dispatcher = dispatcher
        self._left = n

    def release_one(self) -> None:
        if self._left > 0:
            self._left -= 1
            self._dispatcher._give_back(1)

    def release_all(self) -> None:
        n, self._left = self._left, 0
        if n:
            self._dispatcher._give_back(n)


class Dispatcher:
    def __init__(self, loop: LoopThread, capacity: int, queue: str) -> None:
        self.loop = loop
        self.capacity = max(1, capacity)
        self.queue = queue
        self.used = 0
        self._closing = False
        self._cond = threading.Condition()
        self._tasks: set[asyncio.Task[object]] = set()  # touched on the loop thread only
        metrics.WORKER_CAPACITY.labels(queue=queue).set(self.capacity)

    def start(self, units: int, work: Work) -> None:
        """Run `work(release_one)` on the loop, holding `units` (at most the capacity) of the
        process's capacity until it ends; `release_one()` gives one back early (a batch
        releases each image's unit as that image's sync ends). Blocks the calling (Celery)
        thread while the process is full; ShuttingDownError once `close()` was called."""
        units = min(max(units, 1), self.capacity)
        with self._cond:
            while not self._closing and self.used + units > self.capacity:
                self._cond.wait(1.0)
            if self._closing:
                raise ShuttingDownError("the worker is shutting down")
            self.used += units
            metrics.WORKER_IN_FLIGHT.labels(queue=self.queue).set(self.used)
        held = _Units(self, units)
        self.loop.loop.call_soon_threadsafe(self._spawn, work, held)

    def _spawn(self, work: Work, held: _Units) -> None:
        try:
            task: asyncio.Task[object] = asyncio.ensure_future(work(held.release_one))
        except BaseException:
            held.release_all()
            raise
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, held))

    def _finished(self, task: asyncio.Task[object], held: _Units) -> None:
        self._tasks.discard(task)
        held.release_all()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task.crashed", exc_info=exc)

    def _give_back(self, n: int) -> None:
        with self._cond:
            self.used -= n
            metrics.WORKER_IN_FLIGHT.labels(queue=self.queue).set(self.used)
            self._cond.notify_all()

    def close(self) -> None:
        """Take nothing new: threads waiting for room raise ShuttingDownError."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def drain(self, timeout: float) -> tuple[int, int]:
        """Wait up to `timeout` s for the work in flight, then cancel what is left and wait
        for it to hand its images back. Returns (finished, cancelled)."""
        self.close()
        tasks = self.loop.run(self._snapshot())
        if tasks:
            log.info("worker.draining", in_flight=len(tasks), timeout=timeout)
        futures = [asyncio.run_coroutine_threadsafe(_wait_one(t), self.loop.loop) for t in tasks]
        _, pending = concurrent.futures.wait(futures, timeout=timeout)
        cancelled = self.loop.run(self._cancel()) if pending else 0
        if cancelled:
            log.warning("worker.drain_cancelled", cancelled=cancelled)
        return len(tasks) - cancelled, cancelled

    async def _snapshot(self) -> list[asyncio.Task[object]]:
        return list(self._tasks)

    async def _cancel(self) -> int:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        return len(tasks)


async def _wait_one(task: asyncio.Task[object]) -> None:
    await asyncio.wait([task])
