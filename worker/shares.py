"""Fair sharing between registry hosts inside one worker process (SPEC §4, `Runtime.host_slot`).

A consumer process runs at most WORKER_CONCURRENCY syncs at once (worker/dispatch.py). One
registry host may hold at most HOST_SHARE of them, and never more than twice as many as the
process's requests to it (REGISTRY_CONCURRENCY) can serve at once: syncs beyond that would
only wait in this process while another replica could run them. All the hosts that timed out or
refused connections lately together at most SLOW_HOST_SHARE: a slow, hanging or huge
registry then delays only its own images, and the rest of the process's capacity stays free
for every other host. A sync over its host's share waits at most REGISTRY_WAIT_MAX_SECONDS
for one of the host's syncs to end (a slow host's sync does not wait at all): waiting longer
would hold the capacity the share is meant to leave free, so it raises HostBusyError and the
sync service hands the image back, due again in a few seconds, without counting a failure.
So does a sync of a host that the fleet has paused (a 429) for longer than that.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from core import metrics
from worker.registry.errors import HostBusyError

SHARE_RETRY = 2.0  # a sync over a healthy host's share is due again in about this long
SLOW_RETRY = 30.0  # ... over a slow host's: it would only wait for the slow ones again
SLOW_FOR = 300.0  # a host that timed out (or refused connections) counts as slow this long


class HostShares:
    def __init__(
        self,
        capacity: int,
        *,
        share: float,
        per_host_max: int,
        slow_share: float,
        last_failure: dict[str, float],
        paused_for: Callable[[str], Awaitable[float]],
        wait_max: float,
    ) -> None:
        """`last_failure`: host -> monotonic time of its last timeout or connection failure
        (kept by the transport); `paused_for(host)`: seconds left of a fleet-wide pause."""
        self.limit = max(1, min(math.ceil(capacity * share), per_host_max))
        self.slow_limit = max(1, math.ceil(capacity * slow_share))
        self._last_failure = last_failure
        self._paused_for = paused_for
        self.wait_max = wait_max
        self.busy: dict[str, int] = {}
        self.slow_busy = 0
        self._freed: dict[str, asyncio.Condition] = {}  # host -> notified when one of its syncs ends
        self._waiting: dict[str, int] = {}  # host -> syncs waiting for its share

    def is_slow(self, host: str) -> bool:
        failed = self._last_failure.get(host)
        return failed is not None and time.monotonic() - failed < SLOW_FOR

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Held around the registry work of one sync of an image on `host` (the host as the
        worker reaches it). Raises HostBusyError instead of waiting."""
        paused = await self._paused_for(host)
        if paused > self.wait_max:
            metrics.BUDGET_BUSY.labels(registry=host, reason="paused").inc()
            raise HostBusyError(f"{host}: paused after a 429 for {paused:.0f}s more", retry_after=paused)
        slow = self.is_slow(host)
        if not await self._room(host, slow):
            metrics.BUDGET_BUSY.labels(registry=host, reason="share").inc()
            retry = (SLOW_RETRY if slow else SHARE_RETRY) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
            what = "slow hosts hold their share" if slow else "the host holds its share"
            raise HostBusyError(f"{host}: {what} of this worker; ask again in {retry:.0f}s", retry_after=retry)
        self.busy[host] = self.busy.get(host, 0) + 1
        self.slow_busy += slow
        try:
            yield
        finally:
            self.busy[host] -= 1
            if not self.busy[host]:
                del self.busy[host]
            self.slow_busy -= slow
            freed = self._freed.get(host)
            if freed is not None:
                async with freed:
                    freed.notify(1)

    def _fits(self, host: str, slow: bool) -> bool:
        return self.busy.get(host, 0) < self.limit and not (slow and self.slow_busy >= self.slow_limit)

    async def _room(self, host: str, slow: bool) -> bool:
        """Whether a sync of `host` may start, after waiting up to wait_max for one of the
        host's syncs to end (not at all for a slow host)."""
        if self._fits(host, slow):
            return True
        if slow:
            return False
        freed = self._freed.setdefault(host, asyncio.Condition())
        self._waiting[host] = self._waiting.get(host, 0) + 1
        try:
            async with freed:
                await asyncio.wait_for(freed.wait_for(lambda: self._fits(host, False)), self.wait_max)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting[host] -= 1
            if not self._waiting[host]:
                del self._waiting[host]
                self._freed.pop(host, None)
