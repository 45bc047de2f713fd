"""The dashboard at 1M images: server time of its pages, and how long a push takes to show.

    .venv/bin/python -m bench.dashboard_bench [--images 1000000] [--duration 10] [--concurrency 4]
                                              [--pushes 20] [--reuse-db] [--keep-db]

It creates the database `rs_bench_ui` (`registry-sync migrate`, an account `bench`), seeds it
(bench/seed.py: 1,000,000 images, ~6,500,000 tags; the bench account owns 10,000), starts
`registry-sync web` on 127.0.0.1 (with the events hub, as by default) and a priority
`registry-sync worker`, signs in at /ui/signin, and drives the pages with `wrk` (the session
cookie on every request), each set for `--duration` s after a 2 s warm-up:

- images page, first page of each view: by name (the API's list), newest build first, with
  the shared catalog, filtered by state, filtered by registry;
- images page, pages 2-20 reached by following `Next` (by name and newest build first);
- image page of random images the account sees (their first 100 tags, sync status);

then push-to-row: the real `docker-registry` notifies the web process of each push, and a
headless chromium (Debian's, through playwright) with the image page open waits for the new
tag's row; the time from the registry accepting the manifest to the row in the page is
printed for each of `--pushes` pushes. Redis: REDIS_URL (default db 15 on 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from bench.common import (
    HOST,
    Processes,
    Result,
    api_env,
    cli,
    free_port,
    percentile,
    recreate_database,
    run_wrk,
    run_wrk_bench,
    server_dsn,
    wait_http,
    with_db,
    write_wrk_script,
)
from bench.seed import seed
from core.accounts import add_api_key
from dashboard.format import dom_id

DB = "rs_bench_ui"
ACCOUNT = "bench"
SECRET = "bench-ui-webhook-secret"  # noqa: S105 - the benchmark's own registry, on loopback
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NEXT = re.compile(r'href="(/ui/\?[^"]*after=[^"]*)" rel="next"')


async def _key(dsn: str, images: int) -> str | None:
    """A new key of the bench account when `dsn` holds `images` images (a reusable seed)."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        # (a previous run's push-to-row image may be there too)
        if await conn.fetchval("SELECT count(*) FROM images") < images:
            return None
        return await add_api_key(conn, ACCOUNT)
    finally:
        await conn.close()


def prepare(args: argparse.Namespace, dsn: str) -> str:
    """The bench account's API key, on a seeded database (reused with --reuse-db)."""
    if args.reuse_db and (key := asyncio.run(_key(dsn, args.images))):
        print(f"reusing {DB}", flush=True)
        subprocess.run([cli("registry-sync"), "migrate"], env=api_env(dsn, 0), check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
        return key
    env = api_env(dsn, 0)
    asyncio.run(recreate_database(server_dsn(), DB, schema=False))
    subprocess.run([cli("registry-sync"), "migrate"], env=env, check=True, timeout=300, stdout=subprocess.DEVNULL)
    out = subprocess.run([cli("registry-sync"), "create-account", ACCOUNT], env=env, check=True,
                         capture_output=True, text=True, timeout=60)

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            account_id = await conn.fetchval("SELECT id FROM accounts WHERE username = $1", ACCOUNT)
        finally:
            await conn.close()
        s = await seed(dsn, images=args.images, accounts=1000, bench_account=account_id)
        print(f"seeded {s.images} images and {s.tags} tags in {s.seconds:.0f} s", flush=True)

    asyncio.run(go())
    return out.stdout.strip().splitlines()[-1].strip()


class Session:
    """A signed-in dashboard session over urllib (its cookie is what wrk sends)."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        form = self.get("/ui/signin")
        token = re.search(r'name="csrf" value="([^"]*)"', form)
        assert token, form
        body = urllib.parse.urlencode({"csrf": token.group(1), "user": ACCOUNT, "apikey": key, "next": "/ui/"})
        self.opener.open(f"{base}/ui/signin", data=body.encode(), timeout=30).read()

    def get(self, path: str) -> str:
        with self.opener.open(f"{self.base}{path}", timeout=30) as resp:
            return str(resp.read().decode())

    @property
    def cookie(self) -> str:
        value = next(c.value for c in self.jar if c.name == "rs_session")
        assert value
        return value

    def walk(self, path: str, pages: int) -> list[str]:
        """`path` and the pages its Next links lead to (at most `pages` in all)."""
        out = [path]
        while len(out) < pages:
            found = NEXT.search(self.get(out[-1]))
            if found is None:
                break
            out.append(found.group(1).replace("&amp;", "&"))
        return out


async def _images(dsn: str, n: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT i.name FROM images AS i JOIN accounts AS a ON a.username = $1"
            " WHERE i.owner_id = a.id OR i.owner_id IS NULL ORDER BY random() LIMIT $2", ACCOUNT, n)
    finally:
        await conn.close()
    return [f"/ui/image/{urllib.parse.quote(r['name'], safe='/:@')}/" for r in rows]


def measure(args: argparse.Namespace, tmp: Path, base: str, cookie: str,
            sets: dict[str, list[str]]) -> dict[str, Result]:
    script = write_wrk_script(tmp / "wrk.lua", f"rs_session={cookie}", header="Cookie")
    script.chmod(0o600)
    results: dict[str, Result] = {}
    for label, paths in sets.items():
        file = tmp / f"paths-{len(results)}.txt"
        file.write_text("".join(f"{p}\n" for p in paths))
        run_wrk(base, script, file, duration=2, concurrency=args.concurrency)
        r = run_wrk(base, script, file, duration=args.duration, concurrency=args.concurrency)
        if r.errors:
            raise RuntimeError(f"{label}: {r.errors} failed requests (logs in {tmp})")
        results[label] = r
        print(f"  {label:<48} {r.rps:7.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms", flush=True)
    return results


def push_to_row(args: argparse.Namespace, base: str, key: str, cookie: str, registry_url: str, host: str,
                dsn: str) -> list[float]:
    """Seconds from each push's manifest PUT answered to its row in an open image page."""
    from playwright.sync_api import sync_playwright

    from tests.support.registry import push_image

    repo = f"bench/ui-{os.getpid()}"
    push_image(registry_url, repo, "t0", {"created": "2024-01-01T00:00:00Z"})
    name = f"{host}/{repo}"
    req = urllib.request.Request(  # noqa: S310 - loopback only
        f"{base}/api/v1/image/", data=f'{{"name": "{name}"}}'.encode(), method="POST",
        headers={"Authorization": f"ApiKey {ACCOUNT}:{key}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()  # noqa: S310 - loopback only

    async def proven() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return bool(await conn.fetchval("SELECT access_proven FROM images WHERE name = $1", name))
        finally:
            await conn.close()

    deadline = time.monotonic() + 60
    while not asyncio.run(proven()):
        if time.monotonic() > deadline:
            raise RuntimeError("the image's first sync did not succeed")
        time.sleep(0.1)
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(base_url=base)
        ctx.add_cookies([{"name": "rs_session", "value": cookie, "url": f"{base}/ui/"}])
        page = ctx.new_page()
        page.goto(f"/ui/image/{name}/")
        page.wait_for_selector('#live-status[data-live="open"]')
        for i in range(1, args.pushes + 1):
            push_image(registry_url, repo, f"t{i}", {"created": "2024-01-01T00:00:00Z"})
            pushed = time.perf_counter()
            page.wait_for_selector(f"#{dom_id(f't{i}', 'tag')}", timeout=30_000)
            times.append(time.perf_counter() - pushed)
            time.sleep(0.3)  # pushes apart: each one's own time, not a burst's
        browser.close()
    req = urllib.request.Request(  # noqa: S310 - loopback only
        f"{base}/api/v1/image/{name}/", method="DELETE", headers={"Authorization": f"ApiKey {ACCOUNT}:{key}"})
    urllib.request.urlopen(req, timeout=30).read()  # noqa: S310 - loopback only
    return times


def bench(args: argparse.Namespace, tmp: Path, procs: Processes) -> int:
    from tests.support.registry import RegistryServer

    dsn = with_db(server_dsn(), DB)
    key = prepare(args, dsn)
    port = free_port()
    base = f"http://{HOST}:{port}"
    hook = {"url": f"{base}/api/v1/webhooks/registry/", "headers": {"Authorization": f"Bearer {SECRET}"},
            "backoff": "200ms"}
    with RegistryServer(notifications=[hook]) as reg:
        env = api_env(dsn, port, WEBHOOK_SECRETS=f"registry@{reg.host}={SECRET}", INSECURE_REGISTRIES=reg.host,
                      ALLOW_PRIVATE_REGISTRIES="1",
                      SYNC_INTERVAL_SECONDS="86400", BEAT_QUEUE_MAX="0")
        web = procs.start([cli("registry-sync"), "web"], env, tmp / "web.log")
        wait_http(f"{base}/healthz", web)
        procs.start([cli("registry-sync"), "worker", "--queues", "priority"], env, tmp / "worker.log")
        session = Session(base, key)
        views = {
            "by name (the API's list)": "/ui/",
            "newest build first": "/ui/?sort=built",
            "with the catalog, newest build first": "/ui/?scope=all&sort=built",
            "with the catalog, state Building, newest first": "/ui/?scope=all&state=Building&sort=built",
            "with the catalog, registry quay.io, newest first": "/ui/?scope=all&registry=quay.io&sort=built",
        }
        sets = {f"images page: {label}": [path] for label, path in views.items()}
        sets["images page: pages 2-20 by name, by Next"] = session.walk("/ui/", 20)[1:]
        sets["images page: pages 2-20 newest first, by Next"] = session.walk("/ui/?sort=built", 20)[1:]
        sets["image page: random visible images"] = asyncio.run(_images(dsn, 2000))
        print(f"dashboard, 1 web process, concurrency {args.concurrency}:", flush=True)
        results = measure(args, tmp, base, session.cookie, sets)
        times = push_to_row(args, base, key, session.cookie, reg.url, reg.host, dsn) if args.pushes else []
    report(args, results, times)
    return 0


def report(args: argparse.Namespace, results: dict[str, Result], times: list[float]) -> None:
    print(f"\nimages={args.images} duration={args.duration:g}s concurrency={args.concurrency} cpus={os.cpu_count()}"
          f" load average at the end={os.getloadavg()[0]:.2f} (other work on the machine skews it)\n")
    print("| page | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |")
    if times:
        ms = [t * 1000 for t in times]
        print(f"\npush to row in the browser ({len(ms)} pushes): p50 {percentile(ms, 50):.0f} ms,"
              f" p90 {percentile(ms, 90):.0f} ms, max {max(ms):.0f} ms")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard_bench", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", type=int, default=4, help="open connections")
    p.add_argument("--pushes", type=int, default=20, help="push-to-row samples (0: none)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    p.add_argument("--reuse-db", action="store_true", help=f"skip the seed when {DB} has --images images")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_wrk_bench(lambda tmp, procs: bench(args, tmp, procs), database=DB,
                         keep_db=args.keep_db or args.reuse_db, prefix="rs-bench-ui-")

if __name__ == "__main__":
    sys.exit(main())
