"""Outgoing notifications: delivery throughput and latency to loopback receivers, what the
outbox adds to the webhook path, and whether dead endpoints slow the live ones.

    .venv/bin/python -m bench.notify_bench [--subscriptions 1000] [--images 100] [--rate 100]
                                           [--seconds 20] [--dead 100] [--events 300]
                                           [--deliverers 1] [--kill] [--skip-webhook]

1. Delivery: `--subscriptions` subscriptions (from as many accounts) on `--images` catalog
   images; tag changes are committed at `--rate` per second for `--seconds` (each reaches
   subscriptions/images endpoints); a deliverer process (`run_notifier`, as `registry-sync
   worker` runs it) sends to a receiver process. Printed: deliveries/s, and the latency from
   the change's commit (the event's timestamp) to its arrival, p50/p99. Run twice: without,
   then with `--dead` more subscriptions whose endpoint never answers (NOTIFY_TIMEOUT_SECONDS).
   Each run also prints the changes/s the generator managed, the CPU seconds of every party
   (this process: generator and collector; the receiver; the deliverer(s); the Postgres
   backends of the bench database), and checks that every delivery row's `webhook-id`
   arrived (duplicates counted). `--deliverers N`: N deliverer processes share the work.
   `--kill`: a last run kills one deliverer with SIGKILL halfway, starts a fresh one, and
   waits until everything arrived (its leases lapse first: up to a minute).
2. Webhook path: `--events` push notifications POSTed one by one to the API's registry
   receiver (in this process), then applied (worker/inbox.py), with the triggers of this
   change disabled (before), with the history only (no subscription), and with the outbox
   (subscriptions on the image): receiver answer time and apply time, p50/p99.

NOTIFY_* settings are read from the environment. Database `rs_bench_notify` on DATABASE_URL's
server (default the local Postgres) is dropped and recreated; Redis: REDIS_URL (default
redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import test_utils, web

from bench.common import percentile, recreate_database, server_dsn
from core.crypto import CredentialBox
from core.db import create_pool
from core.settings import Settings

SECRET_KEY = "bench-notify-secret-key-0123456789-abcdefghij"  # noqa: S105 - a throwaway bench database
HOOK_SECRET = "bench-hook-secret"  # noqa: S105 - a throwaway bench database


def _receiver(port: int, dead_port: int, out: Any) -> None:
    """The receiver process: 204 on `port` (recording arrival times and webhook-ids), never
    answering on `dead_port`."""
    seen: list[tuple[float, float, str]] = []  # (arrival, event timestamp, webhook-id)

    async def live(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.append((time.time(), _epoch(body["timestamp"]), request.headers["webhook-id"]))
        return web.Response(status=204)

    async def dead(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(status=204)

    async def dump(_: web.Request) -> web.Response:
        data = list(seen)
        seen.clear()
        return web.Response(body=orjson.dumps(data))

    async def main() -> None:
        app, dapp = web.Application(), web.Application()
        app.router.add_post("/hook", live)
        app.router.add_get("/dump", dump)
        dapp.router.add_post("/hook", dead)
        for a, p in ((app, port), (dapp, dead_port)):
            runner = web.AppRunner(a, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", p, backlog=2048).start()
        out.put("ready")
        await asyncio.Event().wait()

    asyncio.run(main())


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _deliverer(settings: Settings) -> None:
    from worker.notifier import run_notifier

    run_notifier(settings)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _seed(pool: asyncpg.Pool, images: int, subs: int, url: str, box: CredentialBox) -> list[int]:
    """`images` catalog images with one tag each, `subs` accounts each subscribed to one image."""
    reg = await pool.fetchval("INSERT INTO registries (host, name) VALUES ('bench.test', 'bench') RETURNING id")
    ids = [await pool.fetchval(
        "INSERT INTO images (name, registry_id, repository, is_private_image) VALUES ($1, $2, $1, false) RETURNING id",
        f"bench/app{i}", reg) for i in range(images)]
    await pool.executemany("INSERT INTO tags (image_id, name, state, manifest_digest) VALUES ($1, 'v1', 'Success', $2)",
                           [(i, f"sha256:{i:064x}") for i in ids])
    await _subscribe(pool, subs, url, images, box, "live")
    return ids


async def _subscribe(pool: asyncpg.Pool, n: int, url: str, images: int, box: CredentialBox, prefix: str) -> None:
    accounts = [await pool.fetchval("INSERT INTO accounts (username) VALUES ($1) RETURNING id", f"{prefix}{i}")
                for i in range(n)]
    await pool.executemany(
        "INSERT INTO subscriptions (account_id, url, events, image, secret) VALUES ($1, $2, '{tag.moved}', $3, $4)",
        [(a, url, f"bench/app{i % images}", box.seal_bytes(os.urandom(32))) for i, a in enumerate(accounts)])


async def _changes(pool: asyncpg.Pool, ids: list[int], rate: float, seconds: float) -> int:
    """Move one random image's tag `rate` times a second, each in its own transaction."""
    n, start = 0, time.monotonic()
    rng = random.Random(1)
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while n < due:
            await pool.execute("UPDATE tags SET manifest_digest = $2 WHERE image_id = $1", rng.choice(ids),
                               f"sha256:{rng.getrandbits(256):064x}")
            n += 1
        await asyncio.sleep(max(0.0, n / rate - (time.monotonic() - start)))
    return n


class Deliverers:
    """The deliverer processes, as `registry-sync worker` starts them (one each)."""

    def __init__(self, settings: Settings, n: int) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.procs = [self._start() for _ in range(n)]

    def _start(self) -> Any:
        p = self.ctx.Process(target=_deliverer, args=(self.settings,), daemon=True)
        p.start()
        return p

    def kill_one(self, meter: CpuMeter) -> None:
        """SIGKILL the first one (no drain, nothing flushed) and start a fresh one."""
        meter.sample()  # the victim's last figures (and its connections')
        victim = self.procs.pop(0)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        self.procs.append(self._start())

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()


def _cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process so far; None once it is gone (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by each party's processes since the meter was made; a process that
    ends counts up to its last sample, one that starts counts from zero."""

    def __init__(self, parties: dict[str, list[int]]) -> None:
        self.parties = {k: set(v) for k, v in parties.items()}
        self.first = {p: _cpu(p) or 0.0 for v in parties.values() for p in v}
        self.last = dict(self.first)

    def add(self, party: str, pids: list[int]) -> None:
        for p in set(pids) - self.parties[party]:
            self.parties[party].add(p)
            self.first[p] = self.last[p] = 0.0

    def sample(self) -> None:
        for p in self.last:
            if (c := _cpu(p)) is not None:
                self.last[p] = c

    def used(self) -> dict[str, float]:
        self.sample()
        return {k: sum(self.last[p] - self.first[p] for p in v) for k, v in self.parties.items()}


async def _backends(pool: asyncpg.Pool) -> list[int]:
    rows = await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    return [r["pid"] for r in rows]


async def delivery_run(pool: asyncpg.Pool, ids: list[int], args: argparse.Namespace, dump_url: str, label: str,
                       procs: dict[str, list[int]], deliverers: Deliverers, *, kill: bool = False) -> None:
    import aiohttp

    first = await pool.fetchval("SELECT coalesce(max(id), 0) FROM notification_deliveries")
    async with aiohttp.ClientSession() as http:
        await http.get(dump_url)  # forget what came before
        meter = CpuMeter({**procs, "deliverers": deliverers.pids(), "postgres": await _backends(pool)})
        own = os.times()
        started = time.time()
        if kill:
            asyncio.get_running_loop().call_later(args.seconds / 2, deliverers.kill_one, meter)
        changes = await _changes(pool, ids, args.rate, args.seconds)
        generated = time.time() - started
        meter.add("deliverers", deliverers.pids())
        meter.add("postgres", await _backends(pool))  # the pools grew meanwhile
        expected = changes * args.subscriptions // args.images
        arrivals: list[tuple[float, float, str]] = []
        deadline = time.monotonic() + (180 if kill else 120)
        while len({m for _, _, m in arrivals}) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            meter.sample()
            arrivals += orjson.loads(await (await http.get(dump_url)).read())
        last = max(a for a, _, _ in arrivals) if arrivals else started
        await asyncio.sleep(1.0)  # late duplicates
        arrivals += orjson.loads(await (await http.get(dump_url)).read())
    used = meter.used()
    now = os.times()
    used["bench"] = now.user + now.system - own.user - own.system
    wall = time.time() - started
    sent = {r["msg_id"] for r in await pool.fetch(
        "SELECT d.msg_id FROM notification_deliveries AS d JOIN subscriptions AS s ON s.id = d.subscription_id"
        " WHERE d.id > $1 AND s.url NOT LIKE $2", first, f"%:{args.dead_port}/%")}
    got = [m for _, _, m in arrivals]
    lat = [(a - t) * 1000 for a, t, _ in arrivals]
    print(f"{label}: {changes} changes in {generated:.1f} s ({changes / generated:.0f}/s) -> "
          f"{len(set(got))}/{expected} deliveries, "
          f"{len(set(got)) / max(last - started, 1e-9):.0f} deliveries/s over {last - started:.1f} s; "
          f"latency p50 {percentile(lat, 50):.0f} ms, p99 {percentile(lat, 99):.0f} ms; "
          f"missing {len(sent - set(got))}, duplicates {len(got) - len(set(got))}")
    print(f"  CPU s over {wall:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in used.items())
          + f"; load average {os.getloadavg()[0]:.1f}")


TRIGGERS = ("tags_add_history_insert", "tags_add_history_update", "tags_add_history_delete")


async def webhook_run(settings: Settings, pool: asyncpg.Pool, n: int, label: str) -> None:
    """POST `n` push notifications one by one to the receiver, then apply each."""
    from api.app import create_app
    from worker import inbox

    app = create_app(settings)
    client = test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1"))
    await client.start_server()
    answer, apply = [], []
    try:
        for i in range(n):
            body = {"events": [{
                "id": f"{label}-{i}", "timestamp": "2024-03-05T09:12:03Z", "action": "push",
                "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "digest": f"sha256:{random.getrandbits(256):064x}", "repository": "bench/app0",
                           "url": "http://bench.test/v2/bench/app0/manifests/x", "tag": "v1"},
                "request": {"host": "bench.test"}}]}
            t = time.perf_counter()
            resp = await client.post("/api/v1/webhooks/registry/", json=body,
                                     headers={"Authorization": f"Bearer {HOOK_SECRET}"})
            answer.append((time.perf_counter() - t) * 1000)
            assert resp.status in (200, 202), await resp.text()
            event_id = await pool.fetchval("SELECT id FROM webhook_events WHERE dedupe_key LIKE $1", f"%{label}-{i}%")
            t = time.perf_counter()
            await inbox.apply_pending(pool, settings, event_id)
            apply.append((time.perf_counter() - t) * 1000)
    finally:
        await client.close()
    print(f"webhook, {label}: receiver answer p50 {percentile(answer, 50):.2f} ms, p99 {percentile(answer, 99):.2f} ms;"
          f" apply p50 {percentile(apply, 50):.2f} ms, p99 {percentile(apply, 99):.2f} ms")


async def main(args: argparse.Namespace) -> None:
    from core.logs import configure_logging

    configure_logging("warning", "console")
    dsn = await recreate_database(server_dsn(), "rs_bench_notify")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    tuning = {k: v for k, v in os.environ.items() if k.startswith("NOTIFY_")}  # e.g. NOTIFY_CONCURRENCY
    settings = Settings.from_env(tuning, database_url=dsn, redis_url=redis_url, secret_key=SECRET_KEY,
                                 allow_private_registries=True, log_level="warning", webhook_secret=HOOK_SECRET,
                                 insecure_registries=frozenset({"bench.test"}))
    box = CredentialBox(SECRET_KEY)
    ctx = multiprocessing.get_context("spawn")
    port, args.dead_port = _port(), _port()
    q = ctx.Queue()
    recv = ctx.Process(target=_receiver, args=(port, args.dead_port, q), daemon=True)
    recv.start()
    q.get(timeout=30)
    pool = await create_pool(dsn, min_size=2, max_size=8)
    deliverers: Deliverers | None = None
    try:
        print(f"load average: {os.getloadavg()}")
        if not args.skip_webhook:
            await _seed_webhook(pool, box, settings, args)
        ids = await _seed(pool, args.images, args.subscriptions, f"http://127.0.0.1:{port}/hook", box)
        await pool.execute("DELETE FROM notification_events")
        deliverers = Deliverers(settings, args.deliverers)
        await asyncio.sleep(2.0)  # their pools and LISTEN connections
        dump = f"http://127.0.0.1:{port}/dump"
        procs = {"receiver": [recv.pid or 0]}
        await delivery_run(pool, ids, args, dump, f"{args.subscriptions} live subscriptions", procs, deliverers)
        if args.dead:
            await _subscribe(pool, args.dead, f"http://127.0.0.1:{args.dead_port}/hook", args.images, box, "dead")
            await delivery_run(pool, ids, args, dump, f"{args.subscriptions} live + {args.dead} dead subscriptions",
                               procs, deliverers)
        if args.kill:
            await delivery_run(pool, ids, args, dump, "a deliverer killed (SIGKILL) halfway", procs, deliverers,
                               kill=True)
        print(f"load average: {os.getloadavg()}")
    finally:
        if deliverers is not None:
            deliverers.stop()
        recv.terminate()
        await pool.close()


async def _seed_webhook(pool: asyncpg.Pool, box: CredentialBox, settings: Settings, args: argparse.Namespace) -> None:
    reg = await pool.fetchval("INSERT INTO registries (host, name) VALUES ('bench.test', 'bench') "
                              "ON CONFLICT (host) DO UPDATE SET name = EXCLUDED.name RETURNING id")
    await pool.execute("INSERT INTO images (name, registry_id, repository, is_private_image, access_proven) "
                       "VALUES ('bench.test/bench/app0', $1, 'bench/app0', false, true)", reg)
    for t in TRIGGERS:
        await pool.execute(f"ALTER TABLE tags DISABLE TRIGGER {t}")
    await webhook_run(settings, pool, args.events, "triggers of this change off")
    for t in TRIGGERS:
        await pool.execute(f"ALTER TABLE tags ENABLE TRIGGER {t}")
    await webhook_run(settings, pool, args.events, "history, no subscription")
    await _subscribe(pool, 10, "http://127.0.0.1:9/none", 1, box, "wh")
    await pool.execute("UPDATE subscriptions SET image = 'bench.test/bench/app0', disabled_at = NULL")
    await webhook_run(settings, pool, args.events, "history + outbox, 10 subscriptions")
    await pool.execute("DELETE FROM subscriptions")
    await pool.execute("DELETE FROM images")
    await pool.execute("DELETE FROM accounts")
    await pool.execute("DELETE FROM registries")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscriptions", type=int, default=1000)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--dead", type=int, default=100)
    p.add_argument("--events", type=int, default=300)
    p.add_argument("--deliverers", type=int, default=1)
    p.add_argument("--kill", action="store_true")
    p.add_argument("--skip-webhook", action="store_true")
    asyncio.run(main(p.parse_args()))
