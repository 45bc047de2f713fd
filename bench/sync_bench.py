"""Registry sync benchmark: real `registry-sync worker` processes against the real CNCF
registry made to look 100 ms away, scaled over 1, 2 and 4 processes, against the skopeo loop
an operator would script instead, and within a fleet-wide budget.

    .venv/bin/python -m bench.sync_bench [--repos 500] [--tags 10] [--workers 1,2,4]

It starts the CNCF registry (`/usr/bin/docker-registry`, temporary storage) on a free
127.0.0.1 port, pushes REPOS x TAGS images straight to it (no layer blobs; every tag has its
own config, so every config digest differs), and starts the delaying proxy in front of it
(bench/registry_load.py: --delay s each way, so a 100 ms round trip by default; it counts
the requests reaching the registry per second). Everything below goes through the proxy.

(a) skopeo baseline, sequential like a shell loop, on a random sample of --skopeo-sample
    repositories, scaled to all: `skopeo list-tags`, then `skopeo inspect --config` per tag.
(b) for each worker count N: a fresh database (`rs_bench_sync`), REPOS images inserted
    directly (not due yet), a flushed Redis database of its own, N `registry-sync worker
    --queues routine` processes and one `registry-sync beat`. The proxy's host has no fleet
    budget here (REGISTRY_LIMITS sets it unlimited, HOST_SHARE=1 and ACCOUNT_SHARE=1: it is the
    only registry, the catalog the only account), so
    each process is held to --per-process requests in flight (REGISTRY_CONCURRENCY): the
    scaling measured is the workers'. Once every worker answers a Celery ping and beat holds
    its lock, every image is made due and the clock runs until every image has synced.
(c) the budget run: --budget-workers processes sync --budget-repos repositories with
    REGISTRY_LIMITS = {proxy host: {"rate": --budget-rate, "burst": 1}}; the proxy's count of
    requests per second must never pass the rate by more than 10 %.

Everything it starts is stopped on exit, also on error, Ctrl-C/SIGTERM or the --timeout
watchdog; the database is dropped unless --keep-db, and the Redis database is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis

from bench.common import Db, Procs, flush_redis, foreign_redis_clients, recreate_database, wait_for
from bench.registry_load import SKOPEO, LoggedRegistry, SkopeoResult, push_all, read_counts, skopeo_baseline
from core.queue import make_celery
from core.settings import Settings
from worker.scheduler import BEAT_LOCK

BENCH_DB = "rs_bench_sync"
SECRET = secrets.token_urlsafe(32)  # the throwaway SECRET_KEY of the bench workers


def insert_images(db: Db, host: str, repos: int) -> None:
    """The registry row, then every image (`bench/app0000` …), not yet due."""
    db.val("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", host)
    db.val(
        "INSERT INTO images (name, registry_id, repository, next_sync_at)"
        " SELECT $1 || '/bench/app' || lpad(i::text, 4, '0'), r.id, 'bench/app' || lpad(i::text, 4, '0'),"
        "        now() + interval '1 hour'"
        " FROM generate_series(0, $2 - 1) AS i, registries AS r WHERE r.host = $1",
        host, repos,
    )


@dataclass
class Run:
    workers: int
    repos: int
    seconds: float
    requests: int
    per_second: dict[int, int]


def worker_env(dsn: str, redis_url: str, host: str, args: argparse.Namespace, limits: dict) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SECRET_KEY": SECRET,
        "ALLOW_PRIVATE_REGISTRIES": "1", "INSECURE_REGISTRIES": host,
        "LOG_LEVEL": "warning", "LOG_FORMAT": "json",
        "SYNC_INTERVAL_SECONDS": "86400",  # nothing falls due again by itself
        "BEAT_INTERVAL_SECONDS": "0.1",  # scheduler latency: at most 0.1 s of each figure
        "REGISTRY_CONCURRENCY": str(args.per_process), "HOST_SHARE": "1", "ACCOUNT_SHARE": "1",
        "REGISTRY_LIMITS": json.dumps({host: limits}),
    }


def ready_workers(redis_url: str) -> int:
    app = make_celery(Settings(redis_url=redis_url), name="sync-bench-ping")
    try:
        with app.connection_for_write() as conn:
            return len(app.control.ping(timeout=0.5, connection=conn) or [])
    finally:
        app.close()


def measure(args: argparse.Namespace, host: str, counts: Path, procs: Procs, server_dsn: str, redis_url: str,
            n_workers: int, repos: int, limits: dict) -> Run:
    dsn = asyncio.run(recreate_database(server_dsn, BENCH_DB))
    # the previous round's connections close with its processes: what stays is someone else's
    deadline = time.monotonic() + 10
    while (others := foreign_redis_clients(redis_url)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if others:
        raise RuntimeError(f"other clients use Redis {redis_url} (pick another --redis-db): {others}")
    flush_redis(redis_url)
    db = Db(dsn)
    try:
        insert_images(db, host, repos)
        env = worker_env(dsn, redis_url, host, args, limits)
        for _ in range(n_workers):
            procs.start("worker", ["worker", "--queues", "routine"], env)
        wait_for(lambda: ready_workers(redis_url) >= n_workers, 60,
                 f"{n_workers} worker(s) to answer a Celery ping", interval=0.2, check=procs.check_alive)
        procs.start("beat", ["beat"], env)
        wait_for(lambda: db.val(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            BEAT_LOCK), 30, "beat to take its lock", check=procs.check_alive)
        time.sleep(1.5)  # a whole second of the proxy's counts before the mark
        before = read_counts(counts)
        started, first_second = time.monotonic(), int(time.time())
        since = db.val("WITH due AS (UPDATE images SET next_sync_at = now() RETURNING 1)"
                       " SELECT now() FROM (SELECT count(*) FROM due) AS c")
        wait_for(lambda: db.val("SELECT count(*) FROM images WHERE last_synced_at > $1", since) >= repos,
                 args.sync_timeout, f"{repos} images to sync", check=procs.check_alive)
        seconds = time.monotonic() - started
        last_second = int(time.time())
        time.sleep(1.5)
        after = read_counts(counts)
        check_synced(db, repos, args.tags)
        window = {s: after.get(s, 0) - before.get(s, 0) for s in range(first_second, last_second + 1)}
        return Run(n_workers, repos, seconds, sum(window.values()), window)
    except BaseException:
        procs.dump()
        raise
    finally:
        procs.stop_all(timeout=90)
        db.close()


def check_synced(db: Db, repos: int, tags: int) -> None:
    failed = db.val("SELECT count(*) FROM images WHERE sync_error IS NOT NULL OR state <> 'Success'")
    if failed:
        raise RuntimeError(f"{failed} image(s) not synced: " + str(db.val("SELECT min(sync_error) FROM images")))
    n_tags = db.val("SELECT count(*) FROM tags WHERE config_digest IS NOT NULL AND build_date IS NOT NULL")
    if n_tags != repos * tags:
        raise RuntimeError(f"{n_tags} complete tags after the sync, expected {repos * tags}")


def report(args: argparse.Namespace, push_s: float, sk: SkopeoResult | None, runs: list[Run],
           budget: Run | None) -> bool:
    repos, tags = args.repos, args.tags
    rtt = 2 * args.delay * 1000
    print()
    print(f"registry sync benchmark: {repos} repositories x {tags} tags through a {rtt:.0f} ms round-trip proxy; "
          f"{os.cpu_count()} cores; push {push_s:.1f} s; REGISTRY_CONCURRENCY={args.per_process} per process; "
          "load average at the end " + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    print()
    print(f"| {'run':<56} | {'seconds':>8} | {'tags/s':>8} | {'requests':>8} | {'req/s':>7} |")
    print(f"|{'-' * 58}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    if sk is not None:
        label = f"skopeo loop (sample of {sk.repos_measured}, scaled)"
        print(f"| {label:<56} | {sk.seconds:8.1f} | {repos * tags / sk.seconds:8.1f} | "
              f"{sk.requests * repos // sk.repos_measured:8d} | {'':>7} |")
    for r in [*runs, *([budget] if budget else [])]:
        label = f"first sync, {r.workers} worker process(es)" + (
            f", budget {args.budget_rate:g}/s, {r.repos} repos" if r is budget else "")
        print(f"| {label:<56} | {r.seconds:8.2f} | {r.repos * tags / r.seconds:8.1f} | {r.requests:8d} | "
              f"{r.requests / r.seconds:7.1f} |")
    ok = True
    print()
    if sk is not None:
        print(f"skopeo: {sk.repos_measured} repositories ({sk.tags_measured} tags) took {sk.measured_seconds:.1f} s, "
              f"{sk.measured_seconds / (sk.repos_measured + sk.tags_measured) * 1000:.0f} ms per invocation; "
              f"scaled to {repos}: {sk.seconds:.0f} s")
    by = {r.workers: r for r in runs}
    if 1 in by and sk is not None:
        ratio = sk.seconds / by[1].seconds
        ok &= ratio >= 20
        print(f"  skopeo loop / 1 worker:   {ratio:6.1f}x  ({'meets' if ratio >= 20 else 'MISSES'} the >= 20x target)")
    for n in sorted(by):
        if n > 1 and 1 in by:
            speedup = by[1].seconds / by[n].seconds
            target = " (target >= 3.5x)" if n == 4 else ""
            if n == 4:
                ok &= speedup >= 3.5
                target = f" ({'meets' if speedup >= 3.5 else 'MISSES'} the >= 3.5x target)"
            print(f"  speed-up, {n} workers / 1: {speedup:6.2f}x{target}")
    if budget is not None:
        limit = args.budget_rate * 1.1
        worst = max(budget.per_second.values(), default=0)
        ok &= worst <= limit
        print(f"  budget {args.budget_rate:g} requests/s, {budget.workers} workers: busiest second {worst} requests "
              f"({'within' if worst <= limit else 'OVER'} {limit:.0f}); per second: "
              + " ".join(str(v) for _, v in sorted(budget.per_second.items())))
    return ok


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sync_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--repos", type=int, default=500)
    p.add_argument("--tags", type=int, default=10)
    p.add_argument("--workers", default="1,2,4", help="worker process counts to measure")
    p.add_argument("--delay", type=float, default=0.05, help="proxy delay each way, seconds")
    p.add_argument("--per-process", type=int, default=8,
                   help="REGISTRY_CONCURRENCY of each worker process (its default: 8)")
    p.add_argument("--skopeo-sample", type=int, default=10, help="repositories the skopeo loop is timed on")
    p.add_argument("--no-skopeo", action="store_true")
    p.add_argument("--budget-rate", type=float, default=50.0)
    p.add_argument("--budget-repos", type=int, default=100)
    p.add_argument("--budget-workers", type=int, default=4)
    p.add_argument("--no-budget", action="store_true")
    p.add_argument("--sync-timeout", type=float, default=900.0, help="limit of one timed sync")
    p.add_argument("--timeout", type=float, default=3600.0, help="limit of the whole run (watchdog)")
    p.add_argument("--redis-db", type=int, default=13, help="Redis database number used and flushed")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--keep-db", action="store_true")
    return p.parse_args(argv)


class Interrupted(Exception):
    pass


def _interrupt(signum: int, _: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts_of = [int(x) for x in args.workers.split(",") if x.strip()]
    if not args.no_skopeo and shutil.which(SKOPEO) is None:
        print("skopeo is missing: apt-get install -y skopeo (or --no-skopeo)", file=sys.stderr)
        return 2
    server_dsn = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = f"{os.environ.get('BENCH_REDIS_URL', 'redis://127.0.0.1:6379').rstrip('/')}/{args.redis_db}"
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(int(args.timeout))
    tmp = Path(tempfile.mkdtemp(prefix="rs-sync-bench-"))
    procs, proxy = Procs(tmp), Procs(tmp)
    reg = LoggedRegistry()
    rng = random.Random(args.seed)
    failed = True
    try:
        reg.start()
        print("load average at the start: " + "/".join(f"{x:.1f}" for x in os.getloadavg()))
        print(f"registry at {reg.host}; pushing {args.repos} x {args.tags} images ...", flush=True)
        t = time.monotonic()
        push_all(reg, args.repos, args.tags)
        push_s = time.monotonic() - t
        print(f"pushed in {push_s:.1f} s", flush=True)
        host, counts = f"127.0.0.1:{_free_port()}", tmp / "counts.json"
        proxy.start("proxy", ["proxy", "--listen", host, "--upstream", reg.host, "--delay", str(args.delay),
                              "--counts", str(counts)], {}, module="bench.registry_load")
        wait_for(counts.exists, 10, "the proxy", check=proxy.check_alive)
        print(f"proxy at {host}: {2 * args.delay * 1000:.0f} ms round trip", flush=True)
        sk = None
        if not args.no_skopeo:
            print(f"skopeo loop on {args.skopeo_sample} repositories ...", flush=True)
            sk = skopeo_baseline(host, args.repos, args.tags, args.skopeo_sample, rng, counts)
            print(f"  {sk.measured_seconds:.1f} s, scaled to {args.repos}: {sk.seconds:.0f} s", flush=True)
        runs = []
        for n in counts_of:
            print(f"{n} worker process(es) ...", flush=True)
            runs.append(measure(args, host, counts, procs, server_dsn, redis_url, n, args.repos,
                                {"concurrency": 0, "rate": 0}))
            print(f"  {runs[-1].seconds:.2f} s, {runs[-1].requests} requests", flush=True)
        budget = None
        if not args.no_budget:
            print(f"budget run: {args.budget_workers} workers, {args.budget_rate:g} requests/s ...", flush=True)
            budget = measure(args, host, counts, procs, server_dsn, redis_url, args.budget_workers,
                             min(args.budget_repos, args.repos), {"rate": args.budget_rate, "burst": 1})
            print(f"  {budget.seconds:.2f} s, {budget.requests} requests", flush=True)
        ok = report(args, push_s, sk, runs, budget)
        failed = False
        return 0 if ok else 1
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"interrupted ({exc}): cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if failed:
            procs.dump()
            proxy.dump()
        procs.stop_all()
        proxy.stop_all()
        reg.stop()
        try:
            flush_redis(redis_url)
        except redis.RedisError:
            pass
        if not args.keep_db:
            try:
                asyncio.run(recreate_database(server_dsn, BENCH_DB, drop_only=True))
            except (OSError, asyncpg.PostgresError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
