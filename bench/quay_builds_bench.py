"""What reading Quay's build API costs: a sync of an image on a Quay host (tags + its builds)
against the same sync by a worker for which the host is not one (QUAY_HOSTS empty: tags
only), and a build poll alone (one request to the build API and one transaction) against a
sync.

    .venv/bin/python -m bench.quay_builds_bench [--images 50] [--tags 3] [--rounds 3]

It starts the real CNCF registry on a free 127.0.0.1 port with the loopback stand-in for a
Quay host in front of it (tests/support/quay.py: `/v2/` passed to the registry, the build
API answering five scripted builds per repository, one of them running), pushes IMAGES
repositories of TAGS tags, and registers each by the stand-in's host in a fresh database
(`rs_bench_quay`). Two worker Runtimes on this process's loop, one with the stand-in in
QUAY_HOSTS and one without; after a warm-up sync of every image, per round: every image
synced one after another by each, then every image's builds polled alone. Figures: mean ms
per image (median over rounds), the ratios, the build API requests sent. The database is
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import statistics
import time

from bench.common import recreate_database, server_dsn
from core.logs import configure_logging
from core.settings import Settings
from tests.support.quay import QuayStandIn, quay_build
from tests.support.registry import RegistryServer, push_image
from worker import quay_builds, sync
from worker.runtime import Runtime

BENCH_DB = "rs_bench_quay"


async def _register(rt: Runtime, host: str, repos: list[str]) -> list[int]:
    ids = []
    async with rt.pool.acquire() as conn:
        registry_id = await conn.fetchval(
            "INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false) RETURNING id", host)
        for repo in repos:
            ids.append(await conn.fetchval(
                "INSERT INTO images (name, registry_id, repository, next_sync_at)"
                " VALUES ($1, $2, $3, now() + interval '1 day') RETURNING id", f"{host}/{repo}", registry_id, repo))
    return ids


async def _timed(work: list[int], one: object) -> float:
    """Mean milliseconds of `one(image_id)` over `work`, one after another."""
    started = time.perf_counter()
    for image_id in work:
        await one(image_id)  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000 / len(work)


async def main(args: argparse.Namespace) -> None:
    dsn = await recreate_database(server_dsn(), BENCH_DB)
    try:
        with RegistryServer() as reg, QuayStandIn(reg) as quay:
            repos = [f"bench{i}/app" for i in range(args.images)]
            for repo in repos:
                for t in range(args.tags):
                    push_image(reg.url, repo, f"v{t}", {"created": "2024-01-01T00:00:00Z"}, layers=0)
                quay.script(repo, [quay_build(f"{repo}-5", "building", ["v0"], repository=repo),
                                   *(quay_build(f"{repo}-{n}", "complete", ["v0"], repository=repo)
                                     for n in range(4, 0, -1))])
            settings = dataclasses.replace(
                Settings.from_env({}), database_url=dsn, redis_url="", secret_key=secrets.token_urlsafe(32),
                allow_private_registries=True, insecure_registries=frozenset({reg.host, quay.host}),
                quay_hosts=frozenset({quay.host}), log_level="warning",
            )
            rt = await Runtime(settings, name="bench").open()
            plain = await Runtime(dataclasses.replace(settings, quay_hosts=frozenset()), name="bench-plain").open()
            try:
                ids = await _register(rt, quay.host, repos)
                for image_id in ids:  # warm-up: tags, configs and tokens known
                    await sync.sync_image(rt, image_id)
                    await sync.sync_image(plain, image_id)
                rounds: dict[str, list[float]] = {"quay sync": [], "plain sync": [], "build poll": []}
                before = rt.client.requests.copy()
                for _ in range(args.rounds):
                    rounds["quay sync"].append(await _timed(ids, lambda i: sync.sync_image(rt, i)))
                    rounds["plain sync"].append(await _timed(ids, lambda i: sync.sync_image(plain, i)))
                    rounds["build poll"].append(await _timed(ids, lambda i: quay_builds.poll(rt, i)))
                sent = rt.client.requests - before
                assert plain.client.requests[("GET", "builds")] == 0
            finally:
                await plain.aclose()
                await rt.aclose()
    finally:
        await recreate_database(server_dsn(), BENCH_DB, drop_only=True)
    median = {k: statistics.median(v) for k, v in rounds.items()}
    print(f"images={args.images} tags={args.tags} rounds={args.rounds} load={os.getloadavg()[0]:.2f}")
    for what, ms in median.items():
        print(f"  {what:<11} {ms:7.2f} ms/image (rounds: {', '.join(f'{x:.2f}' for x in rounds[what])})")
    print(f"  quay sync / plain sync = {median['quay sync'] / median['plain sync']:.2f}x")
    print(f"  build poll / quay sync = {median['build poll'] / median['quay sync']:.2f}x")
    print(f"  build API requests: {sent[('GET', 'builds')]} for {2 * args.rounds * args.images} reads")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--tags", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    configure_logging("warning")
    asyncio.run(main(parser.parse_args()))
