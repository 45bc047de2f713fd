"""The one lock order of every transaction that writes an image's tags (SPEC §2).

A writer locks the rows of the images it will write, in id order, before it writes any tag,
and before it inserts layers (in digest order); the state trigger (schema.sql
refresh_image_state) then finds the locks held and aggregates on fresh data. Two writers
therefore never hold one lock each and wait for the other's: no deadlock, no stale state.
The sync's write locks its single image first (worker/store.py write_success); a batch of
webhook events locks its images in the statement that finds them (worker/inbox.py), in the
same order; so does a read of a build API (worker/quay_builds.py). Build states then write
the repository's `builds` rows (in build-id order when several) before the tags
(worker/builds.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

LOCK_IMAGES_SQL = """
SELECT id, access_proven FROM images WHERE id = ANY ($1::bigint[]) ORDER BY id FOR UPDATE
"""


async def lock_images(conn: asyncpg.Connection, image_ids: Iterable[int]) -> dict[int, bool]:
    """Lock these images' rows in id order, within the caller's transaction. Returns
    {id: access_proven} of those that still exist (read after the lock: current)."""
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    return {r["id"]: r["access_proven"] for r in await conn.fetch(LOCK_IMAGES_SQL, ids)}
