"""Push webhook benchmark: time from a push's completion to the tag being visible (issue 4).

    .venv/bin/python -m bench.webhook_bench [--tags 200] [--log-level info]

Creates a fresh database (`rs_bench_hooks`) on the local Postgres (or DATABASE_URL's server)
and uses Redis database 14 of REDIS_URL's server (default 127.0.0.1:6379), starts the real
CNCF `docker-registry` with its `notifications` pointed at `registry-sync web`, and a
`registry-sync worker --queues priority`. It registers one image and pushes `--tags` tags to
it one after another over the registry's HTTP API. After each push returns, it polls
`GET /api/v1/image/<name>/tag/<tag>/` on a kept-alive connection until the answer is 200
(visible) and, separately, until its `layer` is filled (enriched). Prints p50 / p99 / max of
both. Everything it starts is stopped on exit; the database is dropped unless --keep-db.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import secrets
import statistics
import sys
import time
from collections.abc import Sequence

import asyncpg
import redis

from bench.common import recreate_database, with_db
from core.accounts import create_account
from tests.support import free_port
from tests.support.processes import Service, wait_for

# the registry server and push helpers of the tests: the same code the e2e tests trust
from tests.support.registry import RegistryServer, push_image

HOST = "127.0.0.1"
DB = "rs_bench_hooks"
SECRET = "bench-webhook-secret"  # noqa: S105 - a throwaway local stack


async def _prepare(server: str, dsn: str) -> str:
    await recreate_database(server, DB)
    conn = await asyncpg.connect(dsn)
    try:
        return (await create_account(conn, "bench"))[1]
    finally:
        await conn.close()


async def _drop(server: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    finally:
        await conn.close()


class Api:
    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=5)
        self.headers = {"Authorization": f"ApiKey bench:{key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _summary(label: str, ms: list[float]) -> str:
    return (f"{label:<9} n={len(ms)}  p50={statistics.median(ms):7.1f} ms  "
            f"p99={_pct(ms, 0.99):7.1f} ms  max={max(ms):7.1f} ms  mean={statistics.fmean(ms):7.1f} ms")


def run(args: argparse.Namespace) -> int:
    server = with_db(os.environ.get("DATABASE_URL", ""), "postgres") if os.environ.get(
        "DATABASE_URL") else f"postgresql://postgres@{HOST}:5432/postgres"
    dsn = with_db(server, DB)
    redis_url = re.sub(r"/\d*$", "", os.environ.get("REDIS_URL", f"redis://{HOST}:6379")) + "/14"
    redis.Redis.from_url(redis_url).flushdb()
    key = asyncio.run(_prepare(server, dsn))
    port = free_port()
    hook = {"url": f"http://{HOST}:{port}/api/v1/webhooks/registry/",
            "headers": {"Authorization": f"Bearer {SECRET}"}}
    services: list[Service] = []
    try:
        with RegistryServer(notifications=[hook]) as reg:
            env = {
                "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SECRET_KEY": secrets.token_urlsafe(32),
                "WEBHOOK_SECRET": SECRET, "PORT": str(port), "BIND_HOST": HOST,
                "ALLOW_PRIVATE_REGISTRIES": "1", "INSECURE_REGISTRIES": reg.host,
                "LOG_FORMAT": "json", "LOG_LEVEL": args.log_level, "SYNC_INTERVAL_SECONDS": "3600",
            }
            services.append(Service(["web"], env))
            services.append(Service(["worker", "--queues", "priority"], env))
            wait_for(lambda: _healthy(port), 30, "the API")
            api = Api(port, key)
            repo = "bench/app"
            name = f"{reg.host}/{repo}"
            status, _ = api.call("POST", "/api/v1/image/", {"name": name})
            assert status == 201, status
            # warm-up push (connections, token and config caches), not measured
            push_image(reg.url, repo, "warmup", {"created": "2024-01-01T00:00:00Z"}, layers=1)
            wait_for(lambda: api.call("GET", f"/api/v1/image/{name}/tag/warmup/")[0] == 200, 60,
                     "the warm-up push (the worker starting)")
            visible: list[float] = []
            enriched: list[float] = []
            for i in range(args.tags):
                tag = f"t{i:04d}"
                push_image(reg.url, repo, tag, {"created": "2024-01-01T00:00:00Z"}, layers=1)
                done = time.perf_counter()
                deadline = done + 10
                path = f"/api/v1/image/{name}/tag/{tag}/"
                seen = None
                while time.perf_counter() < deadline:
                    status, body = api.call("GET", path)
                    now = time.perf_counter()
                    if status == 200 and seen is None:
                        seen = now
                        visible.append((now - done) * 1000)
                    if status == 200 and body.get("layer"):
                        enriched.append((now - done) * 1000)
                        break
                    time.sleep(0.001)
                if seen is None:
                    print(f"tag {tag} not visible within 10 s", file=sys.stderr)
                    return 1
            print(f"{args.tags} tags pushed to {name}, notifications on")
            print(_summary("visible", visible))
            print(_summary("enriched", enriched))
            pending = asyncio.run(_count_pending(dsn))
            print(f"events pending at the end: {pending}")
    finally:
        for svc in services:
            svc.stop()
        if not args.keep_db:
            asyncio.run(_drop(server))
    return 0


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=1)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


async def _count_pending(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM webhook_events WHERE status = 'pending'"))
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tags", type=int, default=200)
    p.add_argument("--log-level", default="info")
    p.add_argument("--keep-db", action="store_true")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
