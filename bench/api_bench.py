"""API read-path benchmark at scale: lists, detail, tags, beside two bare-aiohttp ceilings.

    .venv/bin/python -m bench.api_bench [--images 1000000] [--duration 10] [--concurrency 32]
                                        [--web-workers 1] [--walk-pages 0] [--keep-db] [--reuse-db]

It creates the database `rs_bench` (`registry-sync migrate`, an account `bench`), seeds it
(bench/seed.py: 1,000,000 images and ~6,500,000 tags by default), starts `registry-sync web`
on 127.0.0.1 and drives it with `wrk` (a separate process, 32 connections, one Lua script
rotating through a file of paths), each set for `--duration` s after a 2 s warm-up:

- list, first page: `GET /api/v1/image/`;
- list, pages reached by following `next`: a walker follows `next` from the first page to the
  last (sequentially, timing each request), then wrk replays those exact URLs;
- list, random `offset`: `?limit=25&offset=k`, k uniform over the whole list;
- list, each SDK filter (jumpstart, is_private_image, is_user_image, registry,
  categories__name, name, a combination): their first three pages;
- image detail `GET /api/v1/image/<name>/` and tag detail `…/tag/<tag>/` over random rows;
- the tag list of the 10,000-tag image, every page (by `next`);

beside (a) `bench.baselines constant` (bare aiohttp, a constant body of the median size of the
API's answer) and (b) `bench.baselines lookup` (bare aiohttp + asyncpg, the same image/tag
look-up). It prints one table and the ratios against the targets. `--reuse-db` skips the seed
when `rs_bench` already holds `--images` images (re-runs take seconds, not minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import (
    HOST,
    Processes,
    Result,
    api_env,
    cli,
    free_port,
    percentile,
    recreate_database,
    run_wrk,
    run_wrk_bench,
    server_dsn,
    wait_http,
    with_db,
    write_wrk_script,
)
from bench.seed import REGISTRIES, seed
from core.accounts import add_api_key

BENCH_DB = "rs_bench"
ACCOUNT = "bench"
TARGETS = [  # (row, compared with, kind: ratio >= / p99 <=, target)
    ("list, first page", None, "p99", 20.0),
    ("list, by next (replayed)", None, "p99", 20.0),
    ("list, random offset", None, "p99", 100.0),
    ("image detail", "lookup: image detail", "ratio", 0.8),
    ("tag detail", "lookup: tag detail", "ratio", 0.8),
    ("list, first page", "constant: list body", "ratio", 0.3),
]


async def _reuse(args: argparse.Namespace, dsn: str) -> tuple[str, int] | None:
    """With --reuse-db and a seed of --images images there: (Authorization, account id)."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        n = await conn.fetchval("SELECT count(*) FROM images")
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE username = $1", ACCOUNT)
        key = await add_api_key(conn, ACCOUNT) if n == args.images else None
    finally:
        await conn.close()
    if key is None:
        return None
    print(f"reusing {BENCH_DB}: {n} images", flush=True)
    return f"ApiKey {ACCOUNT}:{key}", account_id


def _prepare(args: argparse.Namespace, dsn: str) -> tuple[str, int]:
    """(Authorization header, account id) of a freshly seeded database (or the reused one)."""
    if args.reuse_db and (reused := asyncio.run(_reuse(args, dsn))):
        return reused
    env = api_env(dsn, 0)
    asyncio.run(recreate_database(server_dsn(), BENCH_DB, schema=False))
    subprocess.run([cli("registry-sync"), "migrate"], env=env, check=True, timeout=300, stdout=subprocess.DEVNULL)
    out = subprocess.run([cli("registry-sync"), "create-account", ACCOUNT], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    key = out.stdout.strip().splitlines()[-1].strip()

    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            account_id: int = await conn.fetchval("SELECT id FROM accounts WHERE username = $1", ACCOUNT)
        finally:
            await conn.close()
        s = await seed(dsn, images=args.images, accounts=args.accounts, bench_account=account_id)
        print(f"seeded {s.images} images and {s.tags} tags in {s.seconds:.0f} s", flush=True)
        return account_id

    return f"ApiKey {ACCOUNT}:{key}", asyncio.run(go())


async def _samples(dsn: str, account_id: int, n: int) -> tuple[list[str], list[str], str]:
    """Random image detail paths, tag detail paths, and the name of the 10,000-tag image."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT i.name, (SELECT t.name FROM tags AS t WHERE t.image_id = i.id LIMIT 1) AS tag"
                                "  FROM images AS i WHERE i.owner_id IS NULL OR i.owner_id = $1"
                                " ORDER BY random() LIMIT $2", account_id, n)
        big = await conn.fetchval("SELECT i.name FROM images AS i JOIN tags AS t ON t.image_id = i.id"
                                  " WHERE i.owner_id = $1 GROUP BY i.name ORDER BY count(*) DESC LIMIT 1", account_id)
    finally:
        await conn.close()
    return ([f"/api/v1/image/{r['name']}/" for r in rows],
            [f"/api/v1/image/{r['name']}/tag/{r['tag']}/" for r in rows if r["tag"]], big)


async def _walk(base: str, auth: str, url: str, max_pages: int) -> tuple[list[str], list[float], int]:
    """Follow `next` from `url`: (every URL visited, each request's seconds, the total_count)."""
    urls: list[str] = []
    times: list[float] = []
    total = 0
    async with aiohttp.ClientSession(base, headers={"Authorization": auth}) as session:
        next_url: str | None = url
        while next_url is not None and (not max_pages or len(urls) < max_pages):
            started = time.perf_counter()
            async with session.get(next_url) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"{next_url}: {resp.status} {body}")
            times.append(time.perf_counter() - started)
            urls.append(next_url)
            total = body["meta"]["total_count"]
            next_url = body["meta"]["next"]
    return urls, times, total


async def _get(base: str, auth: str, paths: Sequence[str]) -> list[bytes]:
    async with aiohttp.ClientSession(base, headers={"Authorization": auth}) as session:
        out = []
        for p in paths:
            async with session.get(p) as resp:
                out.append(await resp.read())
        return out


def _median(bodies: list[bytes]) -> bytes:
    return sorted(bodies, key=len)[len(bodies) // 2]


class Run:
    def __init__(self, args: argparse.Namespace, tmp: Path, auth: str) -> None:
        self.args, self.tmp = args, tmp
        self.results: dict[str, Result] = {}
        self.script = write_wrk_script(tmp / "wrk.lua", auth)
        self.script.chmod(0o600)
        self.files: dict[str, Path] = {}

    def paths(self, label: str, paths: Sequence[str]) -> None:
        self.files[label] = self.tmp / f"paths{len(self.files)}.txt"
        self.files[label].write_text("".join(f"{p}\n" for p in paths))

    def measure(self, label: str, base: str, paths: str) -> Result:
        a = self.args
        run_wrk(base, self.script, self.files[paths], duration=2, concurrency=a.concurrency)
        r = run_wrk(base, self.script, self.files[paths], duration=a.duration, concurrency=a.concurrency)
        self.results[label] = r
        print(f"  {label:<32} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
              f"  errors {r.errors}", flush=True)
        if r.errors:
            raise RuntimeError(f"{label}: {r.errors} failed requests (logs in {self.tmp})")
        return r


def bench(args: argparse.Namespace, tmp: Path, procs: Processes) -> int:
    dsn = with_db(server_dsn(), BENCH_DB)
    auth, account_id = _prepare(args, dsn)
    details, tag_details, big = asyncio.run(_samples(dsn, account_id, 20_000))
    rng = random.Random(14)
    port = free_port()
    base = f"http://{HOST}:{port}"
    api = procs.start([cli("registry-sync"), "web", "--workers", str(args.web_workers)],
                      api_env(dsn, port, EVENTS_IN_WEB="0"), tmp / "api.log")
    wait_http(f"{base}/healthz", api)
    run = Run(args, tmp, auth)

    walked, walk_times, total = asyncio.run(_walk(base, auth, "/api/v1/image/", args.walk_pages))
    print(f"walker: {len(walked)} pages by next of {total} images: p50 {percentile(walk_times, 50) * 1000:.2f} ms"
          f"  p99 {percentile(walk_times, 99) * 1000:.2f} ms  last page {walk_times[-1] * 1000:.2f} ms", flush=True)
    run.paths("first", ["/api/v1/image/"])
    run.paths("next", walked[1:] or walked)
    run.paths("offset", [f"/api/v1/image/?limit=25&offset={rng.randrange(total)}" for _ in range(20_000)])
    filters = ["jumpstart=true", "is_private_image=true", "is_private_image=false", "is_user_image=true",
               "is_user_image=false", f"registry=/api/v1/registry/{REGISTRIES[1]}/", "categories__name=Databases",
               f"name={details[0].split('/api/v1/image/')[1].rstrip('/')}",
               "jumpstart=false&is_private_image=false&categories__name=Caches"]
    filter_urls = []
    for f in filters:
        filter_urls += asyncio.run(_walk(base, auth, f"/api/v1/image/?{f}", 3))[0]
    run.paths("filters", filter_urls)
    run.paths("detail", details)
    run.paths("tag", tag_details)
    tag_pages, _, n_tags = asyncio.run(_walk(base, auth, f"/api/v1/image/{big}/tag/", 0))
    run.paths("tags", tag_pages)
    print(f"API, {args.web_workers} web process(es), LOG_LEVEL=warning:", flush=True)
    run.measure("list, first page", base, "first")
    run.measure("list, by next (replayed)", base, "next")
    run.measure("list, random offset", base, "offset")
    run.measure("list, SDK filters (3 pages each)", base, "filters")
    run.measure("image detail", base, "detail")
    run.measure("tag detail", base, "tag")
    run.measure(f"tag list of {n_tags} tags, by next", base, "tags")
    detail_body = _median(asyncio.run(_get(base, auth, details[:101])))
    list_body = _median(asyncio.run(_get(base, auth, ["/api/v1/image/"])))
    procs.stop(api)

    (tmp / "detail.json").write_bytes(detail_body)
    (tmp / "list.json").write_bytes(list_body)
    for kind, argv, cases in (
        ("constant", [str(tmp / "detail.json"), str(tmp / "list.json")],
         (("detail body", "detail"), ("list body", "first"))),
        ("lookup", [dsn, str(account_id)], (("image detail", "detail"), ("tag detail", "tag"))),
    ):
        port = free_port()
        proc = procs.start([sys.executable, "-m", "bench.baselines", kind, str(port), *argv,
                            "--workers", str(args.web_workers)], dict(os.environ), tmp / f"{kind}.log")
        wait_http(f"http://{HOST}:{port}/healthz", proc)
        print(f"{kind} (bare aiohttp{' + asyncpg' if kind == 'lookup' else ''}):", flush=True)
        for label, paths in cases:
            run.measure(f"{kind}: {label}", f"http://{HOST}:{port}", paths)
        procs.stop(proc)
    report(args, run.results, len(detail_body), len(list_body), total)
    return 0


def report(args: argparse.Namespace, results: dict[str, Result], detail_size: int, list_size: int,
           total: int) -> None:
    print(f"\nimages={args.images} visible to the bench account={total} duration={args.duration:g}s "
          f"concurrency={args.concurrency} web_workers={args.web_workers} cpus={os.cpu_count()} "
          f"load average at the end={os.getloadavg()[0]:.2f} (other work on the machine skews it)")
    print(f"bodies: detail {detail_size} B, list page {list_size} B\n")
    print("| what | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |")
    print("\n| target | value | goal | met |\n|---|---:|---:|---|")
    for label, other, kind, goal in TARGETS:
        r = results[label]
        if kind == "p99":
            print(f"| {label}: p99 | {r.p99_ms:.1f} ms | <= {goal:g} ms | {'yes' if r.p99_ms <= goal else 'NO'} |")
        else:
            assert other is not None
            ratio = r.rps / results[other].rps
            print(f"| {label} / {other} | {ratio:.2f} | >= {goal:g} | {'yes' if ratio >= goal else 'NO'} |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.api_bench", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--accounts", type=int, default=1000, help="accounts owning images besides the bench one")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", type=int, default=32, help="open connections")
    p.add_argument("--web-workers", type=int, default=1, help="processes of the API and of each baseline")
    p.add_argument("--walk-pages", type=int, default=0, help="stop the next-walker after this many (0: the end)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    p.add_argument("--reuse-db", action="store_true", help="skip the seed when rs_bench has --images images")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_wrk_bench(lambda tmp, procs: bench(args, tmp, procs), database=BENCH_DB,
                         keep_db=args.keep_db or args.reuse_db, prefix="rs-bench-")

if __name__ == "__main__":
    sys.exit(main())
