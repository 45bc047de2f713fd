"""Fair sharing inside one worker process: between accounts first, hosts second (SPEC §4,
`Runtime.host_slot`).

A consumer process runs at most WORKER_CONCURRENCY syncs at once (worker/dispatch.py).

- **Accounts.** One account (the shared catalog counts as one account of its own) may hold
  at most ACCOUNT_SHARE of them, however many hosts its images are spread over; of those,
  the syncs on its hosts that timed out or refused connections lately at most
  SLOW_HOST_SHARE. A sync over its account's share does not wait: its account's slots are
  held by its own earlier syncs, which may hang for as long as the registry timeout allows,
  so it raises HostBusyError at once and the sync service hands the image back, due again
  after about as long as the account's oldest running sync has run (2 to 30 s). So the
  account's queued work drains from the queue in milliseconds per message instead of
  holding the process's capacity, and every other account's registrations, webhooks and
  routine syncs find room.
- **Hosts.** One registry host may hold at most HOST_SHARE of the process's syncs (of every
  account), and never more than twice as many as the process's requests to it
  (REGISTRY_CONCURRENCY) can serve at once: syncs beyond that would only wait in this process
  while another replica could run them. All the hosts that timed out or refused connections
  lately together at most SLOW_HOST_SHARE. A sync over its host's share waits at most
  REGISTRY_WAIT_MAX_SECONDS for one of the host's syncs to end (a slow host's sync does not
  wait at all; the wait counts against its account's share), then is handed back too.

A sync whose host (or, with credentials, whose credentials: worker/registry/budget.py) the
fleet has paused after a 429 for longer than REGISTRY_WAIT_MAX_SECONDS is handed back as well.
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

Account = int | None  # the owner's id; None: the shared catalog
PausedFor = Callable[[str, str | None], Awaitable[float]]  # (host, credential key) -> seconds


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security


class HostShares:
    def __init__(
        self,
        capacity: int,
        *,
        share: float,
        per_host_max: int,
        slow_share: float,
        last_failure: dict[str, float],
        paused_for: PausedFor,
        wait_max: float,
        account_share: float = 1.0,
    ) -> None:
        """`last_failure`: host -> monotonic time of its last timeout or connection failure
        (kept by the transport); `paused_for(host, credential)`: seconds left of a fleet-wide
        pause of the host (or of those credentials on it)."""
        self.limit = max(1, min(math.ceil(capacity * share), per_host_max))
        self.slow_limit = max(1, math.ceil(capacity * slow_share))
        self.account_limit = max(1, math.ceil(capacity * account_share))
        self.account_slow_limit = max(1, math.ceil(self.account_limit * slow_share))
        self._last_failure = last_failure
        self._paused_for = paused_for
        self.wait_max = wait_max
        self.busy: dict[str, int] = {}
        self.slow_busy = 0
        # account -> start times of its syncs holding (or waiting for) a slot, and how many of
        # them are on slow hosts
        self.accounts: dict[Account, list[float]] = {}
        self.account_slow: dict[Account, int] = {}
        self._freed: dict[str, asyncio.Condition] = {}  # host -> notified when one of its syncs ends
        self._waiting: dict[str, int] = {}  # host -> syncs waiting for its share

    def is_slow(self, host: str) -> bool:
        failed = self._last_failure.get(host)
        return failed is not None and time.monotonic() - failed < SLOW_FOR

    @asynccontextmanager
    async def slot(self, host: str, account: Account = None, credential: str | None = None) -> AsyncIterator[None]:
        """Held around the registry work of one sync of an image of `account` on `host` (the
        host as the worker reaches it), with the credentials keyed `credential` (None:
        anonymous). Raises HostBusyError instead of waiting long."""
        slow = self.is_slow(host)
        # first the account's share: no I/O, so an account's excess work drains at once
        self._take_account(host, account, slow)
        started = self.accounts[account][-1]
        try:
            paused = await self._paused_for(host, credential)
            if paused > self.wait_max:
                metrics.BUDGET_BUSY.labels(registry=host, reason="paused").inc()
                whose = "these credentials are" if credential else "the host is"
                raise HostBusyError(f"{host}: {whose} paused after a 429 for {paused:.0f}s more", retry_after=paused)
            if not await self._room(host, slow):
                metrics.BUDGET_BUSY.labels(registry=host, reason="share").inc()
                retry = _jitter(SLOW_RETRY if slow else SHARE_RETRY)
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
        finally:
            self._give_account(account, slow, started)

    def _take_account(self, host: str, account: Account, slow: bool) -> None:
        """Count one more sync of `account`, or raise HostBusyError when it holds its share
        (of slow hosts, when `slow`): due again after about as long as its oldest running
        sync has run, within SHARE_RETRY..SLOW_RETRY (a hanging account's next attempt comes
        later, a quick one's soon)."""
        held = self.accounts.get(account, [])
        over_slow = slow and self.account_slow.get(account, 0) >= self.account_slow_limit
        if len(held) >= self.account_limit or over_slow:
            metrics.BUDGET_BUSY.labels(registry=host, reason="account").inc()
            running = time.monotonic() - held[0] if held else 0.0
            retry = _jitter(SLOW_RETRY if over_slow else min(SLOW_RETRY, max(SHARE_RETRY, running)))
            raise HostBusyError(
                f"{host}: this account's syncs hold its share of this worker; ask again in {retry:.0f}s",
                retry_after=retry,
            )
        self.accounts.setdefault(account, []).append(time.monotonic())
        if slow:
            self.account_slow[account] = self.account_slow.get(account, 0) + 1

    def _give_account(self, account: Account, slow: bool, started: float) -> None:
        held = self.accounts[account]
        held.remove(started)
        if not held:
            del self.accounts[account]
        if slow:
            self.account_slow[account] -= 1
            if not self.account_slow[account]:
                del self.account_slow[account]

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
