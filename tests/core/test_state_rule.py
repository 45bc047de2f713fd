"""The aggregate image state and last_build_date rule (SPEC §2), for every combination of
tag states, through the database trigger that every write path goes through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import combinations_with_replacement

import asyncpg
import pytest

from tests.conftest import insert_image

STATES = ("Empty", "Success", "Building", "Failed")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def expected_state(states: tuple[str, ...]) -> str:
    if "Building" in states:
        return "Building"
    if "Failed" in states:
        return "Failed"
    if "Success" in states:
        return "Success"
    return "Empty"


COMBOS = [c for n in range(0, 4) for c in combinations_with_replacement(STATES, n)]


@pytest.mark.parametrize("states", COMBOS, ids=lambda c: "+".join(c) or "no-tags")
async def test_image_state_follows_tags(pool: asyncpg.Pool, states: tuple[str, ...]) -> None:
    image_id = await insert_image(pool)
    # Tag i succeeded at T0+i days when its state says it was ever built successfully.
    build_dates = [T0 + timedelta(days=i) if s == "Success" else None for i, s in enumerate(states)]
    await pool.executemany(
        "INSERT INTO tags (image_id, name, state, build_date) VALUES ($1, $2, $3, $4)",
        [(image_id, f"t{i}", s, d) for i, (s, d) in enumerate(zip(states, build_dates, strict=True))],
    )
    row = await pool.fetchrow("SELECT state, last_build_date FROM images WHERE id = $1", image_id)
    assert row["state"] == expected_state(states)
    successes = [d for d in build_dates if d is not None]
    assert row["last_build_date"] == (max(successes) if successes else None)


async def test_state_follows_updates_and_deletes(pool: asyncpg.Pool) -> None:
    image_id = await insert_image(pool, tags=[{"name": "a", "build_date": T0}, "b"])
    state = "SELECT state, last_build_date FROM images WHERE id = $1"
    assert tuple(await pool.fetchrow(state, image_id)) == ("Success", T0)
    # a tag that was built before and is building again keeps its last successful date
    await pool.execute("UPDATE tags SET state = 'Building' WHERE image_id = $1 AND name = 'a'", image_id)
    assert tuple(await pool.fetchrow(state, image_id)) == ("Building", T0)
    await pool.execute("UPDATE tags SET state = 'Failed' WHERE image_id = $1 AND name = 'a'", image_id)
    assert tuple(await pool.fetchrow(state, image_id)) == ("Failed", T0)
    await pool.execute("DELETE FROM tags WHERE image_id = $1 AND name = 'a'", image_id)
    assert tuple(await pool.fetchrow(state, image_id)) == ("Success", None)
    await pool.execute("DELETE FROM tags WHERE image_id = $1", image_id)
    assert tuple(await pool.fetchrow(state, image_id)) == ("Empty", None)


async def test_schema_reapplies_without_loss(pool: asyncpg.Pool) -> None:
    from core.db import apply_schema

    image_id = await insert_image(pool, tags=["x"], description="kept")
    async with pool.acquire() as conn:
        await apply_schema(conn)
        await apply_schema(conn)
    row = await pool.fetchrow(
        "SELECT description, state, (SELECT count(*) FROM tags WHERE image_id = $1) AS n FROM images WHERE id = $1",
        image_id,
    )
    assert tuple(row) == ("kept", "Success", 1)
