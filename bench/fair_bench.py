"""Noisy neighbour across accounts (issue 17): how soon account A's registration is `Success`
while account B has `--images` images on `--hosts` registries that never answer.

    .venv/bin/python -m bench.fair_bench [--hosts 30] [--images 300] [--probes 10] [--keep-db]

It creates the database `rs_fairbench` (schema.sql), starts the real CNCF `docker-registry`
(A's healthy registry, with `--probes` + 1 repositories pushed), `--hosts` hanging
registries (loopback sockets on 127.0.0.2, .3, … that accept connections and never answer:
what wildcard DNS gives an attacker for free), `registry-sync web` and `beat` with default
settings (but ACCOUNT_REGISTRATION_LIMIT=1000, so B can register all at once), and two
accounts. Two measurements:

- queued ahead: B registers its images and A one image before any worker runs, so B's
  messages are all ahead of A's in the priority queue; then `registry-sync worker` starts.
  Printed: A's `Success` after the priority consumer said it was ready (its sync's own
  start and duration from the worker's `sync.done` line).
- steady: while B's syncs hang (and B's handed-back images come round again through beat),
  A registers `--probes` images one after another; each is timed from its POST to `Success`
  through the API. Printed: p50 and max.

`BENCH_REDIS_URL` (default redis://127.0.0.1:6379/15; the database is flushed) and
DATABASE_URL's server say where Redis and Postgres are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import datetime

import orjson
import redis

from bench.common import recreate_database, server_dsn
from tests.support import free_port
from tests.support.hanging import hanging_hosts
from tests.support.processes import Stack, service_env, wait_for
from tests.support.registry import RegistryServer, push_image

DB = "rs_fairbench"


def ready_at(output: str, queue: str) -> float:
    for line in output.splitlines():
        if line.startswith("{") and f"{queue}@" in line and "ready" in line:
            return datetime.fromisoformat(orjson.loads(line)["timestamp"]).timestamp()
    raise RuntimeError(f"the {queue} consumer never said it was ready")


def run(args: argparse.Namespace) -> int:
    dsn = asyncio.run(recreate_database(server_dsn(), DB))
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    redis.Redis.from_url(redis_url).flushdb()
    hang = hanging_hosts(args.hosts)
    stack: Stack | None = None
    try:
        with RegistryServer() as reg:
            repos = [f"fair/app{i}" for i in range(args.probes + 1)]
            for repo in repos:
                push_image(reg.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
            port = free_port()
            insecure = ",".join([reg.host, *(h.host for h in hang)])
            stack = Stack(service_env(dsn, redis_url, port, INSECURE_REGISTRIES=insecure,
                                      ACCOUNT_REGISTRATION_LIMIT="1000"), port)
            key_a, key_b = stack.account("alice"), stack.account("bob")
            stack.start("web")
            stack.start("beat")
            wait_for(stack.up, 60, "the API")

            def register(user: str, key: str, name: str) -> None:
                status, body = stack.http("POST", "/api/v1/image/", user=user, key=key, body={"name": name})
                if status != 201:
                    raise RuntimeError(f"registering {name}: {status} {body}")

            def success(name: str) -> bool:
                return stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key_a)[1]["state"] == "Success"

            started = time.monotonic()
            for i in range(args.images):
                register("bob", key_b, f"{hang[i % args.hosts].host}/bob/app{i}")
            print(f"B registered {args.images} images on {args.hosts} hanging hosts in "
                  f"{time.monotonic() - started:.1f} s", flush=True)
            first = f"{reg.host}/{repos[0]}"
            register("alice", key_a, first)
            worker = stack.start("worker")
            wait_for(lambda: success(first), 300, "A's registration queued behind B's")
            ready = ready_at(worker.output(), "priority")
            done = next(e for e in worker.events("sync.done") if e["image"] == first)
            print(f"queued ahead: A's registration Success {done['finished'] - ready:.2f} s after the priority "
                  f"consumer was ready (its sync started after {done['started'] - ready:.2f} s, took "
                  f"{done['ms']:.0f} ms); {len(worker.events('sync.host_busy'))} of B's syncs handed back by then",
                  flush=True)

            waits = []
            for repo in repos[1:]:
                name = f"{reg.host}/{repo}"
                started = time.monotonic()
                register("alice", key_a, name)
                wait_for(lambda name=name: success(name), 300, "A's registration", interval=0.01)
                waits.append(time.monotonic() - started)
            hanging = stack.sql("SELECT count(*) FROM images WHERE name LIKE '127.0.0.%' AND lease_owner LIKE 'run:%'")
            print(f"steady: {len(waits)} registrations of A -> Success (POST to state seen through the API): "
                  f"p50 {statistics.median(waits):.2f} s, max {max(waits):.2f} s; {hanging} of B's syncs hanging "
                  f"now, {len(worker.events('sync.host_busy'))} handed back so far; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            verdict = "met" if max(waits) < 2 and done["finished"] - ready < 2 else "NOT met"
            print(f"target (A's registration Success within 2 s): {verdict}", flush=True)
            return 0 if verdict == "met" else 1
    finally:
        if stack is not None:
            stack.stop_all()
        for h in hang:
            h.close()
        if not args.keep_db:
            asyncio.run(recreate_database(server_dsn(), DB, drop_only=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=30)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--probes", type=int, default=10)
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
