"""What proof by content costs (SPEC §1): the syncs of one worker process (an in-process
Runtime, as the tests use) against the real CNCF registry, counted from the registry's own
access log and timed.

    .venv/bin/python -m bench.proof_bench [--repos 200] [--tags 10] [--redis-url redis://127.0.0.1:6379/14]

It starts the registry (`/usr/bin/docker-registry`, temporary storage, access log on), pushes
REPOS x TAGS images (every tag its own config), inserts REPOS shared-catalog images into a fresh
database (`rs_bench_proof`) and, in order:

1. first sync of every image;
2. re-sync, nothing changed (the cheap path: a HEAD per tag, no GET);
3. the upgrade: every `layer_sources` row marked unproven, as migrations/0009 leaves the records
   of the HEAD rule; then re-sync: each config proven again by one blob GET, no manifest GET;
4. re-sync, nothing changed, again.

Each phase runs with a fresh Runtime (an empty config cache: only Postgres remembers),
REGISTRY_CONCURRENCY images at a time. The database is
dropped at the end unless --keep-db; the Redis database is flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from collections.abc import Sequence

import asyncpg
import redis

from bench.common import recreate_database, server_dsn
from bench.registry_load import LoggedRegistry, push_all, repo_name
from core.registries import ensure_registry
from core.settings import Settings
from worker import sync
from worker.runtime import Runtime

BENCH_DB = "rs_bench_proof"
KINDS = ("GET ping", "GET tags", "HEAD manifest", "GET manifest", "HEAD blob", "GET blob")


async def _insert_images(dsn: str, host: str, repos: int, settings: Settings) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        registry_id = await ensure_registry(conn, host, settings)
        return [
            await conn.fetchval(
                "INSERT INTO images (name, registry_id, repository, is_private_image, access_proven)"
                " VALUES ($1, $2, $3, false, true) RETURNING id",
                f"{host}/{repo_name(r)}", registry_id, repo_name(r))
            for r in range(repos)
        ]
    finally:
        await conn.close()


async def _phase(settings: Settings, reg: LoggedRegistry, ids: list[int]) -> tuple[float, dict[str, int]]:
    mark = reg.mark()
    rt = await Runtime(settings, name="proof-bench").open()
    try:
        # as many images at once as the process gives one registry host (worker/shares.py)
        gate = asyncio.Semaphore(settings.registry_concurrency)

        async def one(image_id: int) -> str:
            async with gate:
                return await sync.sync_image(rt, image_id)

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(i) for i in ids))
        seconds = time.perf_counter() - started
    finally:
        await rt.aclose()
    assert outcomes == [sync.SYNCED] * len(ids), set(outcomes)
    logged = reg.requests_since(mark)
    return seconds, {k: logged.get(k, 0) for k in KINDS}


async def run(repos: int, tags: int, redis_url: str, keep_db: bool) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with LoggedRegistry() as reg:
        push_all(reg, repos, tags)
        server = server_dsn()
        dsn = await recreate_database(server, BENCH_DB)
        redis.Redis.from_url(redis_url).flushdb()
        settings = Settings.from_env(
            {}, database_url=dsn, redis_url=redis_url, secret_key="proof-bench-" + "x" * 32,
            allow_private_registries=True, log_level="warning", insecure_registries=frozenset({reg.host}),
        )
        settings = dataclasses.replace(settings, hub_default_max_tags=0)
        try:
            ids = await _insert_images(dsn, reg.host, repos, settings)
            rows: list[tuple[str, float, dict[str, int]]] = []
            rows.append(("first sync", *await _phase(settings, reg, ids)))
            rows.append(("re-sync, unchanged", *await _phase(settings, reg, ids)))
            conn = await asyncpg.connect(dsn)
            try:
                marked = await conn.execute("UPDATE layer_sources SET proven_by_content = false")
            finally:
                await conn.close()
            rows.append((f"re-sync after the upgrade ({marked.split()[-1]} rows unproven)",
                         *await _phase(settings, reg, ids)))
            rows.append(("re-sync, unchanged, again", *await _phase(settings, reg, ids)))
        finally:
            redis.Redis.from_url(redis_url).flushdb()
            if not keep_db:
                await recreate_database(server, BENCH_DB, drop_only=True)
    print(f"\n{repos} images x {tags} tags, 1 worker process\n")
    print("| phase | seconds | tags/s | " + " | ".join(KINDS) + " |")
    print("|---|---:|---:|" + "---:|" * len(KINDS))
    for name, seconds, counts in rows:
        cells = " | ".join(f"{counts[k]:,}" for k in KINDS)
        print(f"| {name} | {seconds:.2f} | {repos * tags / seconds:,.0f} | {cells} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--tags", type=int, default=10)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(run(args.repos, args.tags, args.redis_url, args.keep_db))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
