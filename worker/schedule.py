"""Adaptive polling (SPEC §4): when an image's next routine sync is due.

Each image keeps its own interval (`images.sync_interval`; NULL until its first successful
sync, which starts it at SYNC_INTERVAL_SECONDS). Every later successful sync halves it when
the sync changed something (a tag added, moved or removed) and stretches it by half when
nothing changed, within [SYNC_INTERVAL_MIN, SYNC_INTERVAL_MAX] (widened to include
SYNC_INTERVAL_SECONDS). The next sync is then due in that interval (±10 % jitter), except:

- an image whose repository sent a webhook event lately (WEBHOOK_FED_WINDOW) is polled at
  SYNC_INTERVAL_MAX: its pushes arrive by webhook, polling is only the safety net;
- a shared-catalog image nobody has read through the API for CATALOG_IDLE_SECONDS is polled
  every SYNC_INTERVAL_IDLE (the API records reads in batches: api/read_marks.py).

Failures keep their own backoff (worker/sync.py) and leave the interval alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.settings import Settings

SHRINK = 0.5  # the interval after a sync that changed something
GROW = 1.5  # ... and after one that changed nothing
JITTER = 0.1
WEBHOOK_FED_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class PollPolicy:
    start: float
    lo: float
    hi: float
    idle_interval: float
    idle_after: timedelta

    @classmethod
    def from_settings(cls, s: Settings) -> PollPolicy:
        start = s.sync_interval_seconds
        return cls(
            start=start,
            lo=min(s.sync_interval_min, start),
            hi=max(s.sync_interval_max, start),
            idle_interval=s.sync_interval_idle,
            idle_after=timedelta(seconds=s.catalog_idle_seconds),
        )

    def next(
        self, current: float | None, *, changed: bool, now: datetime, catalog: bool = False,
        read_at: datetime | None = None, webhook_at: datetime | None = None,
    ) -> tuple[float, float]:
        """(the image's new interval, seconds until its next routine sync)."""
        if current is None:
            interval = self.start
        else:
            interval = min(self.hi, max(self.lo, current * (SHRINK if changed else GROW)))
        delay = interval
        if webhook_at is not None and now - webhook_at < WEBHOOK_FED_WINDOW:
            delay = max(delay, self.hi)
        if catalog and (read_at is None or now - read_at > self.idle_after):
            delay = max(delay, self.idle_interval)
        return interval, delay * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter
