"""Push webhook benchmark: how soon a pushed tag is visible through the API.

    .venv/bin/python -m bench.webhook_bench [--sequential 200] [--burst 500] [--images 20]
                                            [--burst-seconds 2.5] [--connections 8]

Creates a fresh database (`rs_bench_hooks`) on the local Postgres (or DATABASE_URL's server)
and uses Redis database 14 of REDIS_URL's server (default 127.0.0.1:6379), starts the real
CNCF `docker-registry` with its `notifications` pointed at `registry-sync web` (ignoring pull
events, as docs/webhooks.md recommends, unless --pull-events), and a `registry-sync worker
--queues priority`. Two measurements, each skipped with 0:

- sequential: one image, `--sequential` tags pushed one after another (blobs, config and
  manifest over the registry's HTTP API). After each push returns it polls
  `GET /api/v1/image/<name>/tag/<tag>/` until it answers 200 (visible) and, separately, until
  its `layer` is filled (enriched). Prints p50 / p99 / max of both.
- burst: `--images` registered images (synced first, so their access is proven), then
  `--burst` tag pushes spread over them, paced to last about `--burst-seconds`, from
  `--connections` threads on kept-alive connections (each push is one manifest PUT: the
  blobs are in the repositories already, each manifest differs by an annotation). A poller
  reads, through the API, the exact `total_count` of a one-tag page of every image whose
  tags are not all visible yet (and the whole tag list of those that are, to see them
  enriched), then pauses `--poll-interval`. Prints when the last tag became visible after the burst's end (the
  last push answered), and when the last one was enriched.
Everything it starts is stopped on exit; the database is dropped unless --keep-db.
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
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import asyncpg
import redis

from bench.common import HOST, recreate_database, server_dsn, with_db
from core import receivers
from core.accounts import create_account
from core.crypto import CredentialBox
from tests.support import free_port
from tests.support.processes import Service, wait_for

# the registry server and push helpers of the tests: the same code the e2e tests trust
from tests.support.registry import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, RegistryServer, _Http, _push_blob, push_image

DB = "rs_bench_hooks"
SECRET = "bench-webhook-secret"  # noqa: S105 - a throwaway local stack


class Api:
    """One kept-alive connection to the API (not thread-safe: one per thread)."""

    def __init__(self, port: int, key: str, user: str = "bench") -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=10)
        self.headers = {"Authorization": f"ApiKey {user}:{key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}


@dataclass
class Stack:
    registry: RegistryServer
    dsn: str
    port: int
    key: str
    web: Service
    worker: Service
    metrics_port: int = 0
    keys: dict[str, str] | None = None  # every account's API key, by user name

    def api(self, user: str = "bench") -> Api:
        return Api(self.port, self.keys[user] if self.keys else self.key, user)


@contextmanager
def stack(log_level: str, keep_db: bool, pull_events: bool, *, receiver: str = "operator",
          users: tuple[str, ...] = ("bench",)) -> Iterator[Stack]:
    """The registry notifies the operator's registry receiver, its secret bound to the
    registry's host (WEBHOOK_SECRETS=registry@<host>=…, as docs/webhooks.md says), or with
    `receiver="account"` the first user's own registry receiver (GET /api/v1/receiver/)."""
    server = server_dsn()
    dsn = with_db(server, DB)
    redis_url = re.sub(r"/\d*$", "", os.environ.get("REDIS_URL", f"redis://{HOST}:6379")) + "/14"
    redis.Redis.from_url(redis_url).flushdb()
    secret_key = secrets.token_urlsafe(32)
    keys, own = asyncio.run(_prepare(server, dsn, secret_key, users))
    port, metrics_port = free_port(), free_port()
    path, secret = ("/api/v1/webhooks/registry/", SECRET) if receiver == "operator" else own
    hook: dict[str, object] = {"url": f"http://{HOST}:{port}{path}", "headers": {"Authorization": f"Bearer {secret}"}}
    if not pull_events:  # as docs/webhooks.md recommends: pulls are noise in its one-by-one queue
        hook["ignore"] = {"actions": ["pull"]}
    services: list[Service] = []
    try:
        with RegistryServer(notifications=[hook]) as reg:
            env = {
                "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SECRET_KEY": secret_key,
                "WEBHOOK_SECRETS": f"registry@{reg.host}={SECRET}", "PORT": str(port), "BIND_HOST": HOST,
                "ALLOW_PRIVATE_REGISTRIES": "1", "INSECURE_REGISTRIES": reg.host, "METRICS_PORT": str(metrics_port),
                "LOG_FORMAT": "json", "LOG_LEVEL": log_level, "SYNC_INTERVAL_SECONDS": "3600",
            }
            services.append(Service(["web"], env))
            services.append(Service(["worker", "--queues", "priority"], env))
            wait_for(lambda: _healthy(port), 30, "the API")
            yield Stack(reg, dsn, port, keys[users[0]], services[0], services[1], metrics_port, keys)
    finally:
        for svc in services:
            svc.stop()
        if not keep_db:
            asyncio.run(recreate_database(server, DB, drop_only=True))


async def _prepare(server: str, dsn: str, secret_key: str,
                   users: tuple[str, ...]) -> tuple[dict[str, str], tuple[str, str]]:
    """The accounts (their API keys) and the first one's registry receiver (path, secret)."""
    await recreate_database(server, DB)
    conn = await asyncpg.connect(dsn)
    try:
        keys, ids = {}, {}
        for user in users:
            account, keys[user] = await create_account(conn, user)
            ids[user] = account.id
        mine = await receivers.account_receivers(conn, CredentialBox(secret_key), ids[users[0]])
    finally:
        await conn.close()
    registry = next(r for r in mine if r.sender == "registry")
    return keys, (registry.url, registry.secret)


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=1)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _register(st: Stack, api: Api, repo: str) -> str:
    """Push a first tag, register the image and wait for its first sync (proof of access)."""
    push_image(st.registry.url, repo, "warmup", {"created": "2024-01-01T00:00:00Z"}, layers=1)
    name = f"{st.registry.host}/{repo}"
    status, _ = api.call("POST", "/api/v1/image/", {"name": name})
    assert status == 201, status
    wait_for(lambda: api.call("GET", f"/api/v1/image/{name}/tag/warmup/")[0] == 200, 60,
             f"the first sync of {name} (the worker starting)")
    return name


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _summary(label: str, ms: list[float]) -> str:
    return (f"{label:<9} n={len(ms)}  p50={statistics.median(ms):7.1f} ms  "
            f"p99={_pct(ms, 0.99):7.1f} ms  max={max(ms):7.1f} ms  mean={statistics.fmean(ms):7.1f} ms")


def sequential(st: Stack, tags: int) -> int:
    api = st.api()
    repo = "bench/app"
    name = _register(st, api, repo)
    visible: list[float] = []
    enriched: list[float] = []
    for i in range(tags):
        tag = f"t{i:04d}"
        push_image(st.registry.url, repo, tag, {"created": "2024-01-01T00:00:00Z"}, layers=1)
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
    print(f"sequential: {tags} tags pushed one after another to {name}, notifications on")
    print(_summary("visible", visible))
    print(_summary("enriched", enriched))
    return 0


class Pusher:
    """Pushes manifests (one PUT each) over one kept-alive connection to the registry."""

    def __init__(self, st: Stack, blobs: dict[str, tuple[dict, dict]]) -> None:
        self.conn = http.client.HTTPConnection(HOST, st.registry.port, timeout=30)
        self.blobs = blobs

    def push(self, repo: str, tag: str) -> None:
        config, layer = self.blobs[repo]
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
                    "annotations": {"org.example.bench.tag": tag}}
        self.conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=json.dumps(manifest).encode(),
                          headers={"Content-Type": OCI_MANIFEST})
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status == 201, (resp.status, repo, tag)


def _blobs(st: Stack, repo: str) -> tuple[dict, dict]:
    http_ = _Http(st.registry.url, None)
    layer = os.urandom(64)
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    return ({"mediaType": OCI_CONFIG, "size": len(config), "digest": _push_blob(http_, repo, config)},
            {"mediaType": OCI_LAYER, "size": len(layer), "digest": _push_blob(http_, repo, layer)})


def _cpu_seconds(group: int) -> float:
    """CPU time (user + system) of the live processes of a process group (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def burst(st: Stack, images: int, tags: int, seconds: float, connections: int, poll_interval: float) -> int:
    api = st.api()
    repos = [f"burst/app{i:02d}" for i in range(images)]
    names = [_register(st, api, repo) for repo in repos]
    blobs = {repo: _blobs(st, repo) for repo in repos}
    work = [(repos[i % images], f"b{i:04d}") for i in range(tags)]
    expected = {name: 1 + sum(1 for r, _ in work if r == repo) for name, repo in zip(names, repos, strict=True)}
    stop = threading.Event()
    visible_at: dict[str, float] = {}  # per image: when a read first showed all its tags
    enriched_at: dict[str, float] = {}  # … all of them with their layer

    def poll() -> None:
        # One kept-alive connection and a pause between rounds: an API consumer watching, not a
        # load test of the API that shares the webhook receiver's process. Visibility is read
        # from a one-tag page's exact total_count (cheap); the whole tag lists (layers) only
        # once every image's tags are all visible, to see when they are enriched.
        poller = st.api()
        while not stop.is_set() and len(enriched_at) < len(names):
            for name in names:
                if name in enriched_at:
                    continue
                if name not in visible_at:
                    _, body = poller.call("GET", f"/api/v1/image/{name}/tag/?limit=1")
                    if body["meta"]["total_count"] < expected[name]:
                        continue
                    visible_at[name] = time.perf_counter()
                if len(visible_at) < len(names):
                    continue  # whole tag lists only once every tag is visible: rounds stay short
                _, body = poller.call("GET", f"/api/v1/image/{name}/tag/?limit=1000")
                if len(body["objects"]) >= expected[name] and all(t["layer"] for t in body["objects"]):
                    enriched_at[name] = time.perf_counter()
            time.sleep(poll_interval)

    def push(k: int) -> None:
        pusher = Pusher(st, blobs)
        mine = work[k::connections]
        for j, (repo, tag) in enumerate(mine):
            due = start + (j * connections + k) * seconds / tags
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            pusher.push(repo, tag)

    threads = [threading.Thread(target=push, args=(k,)) for k in range(connections)]
    poller = threading.Thread(target=poll)
    groups = {"web": st.web.proc.pid, "worker": st.worker.proc.pid}
    cpu_before = {k: _cpu_seconds(g) for k, g in groups.items()}
    start = time.perf_counter()
    for t in threads:
        t.start()
    poller.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    poller.join(60)
    stop.set()
    cpu = {k: _cpu_seconds(g) - cpu_before[k] for k, g in groups.items()}
    print(f"burst: {tags} tag pushes to {images} images in {end - start:.2f} s over {connections} connections,"
          " notifications on")
    if len(visible_at) < len(names):
        print("not every tag was visible within 60 s", file=sys.stderr)
        return 1
    print(f"last tag visible {max(visible_at.values()) - end:+.3f} s after the burst's end")
    if len(enriched_at) == len(names):
        print(f"last tag enriched {max(enriched_at.values()) - end:+.3f} s after the burst's end")
    hooks = [e for e in st.web.events("request.done") if e.get("path") == "/api/v1/webhooks/registry/"]
    if hooks:  # the clocks: perf_counter here, wall clock in the logs; one offset converts
        offset = time.time() - time.perf_counter()
        last = max(datetime.fromisoformat(e["timestamp"]).timestamp() for e in hooks)
        print(f"last tag visible {max(visible_at.values()) + offset - last:+.3f} s after the registry's last"
              f" notification was answered, as the poller saw it (a round reads every incomplete image, then"
              f" pauses {poll_interval * 1000:.0f} ms: up to a round late)")
    if len(hooks) > 1:
        ms = [float(e["ms"]) for e in hooks]
        at = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in hooks]
        gaps = [(b - a) * 1000 for a, b in pairwise(at)]
        print(f"the registry's notifications: {len(hooks)} requests, one after another, every"
              f" {statistics.median(gaps):.1f} ms (p50); each answered in {statistics.median(ms):.1f} ms (p50),"
              f" {_pct(ms, 0.99):.1f} ms (p99)")
    print("CPU from the burst's start until every tag was enriched: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items()))
    stored, lag, tail = asyncio.run(_lags(st.dsn, time.perf_counter() - end))
    print(f"where the time goes: the last event was stored {stored:+.3f} s after the burst's end (the"
          f" registry's delivery and the receiver); stored → applied by the worker: {lag}")
    applied = st.worker.events("webhook.applied")
    commit = float(applied[-1].get("ms", 0)) if applied else 0.0
    print(f"the last event applied {tail * 1000:.0f} ms after the last one was stored (the database's clock, the"
          f" applying transaction's start), in a batch that took {commit:.0f} ms to commit: every tag visible"
          f" {tail * 1000 + commit:.0f} ms after the registry's last notification was stored (target <= 200 ms)")
    batches = [e.get("events", 1) for e in st.worker.events("webhook.applied")]
    if batches:
        print(f"applied in {len(batches)} transactions: {statistics.median(batches):.0f} events per batch"
              f" (median), {max(batches)} at most")
    return 0


async def _lags(dsn: str, since_end: float) -> tuple[float, str, float]:
    """(when the last burst event was stored, relative to the burst's end; p50/p99/max of
    stored → applied; the last applied after the last stored), from the database's clock."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT extract(epoch FROM now() - max(received_at)) AS ago,"
            "       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
            "           (ORDER BY extract(epoch FROM processed_at - received_at)) AS lag,"
            "       extract(epoch FROM max(processed_at - received_at)) AS worst,"
            "       extract(epoch FROM max(processed_at) - max(received_at)) AS tail"
            "  FROM webhook_events WHERE tag LIKE 'b%' AND kind = 'push'")
    finally:
        await conn.close()
    p50, p99 = row["lag"]
    worst = float(row["worst"])
    lags = f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"
    return since_end - float(row["ago"]), lags, float(row["tail"])


async def _count_pending(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM webhook_events WHERE status = 'pending'"))
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequential", type=int, default=200, help="tags pushed one after another (0: skip)")
    p.add_argument("--burst", type=int, default=500, help="tags pushed in the burst (0: skip)")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--burst-seconds", type=float, default=2.5)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--poll-interval", type=float, default=0.02, help="pause between rounds of tag-list reads")
    p.add_argument("--pull-events", action="store_true",
                   help="let the registry notify pulls too (not recommended; the registry's default)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args(argv)
    with stack(args.log_level, args.keep_db, args.pull_events) as st:
        code = sequential(st, args.sequential) if args.sequential else 0
        if args.burst and not code:
            code = burst(st, args.images, args.burst, args.burst_seconds, args.connections, args.poll_interval)
        print(f"events pending at the end: {asyncio.run(_count_pending(st.dsn))}")
    return code


if __name__ == "__main__":
    sys.exit(main())
