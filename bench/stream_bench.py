"""Events-stream benchmark: delivery delay to thousands of subscribers, and what they cost the
API's image detail.

    .venv/bin/python -m bench.stream_bench [--clients 5000] [--rate 20] [--duration 10]
                                           [--sse-share 0.5] [--client-procs 2] [--stream-workers 1]
                                           [--window 0.1] [--fanout-share 0.5] [--sample 10] [--drain-every 1]

It creates the database `rs_stream_bench` (schema, an account, `--images` images from
bench/seed.py), starts `registry-sync web` (EVENTS_IN_WEB=0) and `registry-sync stream` (the
fan-out on processes of its own), and then:

1. image detail GETs with no stream client: wrk, 32 connections, `--duration` s, over every
   image name (the baseline);
2. connects `--clients` subscribers of the account from `--client-procs` processes (raw
   asyncio sockets, a `--sse-share` of them Server-Sent Events, the rest WebSockets);
3. quiet: `--rate` committed changes per second for `--duration` s, each an autocommit UPDATE
   of its own catalog image, so each is one message to every subscriber;
4. loaded: the same while wrk runs the detail GETs again.

Delay = the time a client read the message - the time COMMIT returned in the driver
(time.time(), one machine), measured on every `--sample`-th client, which reads each write as
it arrives; every client counts its messages, so "missing" is exact. The other clients read
their sockets every `--drain-every` s in one pass: real clients are on other machines, and
here every read they make is CPU taken from the service on the same 2 cores. CPU of the web
and the stream process is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import (
    HOST,
    Processes,
    api_env,
    cli,
    cpu_seconds,
    free_port,
    percentile,
    print_failure,
    recreate_database,
    run_wrk,
    server_dsn,
    wait_http,
    write_wrk_script,
)
from bench.seed import seed
from core.accounts import create_account

BENCH_DB = "rs_stream_bench"
MARKER = b'"resource_uri":"'


class Client(asyncio.Protocol):
    """One subscriber: counts its messages (every `"resource_uri":"` in what it read, with
    bytes.count). A sampled one reads each write as it arrives and records (resource_uri,
    arrival); the others stop reading after the handshake and are drained in batches by
    `drain`, so that the benchmark's own clients, which would be on other machines, cost this
    one as little as they can while every message of every client is still counted."""

    def __init__(self, request: bytes, sample: bool, seen: list[tuple[bytes, float]]) -> None:
        self.request, self.sample, self.seen = request, sample, seen
        self.count = 0
        self.started = False
        self.tail = b""
        self.fd = -1
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.started:
            head, sep, data = data.partition(b"\r\n\r\n")
            if not sep or not (b" 101 " in head or b" 200 " in head):
                self.ready.set_exception(RuntimeError(head[:200].decode(errors="replace")))
                return
            self.started = True
            self.ready.set_result(None)
            if not self.sample:
                assert self.transport is not None
                self.transport.pause_reading()  # from now on `drain` reads the socket
        buf = self.tail + data
        self.count += buf.count(MARKER)
        if self.sample:
            at = buf.find(MARKER)
            while at >= 0:
                end = buf.find(b'"', at + len(MARKER))
                if end < 0:
                    break
                self.seen.append((buf[at + len(MARKER):end], now))
                at = buf.find(MARKER, end)
        self.tail = buf[-(len(MARKER) - 1):]  # a marker cut in two is counted with the next read

    def drain(self) -> None:
        """Read what the socket holds (an unsampled client: no arrival times to record)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 18)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            buf = self.tail + data
            self.count += buf.count(MARKER)
            self.tail = buf[-(len(MARKER) - 1):]
            if len(data) < 1 << 18:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed"))


async def drain(clients: list[Client], every: float, stop: asyncio.Event) -> None:
    """Every `every` s, read the sockets of the unsampled clients, a few hundred per loop turn
    so that the sampled clients of this process still read on arrival."""
    lazy = [c for c in clients if not c.sample]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        for i in range(0, len(lazy), 200):
            for c in lazy[i:i + 200]:
                c.drain()
            await asyncio.sleep(0)


def _request(auth: str, websocket: bool) -> bytes:
    lines = ["GET /api/v1/events/ HTTP/1.1", "Host: bench", f"Authorization: {auth}"]
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  "Sec-WebSocket-Version: 13"]
    else:
        lines.append("Accept: text/event-stream")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _clients_main(port: int, auth: str, n: int, n_sse: int, every: int, first: int, drain_every: float,
                        pipe: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[bytes, float]] = []
    clients: list[Client] = []
    for i in range(n):
        c = Client(_request(auth, i >= n_sse), (first + i) % every == 0, seen)
        await loop.create_connection(lambda c=c: c, HOST, port)  # type: ignore[misc]
        clients.append(c)
        if i % 100 == 99:
            await asyncio.gather(*(x.ready for x in clients[-100:]))
    await asyncio.gather(*(c.ready for c in clients))
    stop = asyncio.Event()
    drainer = asyncio.create_task(drain(clients, drain_every, stop))
    pipe.send(("ready", len(clients)))
    while await loop.run_in_executor(None, pipe.recv) == "report":
        for c in clients:
            if not c.sample:
                c.drain()
        pipe.send(([c.count for c in clients], seen[:]))  # counts so far, samples since the last report
        seen.clear()
    stop.set()
    await drainer
    for c in clients:
        if not c.sample:
            c.drain()
    pipe.send(([c.count for c in clients], seen))


def client_process(port: int, auth: str, n: int, n_sse: int, every: int, first: int, drain_every: float,
                   pipe: multiprocessing.connection.Connection) -> None:
    asyncio.run(_clients_main(port, auth, n, n_sse, every, first, drain_every, pipe))


async def commit_events(dsn: str, names: list[str], rate: float) -> dict[bytes, float]:
    """One autocommit UPDATE per name at `rate`/s; resource_uri -> time COMMIT returned."""
    conn = await asyncpg.connect(dsn)
    committed: dict[bytes, float] = {}
    try:
        start = time.monotonic()
        for i, name in enumerate(names):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            await conn.execute("UPDATE images SET star_count = star_count + 1 WHERE name = $1", name)
            committed[f"/api/v1/image/{name}/".encode()] = time.time()
    finally:
        await conn.close()
    return committed


@dataclass(frozen=True)
class Delivery:
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivered: int
    missing: int


class Clients:
    def __init__(self, pipes: list[multiprocessing.connection.Connection], total: int) -> None:
        self.pipes, self.total = pipes, total
        self.counts = [0] * total

    def phase(self, committed: dict[bytes, float], final: bool = False) -> Delivery:
        """Counts and sampled delays since the previous phase; every client must have them all."""
        counts: list[int] = []
        delays: list[float] = []
        for pipe in self.pipes:
            pipe.send("stop" if final else "report")
            per_client, seen = pipe.recv()
            counts += per_client
            delays += [(t - committed[uri]) * 1000 for uri, t in seen if uri in committed]
        got = [c - before for c, before in zip(counts, self.counts, strict=True)]
        self.counts = counts
        return Delivery(percentile(delays, 50), percentile(delays, 99), max(delays, default=0.0), sum(got),
                        sum(max(0, len(committed) - g) for g in got))


async def _prepare(n_images: int) -> tuple[str, str, list[str]]:
    dsn = await recreate_database(server_dsn(), BENCH_DB)
    conn = await asyncpg.connect(dsn)
    try:
        account, key = await create_account(conn, "bench")
    finally:
        await conn.close()
    await seed(dsn, images=n_images, accounts=100, bench_account=account.id, big_tags=100, log=False)
    conn = await asyncpg.connect(dsn)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM images WHERE owner_id IS NULL ORDER BY id")]
    finally:
        await conn.close()
    return dsn, f"ApiKey {account.username}:{key}", names


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> int:
    dsn, auth, names = asyncio.run(_prepare(args.images))
    web_port, stream_port = free_port(), free_port()
    web = procs.start([cli("registry-sync"), "web"], api_env(dsn, web_port, EVENTS_IN_WEB="0"), tmp / "web.log")
    stream = procs.start(
        [cli("registry-sync"), "stream", "--workers", str(args.stream_workers)],
        api_env(dsn, stream_port, EVENTS_MAX_PER_ACCOUNT=str(args.clients + 1), EVENTS_PING_SECONDS="3600",
                EVENTS_COALESCE_SECONDS=str(args.window), EVENTS_FANOUT_SHARE=str(args.fanout_share)),
        tmp / "stream.log")
    wait_http(f"http://{HOST}:{web_port}/healthz", web)
    wait_http(f"http://{HOST}:{stream_port}/healthz", stream)
    base = f"http://{HOST}:{web_port}"
    script = write_wrk_script(tmp / "detail.lua", auth)
    paths = tmp / "paths.txt"
    paths.write_text("".join(f"/api/v1/image/{n}/\n" for n in names))
    run_wrk(base, script, paths, duration=2)
    alone = run_wrk(base, script, paths, duration=args.duration)
    print(f"detail GET, no stream clients: {alone.rps:8.0f} req/s  p50 {alone.p50_ms:.2f} ms"
          f"  p99 {alone.p99_ms:.2f} ms")

    ctx = multiprocessing.get_context("spawn")
    per = [args.clients // args.client_procs + (i < args.clients % args.client_procs) for i in range(args.client_procs)]
    n_sse_total, pipes, first = round(args.clients * args.sse_share), [], 0
    client_pids: list[int] = []
    started = time.monotonic()
    for i, n in enumerate(per):
        n_sse = min(n, n_sse_total // args.client_procs + (i < n_sse_total % args.client_procs))
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=client_process,
                        args=(stream_port, auth, n, n_sse, args.sample, first, args.drain_every, theirs))
        p.start()
        pipes.append(mine)
        assert p.pid is not None
        client_pids.append(p.pid)
        first += n
    connected = sum(pipe.recv()[1] for pipe in pipes)
    print(f"connected {connected} subscribers ({n_sse_total} SSE) in {time.monotonic() - started:.1f} s")
    clients = Clients(pipes, connected)
    events = int(args.rate * args.duration)
    quiet_names, loaded_names = names[:events], names[events: 2 * events]

    cpu = {pid: cpu_seconds(pid) for pid in (web.pid, stream.pid, *client_pids)}
    quiet = asyncio.run(commit_events(dsn, quiet_names, args.rate))
    time.sleep(1.0)
    q = clients.phase(quiet)
    used = {pid: cpu_seconds(pid) - c for pid, c in cpu.items()}
    print(f"quiet: {events} events x {connected}: stream process {used[stream.pid]:.2f} s CPU "
          f"({used[stream.pid] / max(q.delivered, 1) * 1e6:.2f} us per delivered message), web {used[web.pid]:.2f} s, "
          f"the {len(client_pids)} client processes {sum(used[pid] for pid in client_pids):.2f} s")

    with ThreadPoolExecutor(1) as runner:
        busy_future = runner.submit(run_wrk, base, script, paths, duration=args.duration)
        loaded = asyncio.run(commit_events(dsn, loaded_names, args.rate))
        busy = busy_future.result()
    time.sleep(1.0)
    ld = clients.phase(loaded, final=True)
    print(f"detail GET, {connected} clients + {args.rate:g} events/s: {busy.rps:8.0f} req/s  p50 {busy.p50_ms:.2f} ms"
          f"  p99 {busy.p99_ms:.2f} ms  ({busy.rps / alone.rps:.2f}x)")
    print("\n| phase | deliveries | missing | delay p50 | p99 | max |\n|---|---:|---:|---:|---:|---:|")
    for label, d in (("quiet", q), ("under GET load", ld)):
        print(f"| {label} | {d.delivered} | {d.missing} | {d.p50_ms:.1f} ms | {d.p99_ms:.1f} ms | {d.max_ms:.1f} ms |")
    ok = max(q.p99_ms, ld.p99_ms) <= 250 and busy.rps >= 0.5 * alone.rps and q.missing == ld.missing == 0
    print(f"\ntargets (p99 <= 250 ms, detail >= 0.5x, nothing missing): {'met' if ok else 'NOT met'}; "
          f"clients={connected} rate={args.rate:g}/s window={args.window:g}s fanout share={args.fanout_share:g} "
          f"cpus={os.cpu_count()} "
          f"load average={os.getloadavg()[0]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--sse-share", type=float, default=0.5)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--stream-workers", type=int, default=1)
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=20.0, help="committed changes per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--window", type=float, default=0.1, help="EVENTS_COALESCE_SECONDS of the stream")
    p.add_argument("--fanout-share", type=float, default=0.5, help="EVENTS_FANOUT_SHARE of the stream")
    p.add_argument("--sample", type=int, default=10, help="every n-th client records delays")
    p.add_argument("--drain-every", type=float, default=1.0,
                   help="seconds between the reads of an unsampled client's socket")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="rs-stream-bench-") as d:
        try:
            return run(args, Path(d), procs)
        except (RuntimeError, OSError) as exc:
            return print_failure(exc, Path(d))
        finally:
            procs.stop_all()
            for child in multiprocessing.active_children():
                child.kill()
            if not args.keep_db:
                asyncio.run(recreate_database(server_dsn(), BENCH_DB, drop_only=True, schema=False))


if __name__ == "__main__":
    sys.exit(main())
