"""The images page's listing against the API's list: for two accounts (one shadowing catalog
names with its own images), each scope, order, state and registry (a registry read whole, one
read as a filter, one nobody uses), walking every page by cursor forward and back gives the
images the API lists, each once, in the page's order."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from api import pages
from api.params import ImageFilter, Page
from core.accounts import create_account
from core.db import create_pool
from dashboard import listing
from dashboard.listing import NEVER, STATES, View
from tests.conftest import create_database, insert_image
from tests.support.services import worker_index

HOSTS = ["registry.hub.docker.com", "quay.io", "rare.example.com", "unused.example.com"]


@pytest.fixture(scope="module")
async def world(postgres_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, list[int]]]:
    dsn = await create_database(postgres_dsn, f"rs_ui_listing_{worker_index()}")
    pool = await create_pool(dsn, min_size=1, max_size=4)
    rng = random.Random(19)
    accounts = []
    async with pool.acquire() as conn:
        for name in ("alice", "bob"):
            accounts.append((await create_account(conn, name))[0].id)
    when = datetime(2024, 1, 1, tzinfo=UTC)

    def tags() -> list[dict[str, object]]:
        return [{"name": f"t{k}", "state": rng.choice(["Success", "Success", "Failed", "Building", "Empty"]),
                 "build_date": None if rng.random() < 0.2 else when + timedelta(hours=rng.randrange(5000))}
                for k in range(rng.randrange(0, 4))]

    async def add(name: str, owner: int | None) -> None:
        host = rng.choice(HOSTS[:2]) if rng.random() > 0.05 else HOSTS[2]
        full = name if host == HOSTS[0] else f"{host}/{name}"
        await insert_image(pool, name=full, owner_id=owner, tags=tags())

    for i in range(140):
        await add(f"cat{i:03d}/app", None)
    for i in range(70):
        await add(f"al{i:03d}/app", accounts[0])
    for i in range(0, 140, 9):  # alice shadows some catalog names (same host: the same name)
        row = await pool.fetchrow("SELECT name FROM images WHERE name LIKE $1 AND owner_id IS NULL", f"%cat{i:03d}/app")
        await insert_image(pool, name=row["name"], owner_id=accounts[0], tags=tags())
    for i in range(40):
        await add(f"bo{i:03d}/app", accounts[1])
    # the state rule itself runs in triggers; `last_build_date` too
    yield pool, accounts
    await pool.close()


async def _api(pool: asyncpg.Pool, account: int, mine: bool, host: str | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = []
    after = None
    while True:
        r = await pages.list_images(pool, account, ImageFilter(is_user=True if mine else None, registry=host),
                                    Page(100, after=after))
        rows += r.rows
        if not r.more:
            return rows
        after = r.rows[-1]["name"]


def _key(sort: str, row: asyncpg.Record) -> tuple[object, ...]:
    if sort == "name":
        return (row["name"].encode(),)
    built = row["last_build_date"] or NEVER
    return (-built.timestamp() if built != NEVER else float("inf"), -row["id"])


async def _walk(pool: asyncpg.Pool, account: int, v: View) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = []
    page = await listing.list_view(pool, account, v)
    assert page.prev_cursor is None
    pages_seen = [page]
    while True:
        rows += page.rows
        if page.next_cursor is None:
            break
        page = await listing.list_view(pool, account, View(v.mine, v.sort, v.prefix, v.state, v.registry,
                                                           after=page.next_cursor))
        pages_seen.append(page)
    # and back: each previous link gives the page before it
    for earlier, later in zip(reversed(pages_seen[:-1]), reversed(pages_seen[1:]), strict=True):
        assert later.prev_cursor is not None
        back = await listing.list_view(pool, account, View(v.mine, v.sort, v.prefix, v.state, v.registry,
                                                           before=later.prev_cursor))
        assert [r["id"] for r in back.rows] == [r["id"] for r in earlier.rows], v
    return rows


@pytest.mark.parametrize("sort", ["name", "built"])
async def test_every_view_lists_what_the_api_lists(world: tuple[asyncpg.Pool, list[int]], sort: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pool, accounts = world
    monkeypatch.setattr(listing, "FEW_IMAGES", 12)  # rare.example.com is read whole, quay.io filtered
    modes: set[str] = set()
    real_mode = listing._registry_mode

    async def mode(*args: object) -> str:
        found = await real_mode(*args)  # type: ignore[arg-type]
        modes.add(found)
        return found

    monkeypatch.setattr(listing, "_registry_mode", mode)
    for account in accounts:
        for mine in (True, False):
            for host in [None, *HOSTS]:
                api_rows = await _api(pool, account, mine, host)
                for state in (None, *STATES):
                    v = View(mine, sort, None, state, host)
                    got = await _walk(pool, account, v)
                    expected = {r["id"] for r in api_rows if state is None or r["state"] == state}
                    ids = [r["id"] for r in got]
                    assert len(ids) == len(set(ids)), v
                    assert set(ids) == expected, (v, len(ids), len(expected))
                    keys = [_key(sort, r) for r in got]
                    assert keys == sorted(keys), v
                    assert all(r["owner_id"] in (None, account) for r in got)
    assert modes == {listing.NONE, listing.FEW, listing.SCAN}  # every way of reading a registry


async def test_a_name_prefix_is_a_range_of_the_api_list(world: tuple[asyncpg.Pool, list[int]]) -> None:
    pool, (alice, _) = world
    everything = await _api(pool, alice, False, None)
    for prefix in ("cat01", "quay.io/al", "al0", "zzz", "c"):
        for state in (None, "Success"):
            got = await _walk(pool, alice, View(False, "name", prefix, state))
            expected = [r["name"] for r in everything if r["name"].startswith(prefix)
                        and (state is None or r["state"] == state)]
            assert [r["name"] for r in got] == expected, prefix


async def test_the_state_counts_are_the_accounts_own(world: tuple[asyncpg.Pool, list[int]]) -> None:
    pool, (alice, bob) = world
    for account in (alice, bob):
        rows = await _api(pool, account, True, None)
        counts = await listing.own_state_counts(pool, account)
        assert counts == {s: sum(r["state"] == s for r in rows) for s in STATES}
