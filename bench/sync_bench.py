"""Registry sync benchmark: real workers against the real local registry, and the skopeo loop
an operator would script instead (issue 3).

    .venv/bin/python -m bench.sync_bench [--repos 200] [--tags 10] [--workers 1,2]

It starts the CNCF registry (`/usr/bin/docker-registry`, temporary storage, access log on)
on a free 127.0.0.1 port and pushes REPOS x TAGS images over HTTP (no layer blobs; every tag
has its own config, with its own `created` and labels, so every config digest differs). Then:

(b) the skopeo baseline, sequential like a plain shell loop: for each repository
    `skopeo list-tags --tls-verify=false docker://HOST/REPO`, then for each tag
    `skopeo inspect --config --tls-verify=false docker://HOST/REPO:TAG`. Repositories run in
    random order; when the projected full run exceeds --skopeo-budget seconds it stops after
    the sample and extrapolates (the output says so).
(a) for each worker count N: a fresh database (`rs_bench_sync`) with the schema, REPOS images
    inserted directly (next_sync_at an hour ahead), a dedicated flushed Redis database, N
    `registry-sync worker --queues routine` processes and one `registry-sync beat`. Once every
    worker answers a Celery ping and beat holds its lock, every image is made due and the
    clock runs until every image has last_synced_at (polling Postgres every 20 ms).
(c) then every image is made due again and the re-sync of the unchanged images is timed the
    same way, while the registry's access log counts the requests by method and kind.

Requests are counted through the registry's own access log (a line per request, written by
the registry process: no proxy sits between the workers and the registry, so the timings are
undisturbed; the log is on in every phase, skopeo's included). Everything it starts is stopped
on exit, also on error, Ctrl-C/SIGTERM or the --timeout watchdog; the database is dropped
unless --keep-db, and the Redis database is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench.common import recreate_database
from bench.registry_load import SKOPEO, LoggedRegistry, SkopeoResult, push_all, skopeo_baseline
from core.queue import make_celery
from core.settings import Settings
from worker.scheduler import BEAT_LOCK

BENCH_DB = "rs_bench_sync"
SECRET = secrets.token_urlsafe(32)  # the throwaway SECRET_KEY of the bench workers
POLL = 0.02


# ------------------------------------------------------------------ processes


class Procs:
    """Child processes, each in its own session with its output in a file of `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.{len(self.running)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", *args], env={**os.environ, **env},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.running.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.running:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")

    def dump(self) -> None:
        for name, _, log in self.running:
            print(f"--- {name} output:\n{tail(log)}", file=sys.stderr)

    def stop_all(self, timeout: float = 20.0) -> None:
        for _, proc, _ in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc, _ in self.running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the process group is ours alone
                proc.wait(5)
        self.running.clear()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = POLL,
             check: Callable[[], None] | None = None) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ database


class Db:
    """A synchronous handle on one connection (the bench's own loop)."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(dsn))

    def val(self, query: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.conn.fetchval(query, *args))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def insert_images(db: Db, host: str, repos: int) -> None:
    """As tests/worker/test_e2e.py does: the registry row, then every image, not yet due."""
    db.val("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", host)
    db.val(
        "INSERT INTO images (name, registry_id, repository, next_sync_at)"
        " SELECT $1 || '/bench/app' || lpad(i::text, 4, '0'), r.id, 'bench/app' || lpad(i::text, 4, '0'),"
        "        now() + interval '1 hour'"
        " FROM generate_series(0, $2 - 1) AS i, registries AS r WHERE r.host = $1",
        host, repos,
    )


# ------------------------------------------------------------------ measurements


@dataclass
class Run:
    seconds: float
    requests: Counter[str] = field(default_factory=Counter)


@dataclass
class WorkerResult:
    workers: int
    first: Run
    resync: Run


def worker_env(dsn: str, redis_url: str, registry_host: str) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SECRET_KEY": SECRET,
        "ALLOW_PRIVATE_REGISTRIES": "1", "INSECURE_REGISTRIES": registry_host,
        "LOG_LEVEL": "warning", "LOG_FORMAT": "json",
        "SYNC_INTERVAL_SECONDS": "86400",  # nothing falls due again by itself
        "BEAT_INTERVAL_SECONDS": "0.1",  # scheduler latency: at most 0.1 s of each figure
    }


def ready_workers(redis_url: str) -> int:
    app = make_celery(Settings(redis_url=redis_url), name="sync-bench-ping")
    try:
        with app.connection_for_write() as conn:
            return len(app.control.ping(timeout=0.5, connection=conn) or [])
    finally:
        app.close()


def own_tcp_ports() -> set[int]:
    """Local ports of this process's TCP sockets (Linux /proc)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def foreign_redis_clients(redis_url: str) -> list[str]:
    """Other connections to our Redis database (before our workers start there must be none:
    another bench or test using the same database number would take our messages)."""
    with redis.Redis.from_url(redis_url) as r:
        db = r.connection_pool.connection_kwargs.get("db", 0)
        clients = [c for c in r.client_list() if int(c.get("db", -1)) == db]
        mine = own_tcp_ports()
        return [f"{c['addr']} cmd={c.get('cmd')} age={c.get('age')}s" for c in clients
                if int(c["addr"].rsplit(":", 1)[1]) not in mine]


def flush_redis(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.flushdb()


def measure_workers(args: argparse.Namespace, reg: LoggedRegistry, procs: Procs, server_dsn: str,
                    redis_url: str, n_workers: int) -> WorkerResult:
    n = args.repos
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
        insert_images(db, reg.host, n)
        env = worker_env(dsn, redis_url, reg.host)
        for _ in range(n_workers):
            procs.start("worker", ["worker", "--queues", "routine"], env)
        wait_for(lambda: ready_workers(redis_url) >= n_workers, 60,
                 f"{n_workers} worker(s) to answer a Celery ping", interval=0.2, check=procs.check_alive)
        procs.start("beat", ["beat"], env)
        wait_for(lambda: db.val(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            BEAT_LOCK), 30, "beat to take its lock", check=procs.check_alive)

        first = timed_sync(db, reg, procs, n, args.sync_timeout)
        check_first_sync(db, n, args.tags)
        resync = timed_sync(db, reg, procs, n, args.sync_timeout)
        errors = db.val("SELECT count(*) FROM images WHERE sync_error IS NOT NULL")
        if errors:
            raise RuntimeError(f"{errors} image(s) failed to re-sync: "
                               + str(db.val("SELECT min(sync_error) FROM images")))
        return WorkerResult(n_workers, first, resync)
    except BaseException:
        procs.dump()
        raise
    finally:
        procs.stop_all()
        db.close()


def timed_sync(db: Db, reg: LoggedRegistry, procs: Procs, n: int, timeout: float) -> Run:
    """Make every image due now; time until each was synced after that moment."""
    time.sleep(0.5)  # let the registry's access log settle before the mark
    mark = reg.mark()
    started = time.monotonic()
    since = db.val("WITH due AS (UPDATE images SET next_sync_at = now() RETURNING 1)"
                   " SELECT now() FROM (SELECT count(*) FROM due) AS c")
    done_sql = "SELECT count(*) FROM images WHERE last_synced_at > $1 OR sync_error_at > $1"
    wait_for(lambda: db.val(done_sql, since) >= n, timeout, f"{n} images to sync", check=procs.check_alive)
    seconds = time.monotonic() - started
    time.sleep(0.2)
    return Run(seconds, reg.requests_since(mark))


def check_first_sync(db: Db, repos: int, tags: int) -> None:
    failed = db.val("SELECT count(*) FROM images WHERE sync_error IS NOT NULL OR state <> 'Success'")
    if failed:
        raise RuntimeError(f"{failed} image(s) not synced: " + str(db.val("SELECT min(sync_error) FROM images")))
    n_tags = db.val("SELECT count(*) FROM tags WHERE config_digest IS NOT NULL AND build_date IS NOT NULL")
    n_layers = db.val("SELECT count(*) FROM layers")
    if n_tags != repos * tags or n_layers != repos * tags:
        raise RuntimeError(f"after the first sync: {n_tags} complete tags and {n_layers} layers, "
                           f"expected {repos * tags} of each")


# ------------------------------------------------------------------ report


def fmt_requests(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def report(args: argparse.Namespace, push_s: float, sk: SkopeoResult | None, results: list[WorkerResult]) -> bool:
    repos, tags = args.repos, args.tags
    n_tags = repos * tags
    print()
    print(f"registry sync benchmark: {repos} repositories x {tags} tags = {n_tags} tags, "
          f"{os.cpu_count()} cores, push took {push_s:.1f} s, load average at the end "
          + "/".join(f"{x:.1f}" for x in os.getloadavg()))
    print()
    print(f"| {'run':<44} | {'seconds':>8} | {'images/s':>8} | {'tags/s':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")

    def row(label: str, s: float) -> None:
        print(f"| {label:<44} | {s:8.2f} | {repos / s:8.1f} | {n_tags / s:8.1f} |")

    if sk is not None:
        label = "skopeo list-tags + inspect --config (loop)"
        if sk.extrapolated:
            label = "skopeo loop, extrapolated (see below)"
        row(label, sk.seconds)
    for r in results:
        row(f"first sync, {r.workers} worker process(es)", r.first.seconds)
    for r in results:
        row(f"re-sync unchanged, {r.workers} worker process(es)", r.resync.seconds)
    print()
    if sk is not None:
        if sk.extrapolated:
            print(f"skopeo: EXTRAPOLATED from a random sample of {sk.repos_measured} repositories "
                  f"({sk.tags_measured} tags) that took {sk.measured_seconds:.1f} s")
        else:
            print(f"skopeo: measured over every repository ({sk.tags_measured} tags)")
        per = sk.measured_seconds / (sk.repos_measured + sk.tags_measured) * 1000
        print(f"skopeo: {per:.1f} ms per invocation; requests: {fmt_requests(sk.requests)}")
    by = {r.workers: r for r in results}
    ok = True
    print()
    print("ratios:")
    for r in results:
        if sk is not None:
            ratio = sk.seconds / r.first.seconds
            verdict = "meets" if ratio >= 10 else "MISSES"
            ok &= ratio >= 10
            print(f"  skopeo / first sync ({r.workers} worker(s)): {ratio:6.1f}x  ({verdict} the >= 10x target)")
    if 1 in by and 2 in by:
        print(f"  first sync, 1 worker / 2 workers (scaling):   {by[1].first.seconds / by[2].first.seconds:5.2f}x")
        print(f"  re-sync,    1 worker / 2 workers (scaling):   {by[1].resync.seconds / by[2].resync.seconds:5.2f}x")
    for r in results:
        print(f"  first sync / re-sync ({r.workers} worker(s)): {r.first.seconds / r.resync.seconds:6.1f}x")
    print()
    print("registry requests (from the registry's access log):")
    for r in results:
        print(f"  first sync, {r.workers} worker(s): {fmt_requests(r.first.requests)}")
    for r in results:
        c = r.resync.requests
        gets = {k: v for k, v in c.items() if k.startswith("GET ") and k not in ("GET tags", "GET ping")}
        verdict = "meets the no-GET target" if not gets else f"MISSES the no-GET target: {gets}"
        ok &= not gets
        print(f"  re-sync,    {r.workers} worker(s): {fmt_requests(c)}  -> {verdict}"
              f" (expected GET tags {repos}, HEAD manifest {n_tags})")
    return ok


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sync_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--repos", type=int, default=200)
    p.add_argument("--tags", type=int, default=10)
    p.add_argument("--workers", default="1,2", help="worker process counts to measure (default 1,2)")
    p.add_argument("--skopeo-budget", type=float, default=240.0,
                   help="seconds beyond which the skopeo loop is sampled and extrapolated")
    p.add_argument("--no-skopeo", action="store_true")
    p.add_argument("--sync-timeout", type=float, default=300.0, help="limit of one timed sync")
    p.add_argument("--timeout", type=float, default=1800.0, help="limit of the whole run (watchdog)")
    p.add_argument("--redis-db", type=int, default=13, help="Redis database number used and flushed")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--keep-db", action="store_true")
    return p.parse_args(argv)


class Interrupted(Exception):
    pass


def _interrupt(signum: int, _: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    if not args.no_skopeo and shutil.which(SKOPEO) is None:
        print("skopeo is missing: apt-get install -y skopeo (or --no-skopeo)", file=sys.stderr)
        return 2
    server_dsn = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = f"{os.environ.get('BENCH_REDIS_URL', 'redis://127.0.0.1:6379').rstrip('/')}/{args.redis_db}"
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(int(args.timeout))
    tmp = Path(tempfile.mkdtemp(prefix="rs-sync-bench-"))
    procs = Procs(tmp)
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
        sk = None
        if not args.no_skopeo:
            print("skopeo baseline ...", flush=True)
            sk = skopeo_baseline(reg, args.repos, args.tags, args.skopeo_budget, rng)
            print(f"  {sk.seconds:.1f} s" + (" (extrapolated)" if sk.extrapolated else ""), flush=True)
        results = []
        for n in counts:
            print(f"{n} worker process(es): first sync and re-sync ...", flush=True)
            res = measure_workers(args, reg, procs, server_dsn, redis_url, n)
            print(f"  first {res.first.seconds:.2f} s, re-sync {res.resync.seconds:.2f} s", flush=True)
            results.append(res)
        ok = report(args, push_s, sk, results)
        failed = False
        return 0 if ok else 1
    except Interrupted as exc:
        print(f"interrupted ({exc}): cleaning up", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if failed:
            procs.dump()
        procs.stop_all()
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
