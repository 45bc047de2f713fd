"""Waiting for the first of several asyncio events, with a time limit (beat's ticks, the
deliverer's rounds)."""

from __future__ import annotations

import asyncio


async def first_event(*events: asyncio.Event, within: float) -> None:
    """Return when any of `events` is set, or after `within` seconds (at once when it is 0 or
    less, or one is set already)."""
    if within <= 0 or any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
