"""How a writer of tags saw its changes, for the tag history (schema.sql `record_tag_changes`).

The history and the notifications outbox are written by triggers on `tags`, so no write path
can forget them; the only thing a trigger cannot know is whether the change was seen by
polling the registry or told by a webhook. Each writer says so at the start of its
transaction (a transaction-local setting, gone at commit); a path that says nothing is
recorded as 'unknown'.
"""

from __future__ import annotations

from typing import Final, Literal

import asyncpg

WEBHOOK: Final = "webhook"
POLL: Final = "poll"

OBSERVED_VIA_SQL = "SELECT set_config('registry_sync.observed_via', $1, true)"


async def mark_observed(conn: asyncpg.Connection, via: Literal["webhook", "poll"]) -> None:
    """Record the tag changes of the caller's (open) transaction as seen by `via`."""
    await conn.execute(OBSERVED_VIA_SQL, via)
