"""Every writer of an image's tags at once, on a few images, for a while: routine syncs
against the real registry (which a pusher keeps changing), webhook pushes with their
enrichment, webhook deletes, build events, the end of builds that time out, and PATCHes
through the API. Afterwards every
image's stored state and last_build_date must agree with the rule recomputed from its tags,
Postgres must have detected no deadlock, and the tag history must hold every digest a tag was
seen pointing at, in order, marked webhook or poll, with an open entry for exactly the tags
that have a digest now."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp.test_utils import TestClient

from api.webhooks import store_events
from core import webhooks as wh
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.support.registry import RegistryServer, apush_image, delete_manifest
from worker import builds, inbox, sync
from worker.runtime import Runtime

SECONDS = float(os.environ.get("RACE_SECONDS", "6"))
REPOSITORIES = 2
TAGS = [f"t{i}" for i in range(5)]

# The rule of SPEC §2, recomputed from the tags; rows are the images that disagree.
DISAGREE_SQL = """
SELECT i.id, i.state, i.last_build_date, r.state AS want_state, r.last_build_date AS want_date
  FROM images AS i
  CROSS JOIN LATERAL (
      SELECT CASE WHEN bool_or(t.state = 'Building') THEN 'Building'
                  WHEN bool_or(t.state = 'Failed') THEN 'Failed'
                  WHEN bool_or(t.state = 'Success') THEN 'Success'
                  ELSE 'Empty' END AS state,
             max(t.build_date) AS last_build_date
        FROM tags AS t WHERE t.image_id = i.id
  ) AS r
 WHERE i.id = ANY ($1::bigint[])
   AND (i.state, i.last_build_date) IS DISTINCT FROM (r.state, r.last_build_date)
"""
DEADLOCKS_SQL = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
SEEN_SQL = """
SELECT image_id, name, manifest_digest FROM tags WHERE image_id = ANY ($1::bigint[]) AND manifest_digest IS NOT NULL
"""
HISTORY_SQL = """
SELECT image_id, tag, digest, observed_via, valid_from, valid_until FROM tag_history
 WHERE image_id = ANY ($1::bigint[]) ORDER BY image_id, tag, seq
"""


async def _check_history(pool: asyncpg.Pool, ids: list[int], seen: set[tuple[int, str, str]]) -> list[str]:
    """What is wrong with the history of these images, given the (image, tag, digest) triples
    sampled during the race and the tags as they are now."""
    problems = []
    rows = await pool.fetch(HISTORY_SQL, ids)
    kept = {(r["image_id"], r["tag"], r["digest"]) for r in rows}
    problems += [f"seen but not in the history: {t}" for t in sorted(seen - kept)]
    now = {(r["image_id"], r["name"]): r["manifest_digest"] for r in await pool.fetch(SEEN_SQL, ids)}
    open_ = {(r["image_id"], r["tag"]): r["digest"] for r in rows if r["valid_until"] is None}
    if open_ != now:
        problems.append(f"open entries {open_} disagree with the tags {now}")
    for prev, cur in itertools.pairwise(rows):
        if (prev["image_id"], prev["tag"]) != (cur["image_id"], cur["tag"]):
            continue
        if prev["valid_until"] is None or prev["valid_until"] > cur["valid_from"]:
            problems.append(f"overlapping entries: {dict(prev)} then {dict(cur)}")
        elif prev["valid_until"] == cur["valid_from"] and prev["digest"] == cur["digest"]:
            problems.append(f"a 'move' to the same digest: {dict(cur)}")
    vias = {r["observed_via"] for r in rows}
    if vias != {"webhook", "poll"}:
        problems.append(f"observed_via: {vias}, want webhook and poll")
    return problems


async def _deadlocks(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(await conn.fetchval(DEADLOCKS_SQL))


def _created(rng: random.Random) -> str:
    day = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(hours=rng.randrange(24 * 365))
    return day.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_concurrent_writers_leave_every_image_true_and_never_deadlock(
    pool: asyncpg.Pool, wh_settings: Settings, wh_registry: RegistryServer, client: TestClient,
    make_user: MakeUser,
) -> None:
    rng = random.Random(9)
    owners = [await make_user(), await make_user()]
    repos = [f"{unique('race')}/app" for _ in range(REPOSITORIES)]
    digests: dict[str, list[str]] = {r: [] for r in repos}
    for repo in repos:
        for tag in TAGS:
            pushed = await apush_image(wh_registry.url, repo, tag, {"created": _created(rng)})
            digests[repo].append(pushed.digest)
    # Both accounts register the first repository (an event on it writes two images, locked
    # in id order), the first account also the second one.
    images = [(repos[0], owners[0]), (repos[0], owners[1]), (repos[1], owners[0])]
    ids: list[int] = []
    for repo, owner in images:
        ids.append(await insert_image(
            pool, name=f"{wh_registry.host}/{repo}", owner_id=owner.account.id, access_proven=True))
    by_id = {i: (repo, owner) for i, (repo, owner) in zip(ids, images, strict=True)}
    before = await _deadlocks(pool)

    # its own backends, named, so the test can tell when they are gone (see the end)
    dsn = wh_settings.database_url
    race_settings = dataclasses.replace(
        wh_settings, database_url=f"{dsn}{'&' if '?' in dsn else '?'}application_name=race")
    rt = await Runtime(race_settings, name="race", backoff_base=0.01, max_retry_wait=1.0).open()
    stop = time.monotonic() + SECONDS
    problems: list[str] = []
    counts: dict[str, int] = {}
    seen: set[tuple[int, str, str]] = set()  # (image, tag, digest) sampled by `check`

    async def loop(label: str, step: Callable[[], Awaitable[object]]) -> None:
        while time.monotonic() < stop:
            try:
                outcome = await step()
            except Exception as exc:  # every error is a finding
                problems.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            if outcome == inbox.FAILED:  # recorded on the event: Postgres refused the batch
                problems.append(f"{label}: {outcome}")
            counts[label] = counts.get(label, 0) + 1

    async def routine_sync() -> object:
        image_id = rng.choice(ids)
        if await sync.sync_image(rt, image_id) == sync.FAILED:
            # a registry error (a manifest deleted under the sync, a slow answer on a busy
            # machine) is recorded and backed off; a database error would have been raised
            error = await pool.fetchval("SELECT sync_error FROM images WHERE id = $1", image_id)
            counts["sync-failed"] = counts.get("sync-failed", 0) + 1
            assert error and "Postgres" not in error and "deadlock" not in error, error
        return None

    async def event(kind: str, repo: str | None = None, **kw: object) -> object:
        repo = repo or rng.choice(repos)
        ev = wh.WebhookEvent(
            wh.BUILD if kind == wh.BUILD_STATE else wh.REGISTRY, unique("race-ev"), kind,
            wh_registry.host, repo, payload={"race": True}, **kw,  # type: ignore[arg-type]
        )
        [event_id] = await store_events(rt.pool, [ev])
        return await inbox.process_event(rt, event_id)

    async def push() -> object:
        repo = rng.choice(repos)
        return await event(wh.PUSH, repo, tag=rng.choice(TAGS), digest=rng.choice(digests[repo]))

    async def delete() -> object:
        if rng.random() < 0.5:
            return await event(wh.DELETE_TAG, tag=rng.choice(TAGS))
        return await event(wh.DELETE_MANIFEST, digest=rng.choice(digests[rng.choice(repos)]))

    async def build() -> object:
        state = rng.choice([wh.BUILDING, wh.SUCCESS, wh.FAILED])
        at = datetime.now(UTC) + timedelta(seconds=rng.uniform(-2, 2))
        return await event(wh.BUILD_STATE, tag=rng.choice([*TAGS, "ci-only"]), build_state=state, occurred_at=at)

    async def build_timeout() -> object:
        await asyncio.sleep(0.05)
        return await builds.end_stale_builds(rt.pool, 1.0)  # builds left Building for 1 s end

    async def registry_change() -> object:
        repo = rng.choice(repos)
        if rng.random() < 0.2 and len(digests[repo]) > 1:
            await asyncio.to_thread(delete_manifest, wh_registry.url, repo, digests[repo].pop(0))
            return None
        pushed = await apush_image(wh_registry.url, repo, rng.choice(TAGS), {"created": _created(rng)})
        digests[repo].append(pushed.digest)
        return None

    async def patch() -> object:
        repo, owner = by_id[rng.choice(ids)]
        name = f"{wh_registry.host}/{repo}"
        body: dict[str, str] = {"description": unique("d")}
        if rng.random() < 0.3:
            body |= {"username": "u", "password": unique("p")}
        resp = await client.patch(f"/api/v1/image/{name}/", json=body, headers=owner.headers)
        if resp.status != 200:
            problems.append(f"PATCH {name}: {resp.status} {await resp.text()}")
        return None

    async def check() -> object:
        # Every committed state must already agree: a stale aggregate is caught here even
        # when a later write would have corrected it before the end.
        for row in await pool.fetch(DISAGREE_SQL, ids):
            problems.append(f"image {row['id']}: {row['state']}/{row['last_build_date']}, "
                            f"the tags say {row['want_state']}/{row['want_date']}")
        seen.update((r["image_id"], r["name"], r["manifest_digest"]) for r in await pool.fetch(SEEN_SQL, ids))
        await asyncio.sleep(0.005)
        return None

    try:
        await asyncio.gather(
            loop("check", check),
            *(loop(f"sync-{i}", routine_sync) for i in range(1, 5)),
            *(loop(f"push-{i}", push) for i in range(1, 6)),
            loop("delete", delete), loop("build-1", build), loop("build-2", build),
            loop("timeout", build_timeout),
            loop("registry", registry_change), loop("patch", patch),
        )
    finally:
        await rt.aclose()  # its backends exit, which flushes their statistics

    assert not problems, problems[:10]
    assert all(counts.get(k, 0) > 5 for k in ("sync-1", "push-1", "delete", "build-1", "patch")), counts
    assert await pool.fetch(DISAGREE_SQL, ids) == []
    history_problems = await _check_history(pool, ids, seen)
    assert not history_problems, history_problems[:10]
    # A detected deadlock is counted by the backend that detected it when it reports its
    # statistics (at the latest when it exits): wait for the writers' backends to be gone.
    await _writers_gone(pool)
    assert await _deadlocks(pool) == before


async def _writers_gone(pool: asyncpg.Pool, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'race'"
    for _ in range(int(within / 0.05)):
        if not await pool.fetchval(sql) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)
