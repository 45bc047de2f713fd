"""The memory of a web process serving the largest image list page (issue 17):

    .venv/bin/python -m bench.list_bench [--images 1000] [--tags 10000] [--concurrent 1,3]
                                         [--reuse-db] [--keep-db]

It creates the database `rs_listbench` (schema.sql), seeds `--images` images of one account,
each with `--tags` tags (generated inside Postgres, triggers off during the load; the lists'
entries, the tag counts and the image states then come from the schema's own functions),
starts one `registry-sync web` on 127.0.0.1 and, for each number N in `--concurrent`, sends
N `GET /api/v1/image/?limit=<images>` at once. Each is read as it arrives and thrown away
(the client keeps only a count of bytes and of tag URIs, and the body's last bytes), while:

- a thread samples the web process's VmRSS (/proc/<pid>/status) every 20 ms;
- another GETs `/healthz` every 100 ms and times it.

It prints the idle and peak RSS, each response's size, time and tag count, and the /healthz
latencies (median, max) during the downloads. `BENCH_REDIS_URL` (default
redis://127.0.0.1:6379/15) and `DATABASE_URL`'s server say where Redis and Postgres are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import (
    HOST,
    Processes,
    api_env,
    cli,
    free_port,
    percentile,
    print_failure,
    recreate_database,
    server_dsn,
    wait_http,
    with_db,
)
from core.accounts import add_api_key, create_account
from core.db import apply_schema
from tests.support.processes import rss_mb

BENCH_DB = "rs_listbench"
ACCOUNT = "listbench"
REGISTRY = "registry.example.com:5000"
PER_STATEMENT = 500_000  # tags inserted per statement

TAGS_SQL = """
INSERT INTO tags (image_id, name, state, build_date)
SELECT i.id, k / 100 || '.' || (k / 10) % 10 || '.' || k % 10 || '-bookworm', 'Success', now()
  FROM images AS i CROSS JOIN generate_series(1, $3::int) AS k
 WHERE i.id BETWEEN $1 AND $2
"""


async def seed(dsn: str, images: int, tags: int) -> str:
    """`images` images of a new account, `tags` tags each; the account's API key."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        _, key = await create_account(conn, ACCOUNT)
        await conn.execute("SET session_replication_role = replica")  # triggers off: backfilled below
        registry_id = await conn.fetchval("INSERT INTO registries (host, name) VALUES ($1, $1) RETURNING id", REGISTRY)
        await conn.execute(
            "INSERT INTO images (id, name, owner_id, registry_id, repository, is_private_image)"
            " SELECT g, $1 || '/team' || g || '/service-' || g, (SELECT id FROM accounts WHERE username = $2),"
            "        $3, 'team' || g || '/service-' || g, true FROM generate_series(1, $4::bigint) AS g",
            REGISTRY, ACCOUNT, registry_id, images)
        step = max(1, PER_STATEMENT // max(tags, 1))
        for first in range(1, images + 1, step):
            await conn.execute(TAGS_SQL, first, min(first + step - 1, images), tags)
            print(f"  seed: tags of images {first}-{min(first + step - 1, images)} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
        await conn.execute("SET session_replication_role = origin")
        await conn.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), $1)", images)
        await apply_schema(conn)  # backfills list entries and tag counts (schema.sql, "Lists at scale")
        await conn.execute("SELECT refresh_image_state(ARRAY(SELECT id FROM images))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    print(f"seeded {images} images x {tags} tags in {time.monotonic() - started:.0f} s", flush=True)
    return key


async def reuse(dsn: str, images: int, tags: int) -> str | None:
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        n = await conn.fetchval("SELECT count(*) FROM images")
        per = await conn.fetchval("SELECT max(n) FROM tag_counts")
        return await add_api_key(conn, ACCOUNT) if (n, per) == (images, tags) else None
    finally:
        await conn.close()


class Watch:
    """Peak RSS of `pid` and /healthz latencies, sampled in threads until stopped."""

    def __init__(self, pid: int, base: str) -> None:
        self.pid, self.base = pid, base
        self.peak = 0.0
        self.health: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True),
                         threading.Thread(target=self._healthz, daemon=True)]

    def _rss(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def _healthz(self) -> None:
        while not self._stop.wait(0.1):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=30) as r:  # noqa: S310 - 127.0.0.1
                    r.read()
            except OSError:
                continue
            self.health.append((time.perf_counter() - started) * 1000)

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(35)


async def download(base: str, auth: str, path: str) -> tuple[int, int, float, bytes, str | None]:
    """(bytes, tag URIs, seconds, the last bytes, ETag) of one GET read as it arrives."""
    started = time.perf_counter()
    size = tags = 0
    tail = b""
    async with aiohttp.ClientSession(base, headers={"Authorization": auth},
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        async with session.get(path) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{path}: {resp.status} {(await resp.read())[:300]!r}")
            etag = resp.headers.get("ETag")
            async for chunk in resp.content.iter_chunked(1 << 20):
                size += len(chunk)
                joined = tail + chunk
                tags += joined.count(b'/tag/') - tail.count(b'/tag/')
                tail = joined[-64:]
    return size, tags, time.perf_counter() - started, tail, etag


def bench(args: argparse.Namespace, tmp: Path, procs: Processes) -> int:
    dsn = with_db(server_dsn(), BENCH_DB)
    key = asyncio.run(reuse(dsn, args.images, args.tags)) if args.reuse_db else None
    if key is None:
        asyncio.run(recreate_database(server_dsn(), BENCH_DB))
        key = asyncio.run(seed(dsn, args.images, args.tags))
    auth = f"ApiKey {ACCOUNT}:{key}"
    port = free_port()
    base = f"http://{HOST}:{port}"
    env = api_env(dsn, port, EVENTS_IN_WEB="0",
                  REDIS_URL=os.environ.get("BENCH_REDIS_URL", f"redis://{HOST}:6379/15"))
    api = procs.start([cli("registry-sync"), "web"], env, tmp / "api.log")
    wait_http(f"{base}/healthz", api)
    path = f"/api/v1/image/?limit={args.images}"
    asyncio.run(download(base, auth, "/api/v1/image/?limit=1"))  # warm: pool, statements
    idle = rss_mb(api.pid)
    print(f"web process idle: {idle:.0f} MB RSS; load average {os.getloadavg()[0]:.1f}", flush=True)
    expected_tags = args.images * args.tags
    for n in args.concurrent:
        with Watch(api.pid, base) as watch:
            started = time.perf_counter()

            async def all_at_once(n: int = n) -> list[tuple[int, int, float, bytes, str | None]]:
                return await asyncio.gather(*(download(base, auth, path) for _ in range(n)))

            results = asyncio.run(all_at_once())
            wall = time.perf_counter() - started
            time.sleep(0.3)
        for size, tags, seconds, tail, etag in results:
            ok = tags == expected_tags and tail.endswith(b"]}")
            print(f"  {n} at once: {size / 1e6:,.0f} MB in {seconds:.1f} s, {tags:,} tag URIs, "
                  f"ETag {'yes' if etag else 'none'}{'' if ok else '  (INCOMPLETE)'}", flush=True)
            if not ok:
                raise RuntimeError(f"the list lacks tags: {tags} of {expected_tags} (ends {tail[-20:]!r})")
        h = watch.health
        print(f"{n} at once: peak RSS {watch.peak:.0f} MB (idle {idle:.0f} MB), all done in {wall:.1f} s; "
              f"/healthz during it: {len(h)} answers, median {percentile(h, 50):.1f} ms, "
              f"max {max(h, default=0):.1f} ms; load average {os.getloadavg()[0]:.1f}", flush=True)
        idle = rss_mb(api.pid)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--tags", type=int, default=10_000)
    p.add_argument("--concurrent", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3])
    p.add_argument("--reuse-db", action="store_true", help="keep rs_listbench when it holds this seed")
    p.add_argument("--keep-db", action="store_true", help="leave rs_listbench for the next run")
    args = p.parse_args(argv)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="rs-listbench-") as tmp:
        try:
            return bench(args, Path(tmp), procs)
        except Exception as exc:  # any failure: reported with the server's log
            return print_failure(exc, Path(tmp))
        finally:
            procs.stop_all()
            if not args.keep_db:
                asyncio.run(recreate_database(server_dsn(), BENCH_DB, drop_only=True))


if __name__ == "__main__":
    sys.exit(main())
