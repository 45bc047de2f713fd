"""API read-path benchmark: the real API against a bare aiohttp ceiling (issue 2).

    .venv/bin/python -m bench.api_bench [--images 10000] [--duration 10] [--concurrency 32]
                                        [--web-workers 1]

It creates a fresh database (`rs_bench`) on the local Postgres (or DATABASE_URL's server),
applies the schema with `registry-sync migrate`, creates an account, seeds images with tags,
layers, categories and a few registries, starts `registry-sync web` as a subprocess on
127.0.0.1, and drives it with `wrk` (a separate process, one Lua script rotating through
every image name / list offset) for:

- detail: `GET /api/v1/image/<name>/` of every seeded image, in shuffled order;
- list:   `GET /api/v1/image/?limit=25&offset=<k>` over every page, in shuffled order;
- the same two against a bare aiohttp app in its own process that returns a constant JSON
  document of the same size (the framework ceiling).

The API is measured at LOG_LEVEL=warning (the ratios) and at info (production's level).
Everything it starts is stopped on exit, also on Ctrl-C; the database is dropped unless
--keep-db. Needs `wrk` (apt-get install wrk).
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from aiohttp import web

from api.server import run_processes
from bench.common import Result, recreate_database, run_wrk, server_dsn, with_db, write_wrk_script

HOST = "127.0.0.1"
BENCH_DB = "rs_bench"
ACCOUNT = "bench"
TARGETS = {"detail": 0.6, "list": 0.4}
REGISTRIES = [  # (host, name, icon_url, is_ssl)
    ("registry.hub.docker.com", "Docker Hub", "/_static/assets/images/dockerimages/docker-64.png",
     True),
    ("quay.io", "quay.io", None, True),
    ("ghcr.io", "ghcr.io", None, True),
    ("registry.example.com:5000", "registry.example.com:5000", None, False),
]
CATEGORIES = [
    "Databases", "Web servers", "Languages", "Operating systems", "Message queues", "Caches",
    "Monitoring", "CI/CD", "Security", "Storage", "Networking", "Machine learning",
]
TAG_POOL = [
    "latest", "stable", "edge", "alpine", "slim", "bookworm", "bullseye", "jammy", "1", "1.0",
    "1.0.1", "1.1", "1.2.3", "2", "2.0", "2.1.0", "3.9", "3.11", "3.12", "v4.0.0-rc1", "lts",
    "nightly", "dev", "main", "20240101", "windowsservercore",
]
TAG_STATES = ["Success"] * 90 + ["Failed"] * 5 + ["Building"] * 3 + ["Empty"] * 2



# --- database -------------------------------------------------------------------------------

def _image_name(i: int, rng: random.Random) -> tuple[int, str, str, str]:
    """(registry index, API name, repository, public_url) of the i-th seeded image."""
    ns = f"team{rng.randrange(200)}"
    kind = rng.random()
    if kind < 0.1:  # official Hub images: `name`, repository library/name
        return 0, f"app{i}", f"library/app{i}", f"https://hub.docker.com/_/app{i}/"
    if kind < 0.7:
        return 0, f"{ns}/app-{i}", f"{ns}/app-{i}", f"https://hub.docker.com/r/{ns}/app-{i}/"
    reg = 1 + int((kind - 0.7) / 0.1)
    host = REGISTRIES[reg][0]
    return reg, f"{host}/{ns}/app-{i}", f"{ns}/app-{i}", ""


async def seed(dsn: str, n_images: int, account_id: int, seed_value: int = 2) -> None:
    """Seed `n_images`: 90% shared catalog, 10% owned by the bench account; 3-10 tags each,
    half of the tags with a layer; 0-3 categories each. Bulk COPY, a few seconds for 10k."""
    rng = random.Random(seed_value)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "registries", columns=["id", "host", "name", "icon_url", "is_ssl"],
                records=[(k + 1, *r) for k, r in enumerate(REGISTRIES)],
            )
            await conn.copy_records_to_table(
                "categories", columns=["id", "name"],
                records=[(k + 1, c) for k, c in enumerate(CATEGORIES)],
            )
            images, tags, layers, cats = [], [], [], []
            tag_id = 0
            for i in range(1, n_images + 1):
                reg, name, repo, url = _image_name(i, rng)
                owner = account_id if rng.random() < 0.1 else None
                images.append((
                    i, name, owner, reg + 1, repo,
                    f"{name}: a container image for benchmarking the read path of the API "
                    f"(#{i}, {rng.choice(CATEGORIES).lower()})",
                    f"https://example.com/icons/{i}.png" if rng.random() < 0.3 else None,
                    rng.randrange(5000), rng.random() < 0.05, rng.random() < 0.2,
                    owner is not None or reg != 0, url,
                ))
                digests = [f"sha256:{secrets.token_hex(32)}" for _ in range(rng.randint(1, 3))]
                for d in digests:
                    layers.append((
                        d, f"maintainer{rng.randrange(100)}@example.com",
                        now - timedelta(days=rng.randrange(900)), "/docker-entrypoint.sh",
                        f"/usr/bin/app-{i} --serve",
                        json.dumps([{"key": "PATH", "value": "/usr/local/bin:/usr/bin"},
                                    {"key": "APP_VERSION", "value": str(i)}]),
                        json.dumps([{"key": "org.opencontainers.image.source",
                                     "value": f"https://example.com/{repo}"}]),
                        json.dumps([{"port": 8080, "protocol": "tcp"}]),
                        json.dumps([{"container_path": "/data"}]),
                    ))
                for t in rng.sample(TAG_POOL, rng.randint(3, 10)):
                    tag_id += 1
                    state = rng.choice(TAG_STATES)
                    tags.append((
                        tag_id, i, t, state, rng.random() < 0.3,
                        rng.choice(digests) if rng.random() < 0.5 else None,
                        now - timedelta(hours=rng.randrange(20000)) if state == "Success" else None,
                    ))
                for c in rng.sample(range(1, len(CATEGORIES) + 1), rng.randint(0, 3)):
                    cats.append((i, c))
            await conn.copy_records_to_table(
                "images", records=images,
                columns=["id", "name", "owner_id", "registry_id", "repository", "description",
                         "icon_url", "star_count", "jumpstart", "in_use", "is_private_image",
                         "public_url"],
            )
            await conn.copy_records_to_table(
                "layers", records=layers,
                columns=["config_digest", "author", "created", "entrypoint", "run_command",
                         "envvars", "labels", "ports", "volumes"],
            )
            # One COPY, so the statement-level trigger computes every image's state once.
            await conn.copy_records_to_table(
                "tags", records=tags,
                columns=["id", "image_id", "name", "state", "buildable", "config_digest",
                         "build_date"],
            )
            await conn.copy_records_to_table(
                "image_categories", columns=["image_id", "category_id"], records=cats
            )
            for table in ("registries", "categories", "images", "tags"):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        # As autovacuum would leave it: statistics, and a visibility map for index-only scans.
        await conn.execute("VACUUM ANALYZE")
        print(f"seeded {len(images)} images, {len(tags)} tags, {len(layers)} layers, "
              f"{len(cats)} image categories", flush=True)
    finally:
        await conn.close()


async def visible_names(dsn: str, account_id: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT name FROM images WHERE owner_id = $1 OR owner_id IS NULL", account_id
        )
    finally:
        await conn.close()
    return [r["name"] for r in rows]


# --- processes ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]


class Processes:
    """Every subprocess this run started, each in its own process group, stopped at exit."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> Started:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        s = Started(name, proc)
        self.started.append(s)
        return s

    def stop(self, s: Started, timeout: float = 15.0) -> None:
        if s.proc.poll() is None:
            try:
                os.killpg(s.proc.pid, signal.SIGTERM)  # its own group: the workers too
                s.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(s.proc.pid, signal.SIGKILL)
                s.proc.wait(5)
            except ProcessLookupError:
                pass
        if s in self.started:
            self.started.remove(s)

    def stop_all(self) -> None:
        for s in list(reversed(self.started)):
            self.stop(s)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - a fixed http URL on 127.0.0.1
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def http_get(url: str, auth: str) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": auth})  # noqa: S310 - 127.0.0.1 only
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - 127.0.0.1 only
        body: bytes = r.read()
        return body


# --- the ceiling: a bare aiohttp app ---------------------------------------------------------

def _serve_ceiling(port: int, detail: bytes, listing: bytes, reuse_port: bool) -> None:
    async def detail_handler(_: web.Request) -> web.Response:
        return web.Response(body=detail, content_type="application/json")

    async def list_handler(_: web.Request) -> web.Response:
        return web.Response(body=listing, content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", list_handler)
    app.router.add_get("/api/v1/image/", list_handler)
    app.router.add_get("/api/v1/image/{tail:.+}", detail_handler)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, reuse_port=reuse_port)


def ceiling_main(port: int, detail_file: str, list_file: str, workers: int) -> None:
    """Serve the constant bodies, like `registry-sync web --workers N` (one port, N processes)."""
    detail, listing = Path(detail_file).read_bytes(), Path(list_file).read_bytes()
    if workers <= 1:
        _serve_ceiling(port, detail, listing, reuse_port=False)
        return
    run_processes(_serve_ceiling, (port, detail, listing, True), workers)


# --- load -----------------------------------------------------------------------------------

def median_body(bodies: list[bytes]) -> bytes:
    sizes = sorted(bodies, key=len)
    return sizes[len(sizes) // 2]


# --- the run --------------------------------------------------------------------------------

@dataclass
class Run:
    tmp: Path
    procs: Processes
    args: argparse.Namespace
    auth_file: Path

    def measure(self, label: str, base: str, paths: Path) -> Result:
        a = self.args
        run_wrk(base, self.auth_file, paths, duration=a.warmup, concurrency=a.concurrency,
                threads=a.wrk_threads)
        r = run_wrk(base, self.auth_file, paths, duration=a.duration, concurrency=a.concurrency,
                    threads=a.wrk_threads)
        print(f"  {label:<28} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
              f"  errors {r.errors}", flush=True)
        if r.errors:
            raise RuntimeError(f"{label}: {r.errors} failed requests (see logs in {self.tmp})")
        return r


def api_env(dsn: str, port: int, log_level: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=dsn, REDIS_URL=f"redis://{HOST}:6379/15", PORT=str(port), BIND_HOST=HOST,
        LOG_LEVEL=log_level, SECRET_KEY=secrets.token_urlsafe(32),
    )
    return env


def cli(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def bench(args: argparse.Namespace, tmp: Path, procs: Processes) -> int:
    server = server_dsn()
    dsn = with_db(server, args.database)
    asyncio.run(recreate_database(server, args.database, schema=False))
    env = api_env(dsn, 0, "warning")
    subprocess.run([cli("registry-sync"), "migrate"], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    out = subprocess.run([cli("registry-sync"), "create-account", ACCOUNT], env=env, check=True,
                         timeout=60, capture_output=True, text=True)
    key = out.stdout.strip().splitlines()[-1].strip()
    auth = f"ApiKey {ACCOUNT}:{key}"
    account_id = asyncio.run(_account_id(dsn))
    started = time.monotonic()
    asyncio.run(seed(dsn, args.images, account_id))
    print(f"seed took {time.monotonic() - started:.1f}s", flush=True)

    rng = random.Random(7)
    names = asyncio.run(visible_names(dsn, account_id))
    rng.shuffle(names)
    detail_paths = tmp / "detail.txt"
    detail_paths.write_text("".join(f"/api/v1/image/{n}/\n" for n in names))
    offsets = list(range(0, len(names), 25))
    rng.shuffle(offsets)
    list_paths = tmp / "list.txt"
    list_paths.write_text("".join(f"/api/v1/image/?limit=25&offset={o}\n" for o in offsets))
    auth_file = tmp / "wrk.lua"
    write_wrk_script(auth_file, auth)
    auth_file.chmod(0o600)
    run = Run(tmp, procs, args, auth_file)

    results: dict[str, Result] = {}
    bodies: dict[str, bytes] = {}
    for level in args.log_levels:
        port = free_port()
        base = f"http://{HOST}:{port}"
        api = procs.start(
            f"api-{level}", [cli("registry-sync"), "web", "--workers", str(args.web_workers)],
            api_env(dsn, port, level), tmp / f"api-{level}.log",
        )
        wait_http(f"{base}/healthz", api.proc)
        if not bodies:
            # The ceiling answers with the median-sized real response of each kind.
            bodies["detail"] = median_body(
                [http_get(f"{base}/api/v1/image/{n}/", auth) for n in names[:101]]
            )
            bodies["list"] = median_body(
                [http_get(f"{base}/api/v1/image/?limit=25&offset={o}", auth) for o in offsets[:21]]
            )
        print(f"API, LOG_LEVEL={level}, {args.web_workers} web process(es):", flush=True)
        results[f"detail/{level}"] = run.measure("GET /api/v1/image/<name>/", base, detail_paths)
        results[f"list/{level}"] = run.measure("GET /api/v1/image/?limit=25", base, list_paths)
        procs.stop(api)

    (tmp / "detail.json").write_bytes(bodies["detail"])
    (tmp / "list.json").write_bytes(bodies["list"])
    port = free_port()
    base = f"http://{HOST}:{port}"
    ceiling = procs.start(
        "ceiling",
        [sys.executable, "-m", "bench.api_bench", "--serve-ceiling", str(port),
         str(tmp / "detail.json"), str(tmp / "list.json"), "--web-workers", str(args.web_workers)],
        dict(os.environ), tmp / "ceiling.log",
    )
    wait_http(f"{base}/healthz", ceiling.proc)
    print(f"ceiling (bare aiohttp, constant body), {args.web_workers} process(es):", flush=True)
    for kind, paths in (("detail", detail_paths), ("list", list_paths)):
        label = f"{kind}-size ({len(bodies[kind])} B)"
        results[f"{kind}/ceiling"] = run.measure(label, base, paths)
    procs.stop(ceiling)

    report(args, results, bodies)
    if not args.keep_db:
        asyncio.run(recreate_database(server, args.database, drop_only=True, schema=False))
    return 0


async def _account_id(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        account_id: int = await conn.fetchval(
            "SELECT id FROM accounts WHERE username = $1", ACCOUNT
        )
    finally:
        await conn.close()
    return account_id


def report(args: argparse.Namespace, results: dict[str, Result], bodies: dict[str, bytes]) -> None:
    print()
    print(f"images={args.images} duration={args.duration:g}s concurrency={args.concurrency} "
          f"web_workers={args.web_workers} wrk_threads={args.wrk_threads} cpus={os.cpu_count()} "
          f"load average at the end={os.getloadavg()[0]:.2f} (other work on the machine skews it)")
    print()
    print("| endpoint | server | req/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for key, r in results.items():
        kind, server = key.split("/")
        what = ("`GET /api/v1/image/<name>/`" if kind == "detail"
                else "`GET /api/v1/image/?limit=25&offset=k`")
        who = (f"ceiling ({len(bodies[kind])} B)" if server == "ceiling"
               else f"API, LOG_LEVEL={server}")
        print(f"| {what} | {who} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |")
    print()
    print("| ratio | log level | value | target | met |")
    print("|---|---|---:|---:|---|")
    for level in args.log_levels:
        for kind, target in TARGETS.items():
            ratio = results[f"{kind}/{level}"].rps / results[f"{kind}/ceiling"].rps
            print(f"| {kind}/ceiling | {level} | {ratio:.2f} | {target} | "
                  f"{'yes' if ratio >= target else 'NO'} |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.api_bench", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each one")
    p.add_argument("--concurrency", type=int, default=32, help="open connections")
    p.add_argument("--web-workers", type=int, default=1,
                   help="passed to `registry-sync web --workers` (and used for the ceiling)")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--log-levels", default="warning,info",
                   help="API runs, comma-separated; the first is the headline")
    p.add_argument("--database", default=BENCH_DB, help="dropped and recreated")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    p.add_argument("--serve-ceiling", nargs=3, metavar=("PORT", "DETAIL_FILE", "LIST_FILE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.log_levels = [lv.strip() for lv in args.log_levels.split(",") if lv.strip()]
    return args


def _interrupt(signum: int, _: object) -> None:
    """SIGTERM ends the run like Ctrl-C does: through main's `finally`."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_ceiling:
        port, detail_file, list_file = args.serve_ceiling
        ceiling_main(int(port), detail_file, list_file, args.web_workers)
        return 0
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="rs-bench-") as d:
        try:
            return bench(args, Path(d), procs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            for log in sorted(Path(d).glob("*.log")):
                print(f"--- {log.name} (tail)\n{log.read_text()[-2000:]}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
