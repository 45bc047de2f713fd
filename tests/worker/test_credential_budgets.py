"""Docker Hub budgets per credential (SPEC §4): anonymous pulls share the fleet's bucket, each
set of credentials has its own, learned from its own `ratelimit-*` headers, and a 429 earned
with one account's token pauses only the syncs that use that token."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from core.crypto import Credentials
from tests.conftest import MakeUser, insert_image, unique
from tests.support.fake_registry import FakeRegistry
from tests.worker.conftest import OpenRuntime
from worker import sync
from worker.registry.budget import RATELIMIT_FLOOR, credential_key
from worker.runtime import Runtime

USERS = {"exhausted": "pw-e", "limited": "pw-l", "fine": "pw-f"}


@pytest.fixture
def hub() -> Iterator[FakeRegistry]:
    """A registry with Docker Hub's manners: bearer tokens; `limited` earns a 429 on every
    manifest GET (for a minute), `exhausted` is told it has 5 pulls left (under the floor)."""
    fake = FakeRegistry(auth="bearer", users=USERS, retry_after="60", limited_users=frozenset({"limited"}),
                        ratelimit_users={"exhausted": RATELIMIT_FLOOR - 5, "fine": 150}).start()
    try:
        yield fake
    finally:
        fake.stop()


async def image(pool: asyncpg.Pool, rt: Runtime, fake: FakeRegistry, owner: int, user: str | None) -> int:
    creds = rt.box.seal(Credentials(user, USERS[user])) if user else None
    return await insert_image(pool, name=f"{fake.host}/ok/{unique('cred')}", owner_id=owner, credentials=creds)


async def test_a_429_earned_by_one_token_pauses_only_that_token(
    hub: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool, make_user: MakeUser,
) -> None:
    rt = await runtime(hub.host)
    mallory, alice, anon = await make_user(), await make_user(), await make_user()
    first, second = [await image(pool, rt, hub, mallory.account.id, "limited") for _ in range(2)]
    theirs = await image(pool, rt, hub, alice.account.id, "fine")
    anonymous = await image(pool, rt, hub, anon.account.id, None)

    assert await sync.sync_image(rt, first) == sync.FAILED  # its own 429 (Retry-After 60)
    assert (await pool.fetchval("SELECT sync_error FROM images WHERE id = $1", first)).startswith("RateLimitedError")
    hub.reset()
    # the same token's next sync is handed back without asking the registry
    assert await sync.sync_image(rt, second) == sync.SKIPPED
    assert not hub.hits
    row = await pool.fetchrow("SELECT sync_error, sync_failures, next_sync_at - now() AS due FROM images WHERE id = $1",
                              second)
    assert row["sync_error"] is None and row["sync_failures"] == 0 and row["due"].total_seconds() > 50
    # everyone else goes on: another account's token and the anonymous pulls
    assert await sync.sync_image(rt, theirs) == sync.SYNCED
    assert await sync.sync_image(rt, anonymous) == sync.SYNCED
    assert await rt.budget.paused_for(rt.network_host(hub.host)) == 0


async def test_an_exhausted_quota_stops_only_its_own_credentials(
    hub: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool, make_user: MakeUser,
) -> None:
    rt = await runtime(hub.host)
    bob, alice, anon = await make_user(), await make_user(), await make_user()
    first, second = [await image(pool, rt, hub, bob.account.id, "exhausted") for _ in range(2)]
    theirs = [await image(pool, rt, hub, alice.account.id, "fine") for _ in range(2)]
    anonymous = await image(pool, rt, hub, anon.account.id, None)

    # The answer to the first manifest GET tells the bucket of "exhausted" that its quota is
    # gone (5 left, 10 kept in reserve): the sync hands its image back, due when a pull has
    # come back, and so does the next sync with that token, without a single manifest GET.
    assert await sync.sync_image(rt, first) == sync.SKIPPED
    hub.reset()
    assert await sync.sync_image(rt, second) == sync.SKIPPED
    assert not [hit for hit in hub.hits if hit[0] == "GET" and "/manifests/" in hit[1]]
    rows = await pool.fetch("SELECT sync_failures, next_sync_at - now() AS due FROM images WHERE id = ANY ($1)",
                            [first, second])
    assert all(r["sync_failures"] == 0 and r["due"].total_seconds() > 60 for r in rows)
    # the other token learned its own bucket (150 left) and the anonymous one keeps the default
    for other in (*theirs, anonymous):
        assert await sync.sync_image(rt, other) == sync.SYNCED
    assert rt.client.ratelimit_remaining[f"{hub.host}#{credential_key(Credentials('fine', ''))}"] == 150
    assert hub.host not in rt.client.ratelimit_remaining  # nothing was said to the anonymous requests
