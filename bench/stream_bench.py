"""Events-stream benchmark (issue 5): delivery delay to 1,000 connected clients, and what
they cost the API's detail GETs.

    .venv/bin/python -m bench.stream_bench [--clients 1000] [--sse-share 0.5] [--events 200]
                                           [--rate 20] [--duration 10] [--client-procs 4]

It creates a fresh database (`rs_stream_bench`) on the local Postgres (or DATABASE_URL's
server), applies schema.sql, creates an account, seeds `--images` shared-catalog images with
three tags each, starts one `registry-sync web` process on 127.0.0.1, and then:

1. detail GET throughput with no stream client (`wrk`, 32 connections, rotating over every
   image name);
2. connects `--clients` stream clients from `--client-procs` processes (a `--sse-share` of
   them Server-Sent Events, the rest WebSockets), all of the same account;
3. the same `wrk` run while they are connected and idle;
4. delivery delay: `--events` committed changes (one catalog image each, autocommit UPDATE of
   a visible field), `--rate` per second; for every (event, client) pair the delay from the
   moment COMMIT returned in the driver to the moment the client read the message
   (time.time() on one machine); p50 / p99 / max and how many deliveries were missing;
5. the same `wrk` run while events flow at `--rate` per second to every client, with the
   delays of that phase too.

Everything it starts is stopped on exit; the database is dropped unless --keep-db.
Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from bench.common import recreate_database, run_wrk, server_dsn, write_wrk_script
from core.accounts import create_account

HOST = "127.0.0.1"
BENCH_DB = "rs_stream_bench"
ROOT = Path(__file__).resolve().parent.parent



async def prepare_database(n_images: int) -> tuple[str, str, list[str]]:
    """(dsn, Authorization header, image names) of a fresh seeded database."""
    dsn = await recreate_database(server_dsn(), BENCH_DB)
    conn = await asyncpg.connect(dsn)
    try:
        account, key = await create_account(conn, "bench")
        await conn.execute(
            "INSERT INTO registries (host, name, is_ssl) VALUES ('registry.hub.docker.com', 'Docker Hub', true)")
        await conn.execute(
            """INSERT INTO images (name, registry_id, repository, is_private_image, public_url, description)
               SELECT 'team' || (i % 97) || '/app' || i, r.id, 'team' || (i % 97) || '/app' || i, false,
                      'https://hub.docker.com/r/team' || (i % 97) || '/app' || i || '/', 'seeded image ' || i
                 FROM generate_series(1, $1) AS i, registries AS r""", n_images)
        await conn.execute(
            """INSERT INTO tags (image_id, name, state, build_date)
               SELECT i.id, t, 'Success', now() - (i.id || ' minutes')::interval
                 FROM images AS i, unnest(ARRAY['latest', '1.0', '2.0']) AS t""")
        names = [r["name"] for r in await conn.fetch("SELECT name FROM images ORDER BY id")]
    finally:
        await conn.close()
    return dsn, f"ApiKey {account.username}:{key}", names


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_web(dsn: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "DATABASE_URL": dsn, "REDIS_URL": os.environ.get("REDIS_URL", f"redis://{HOST}:6379/9"),
        "SECRET_KEY": secrets.token_urlsafe(32), "PORT": str(port), "BIND_HOST": HOST, "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json", "DB_POOL_MAX": "20",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "web"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"registry-sync web did not start:\n{log.read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- stream clients (each process runs many on one loop) -------------------------------------

async def _client(session: aiohttp.ClientSession, url: str, auth: str, sse: bool,
                  seen: dict[str, list[float]], ready: asyncio.Event) -> None:
    if sse:
        async with session.get(url, headers={"Authorization": auth, "Accept": "text/event-stream"}) as resp:
            ready.set()
            async for line in resp.content:
                if line.startswith(b"data: "):
                    now = time.time()
                    seen.setdefault(orjson.loads(line[6:])["resource_uri"], []).append(now)
    else:
        async with session.ws_connect(url, headers={"Authorization": auth}, heartbeat=None) as ws:
            ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    now = time.time()
                    seen.setdefault(orjson.loads(msg.data)["resource_uri"], []).append(now)


async def _clients_main(
    url: str, auth: str, n_ws: int, n_sse: int, pipe: multiprocessing.connection.Connection
) -> None:
    seen: dict[str, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        readies = [asyncio.Event() for _ in range(n_ws + n_sse)]
        tasks = []
        for i, ready in enumerate(readies):
            tasks.append(asyncio.create_task(_client(session, url, auth, i >= n_ws, seen, ready)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not SYN-flood the listen backlog
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        pipe.send(("ready", sum(not t.done() for t in tasks)))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send(("seen", seen))


def client_process(url: str, auth: str, n_ws: int, n_sse: int, pipe: multiprocessing.connection.Connection) -> None:
    asyncio.run(_clients_main(url, auth, n_ws, n_sse, pipe))


# --- events ------------------------------------------------------------------------------------

async def commit_events(dsn: str, names: list[str], rate: float) -> dict[str, float]:
    """One autocommit UPDATE per image name at `rate`/s; resource_uri -> time COMMIT returned."""
    conn = await asyncpg.connect(dsn)
    committed: dict[str, float] = {}
    try:
        start = time.monotonic()
        for i, name in enumerate(names):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            await conn.execute("UPDATE images SET star_count = star_count + 1 WHERE name = $1", name)
            committed[f"/api/v1/image/{name}/"] = time.time()
    finally:
        await conn.close()
    return committed


@dataclass(frozen=True)
class Delays:
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivered: int
    missing: int


def delays(committed: dict[str, float], seen: list[dict[str, list[float]]], clients: int) -> Delays:
    values: list[float] = []
    for per_process in seen:
        for uri, times in per_process.items():
            if uri in committed:
                values.extend((t - committed[uri]) * 1000 for t in times)
    values.sort()
    expected = len(committed) * clients
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [0.0] * 99
    return Delays(q[49], q[98], values[-1] if values else 0.0, len(values), expected - len(values))


# --- driver ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--sse-share", type=float, default=0.5)
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0, help="events per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    if 2 * args.events > args.images:
        print("--images must be at least twice --events (each event changes its own image)", file=sys.stderr)
        return 2

    dsn, auth, names = asyncio.run(prepare_database(args.images))
    tmp = Path(tempfile.mkdtemp(prefix="rs-stream-bench-"))
    port = free_port()
    web = start_web(dsn, port, tmp / "web.log")
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[multiprocessing.connection.Connection] = []
    try:
        base = f"http://{HOST}:{port}"
        script = tmp / "detail.lua"
        write_wrk_script(script, auth)
        paths = tmp / "paths.txt"
        paths.write_text("".join(f"/api/v1/image/{n}/\n" for n in names))
        run_wrk(base, script, paths, duration=2)  # warm-up: pool connections, statement caches
        alone = run_wrk(base, script, paths, duration=args.duration)
        print(f"detail GET, no stream clients:      {alone.rps:8.0f} req/s  p50 {alone.p50_ms:.2f} ms  "
              f"p99 {alone.p99_ms:.2f} ms  errors {alone.errors}")

        n_sse = round(args.clients * args.sse_share)
        ctx = multiprocessing.get_context("spawn")
        per = [args.clients // args.client_procs + (i < args.clients % args.client_procs)
               for i in range(args.client_procs)]
        started = time.monotonic()
        for i, n in enumerate(per):
            s = min(n, n_sse // args.client_procs + (i < n_sse % args.client_procs))
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(f"{base}/api/v1/events/", auth, n - s, s, theirs))
            proc.start()
            procs.append(proc)
            pipes.append(mine)
        connected = sum(pipe.recv()[1] for pipe in pipes)
        print(f"connected {connected} stream clients ({n_sse} SSE, {connected - n_sse} WebSocket) "
              f"in {time.monotonic() - started:.1f} s")
        time.sleep(1.0)

        idle = run_wrk(base, script, paths, duration=args.duration)
        print(f"detail GET, clients connected:      {idle.rps:8.0f} req/s  p50 {idle.p50_ms:.2f} ms  "
              f"p99 {idle.p99_ms:.2f} ms  errors {idle.errors}  ({idle.rps / alone.rps:.2f}x)")

        quiet_names = names[: args.events]
        loaded_names = names[args.events: 2 * args.events]
        cpu0 = cpu_seconds(web.pid)
        clients_cpu0 = sum(cpu_seconds(pr.pid) for pr in procs if pr.pid)
        quiet = asyncio.run(commit_events(dsn, quiet_names, args.rate))
        time.sleep(1.0)
        cpu = cpu_seconds(web.pid) - cpu0
        clients_cpu = sum(cpu_seconds(pr.pid) for pr in procs if pr.pid) - clients_cpu0
        per_message = cpu / (len(quiet_names) * connected) * 1e6
        print(f"CPU while fanning out {len(quiet_names)} events to every client: API process {cpu:.2f} s "
              f"({per_message:.1f} us per delivered message), client processes {clients_cpu:.2f} s")

        # events at `rate`/s for the whole wrk run, each to every client
        loaded_rate = args.events / args.duration
        cpu0 = cpu_seconds(web.pid)
        with ThreadPoolExecutor(1) as runner:
            busy_future = runner.submit(run_wrk, base, script, paths, duration=args.duration)
            loaded = asyncio.run(commit_events(dsn, loaded_names, loaded_rate))
            busy = busy_future.result()
        cpu = cpu_seconds(web.pid) - cpu0
        print(f"detail GET, clients + {loaded_rate:.0f} events/s:  {busy.rps:8.0f} req/s  p50 {busy.p50_ms:.2f} ms  "
              f"p99 {busy.p99_ms:.2f} ms  errors {busy.errors}  ({busy.rps / alone.rps:.2f}x; "
              f"API process CPU {cpu / busy.seconds:.2f} cores)")
        time.sleep(1.0)

        for pipe in pipes:
            pipe.send("stop")
        seen = [pipe.recv()[1] for pipe in pipes]
        for label, committed in (("quiet", quiet), ("under GET load", loaded)):
            d = delays(committed, seen, connected)
            print(f"commit -> delivery, {label:15s} {len(committed)} events x {connected} clients: "
                  f"p50 {d.p50_ms:.1f} ms  p99 {d.p99_ms:.1f} ms  max {d.max_ms:.1f} ms  "
                  f"delivered {d.delivered}  missing {d.missing}")
        return 0
    finally:
        for child in procs:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep_db:
            asyncio.run(_drop(server_dsn()))


async def _drop(server: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
