"""The registry side of bench/sync_bench.py: the real CNCF registry with its access log on,
the images pushed to it, a TCP proxy in front of it that makes it look 100 ms away and counts
the requests reaching it per second, and the skopeo loop an operator would script instead of
registry-sync (the baseline).

The proxy runs as a process of its own (so its CPU is not the bench's):

    python -m bench.registry_load proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:5000 \
        --delay 0.05 --counts counts.json

Every chunk is forwarded `--delay` seconds after it arrived, in each direction (a round trip
of twice that), and a new connection waits one round trip before its first byte goes through
(the TCP handshake of a distant host). Requests are counted when their request line is
forwarded to the registry; `--counts` is rewritten every second with {unix second: requests}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.registry import RegistryServer, push_image

SKOPEO = os.environ.get("SKOPEO_BIN", "skopeo")
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) .*"(?P<agent>[^"]*)"$')


# ------------------------------------------------------------------ the registry and its log


class LoggedRegistry(RegistryServer):
    """The test registry with its access log on (Apache combined lines in registry.log)."""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["log"]["accesslog"] = {"disabled": False}
        return cfg

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "registry.log"

    def mark(self) -> int:
        return self.log_path.stat().st_size

    def requests_since(self, offset: int) -> Counter[str]:
        """Requests logged after `offset`, counted as "METHOD kind" (ping, tags, manifest,
        blob, upload, other)."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            data = f.read().decode(errors="replace")
        counts: Counter[str] = Counter()
        for line in data.splitlines():
            m = ACCESS_LINE.search(line)
            if m:
                counts[f"{m['method']} {request_kind(m['path'])}"] += 1
        return counts


def request_kind(path: str) -> str:
    path = path.split("?", 1)[0]
    if path in ("/v2/", "/v2"):
        return "ping"
    if path.endswith("/tags/list"):
        return "tags"
    if "/manifests/" in path:
        return "manifest"
    if "/blobs/uploads" in path:
        return "upload"
    if "/blobs/" in path:
        return "blob"
    return "other"


def repo_name(i: int) -> str:
    return f"bench/app{i:04d}"


def push_all(reg: LoggedRegistry, repos: int, tags: int, threads: int = 6) -> None:
    """REPOS x TAGS images, each tag with its own config (distinct created and labels)."""
    base = datetime(2024, 1, 1, tzinfo=UTC)

    def push_repo(r: int) -> None:
        for t in range(tags):
            created = (base + timedelta(minutes=r * tags + t)).strftime("%Y-%m-%dT%H:%M:%SZ")
            config = {
                "created": created,
                "author": "sync-bench",
                "config": {
                    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", f"BENCH_TAG={t}"],
                    "Cmd": ["/app", "--serve"],
                    "Labels": {"bench.repo": str(r), "bench.tag": f"v{t}"},
                },
            }
            push_image(reg.url, repo_name(r), f"v{t}", config, layers=0)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(push_repo, range(repos)))


@dataclass
class SkopeoResult:
    seconds: float  # the time for every repository, scaled from the sample
    measured_seconds: float
    repos_measured: int
    tags_measured: int
    requests: int  # reaching the registry during the sample, per the proxy


def skopeo_baseline(host: str, repos: int, tags: int, sample: int, rng: random.Random,
                    counts: Path | None = None) -> SkopeoResult:
    """The loop an operator would script, run sequentially on a random sample of `sample`
    repositories through `host` (the proxy), timed and scaled to all `repos`: per repository
    `skopeo list-tags`, then `skopeo inspect --config` per tag."""
    order = rng.sample(range(repos), min(sample, repos))
    flags = ["--tls-verify=false"]
    before = read_counts(counts) if counts else {}
    started = time.monotonic()
    tags_done = 0
    for r in order:
        ref = f"docker://{host}/{repo_name(r)}"
        out = subprocess.run([SKOPEO, "list-tags", *flags, ref], capture_output=True, check=True, timeout=120)
        names = _skopeo_tags(out.stdout)
        if len(names) != tags:
            raise RuntimeError(f"skopeo listed {len(names)} tags of {ref}, expected {tags}")
        for tag in names:
            subprocess.run([SKOPEO, "inspect", "--config", *flags, f"{ref}:{tag}"],
                           capture_output=True, check=True, timeout=120)
            tags_done += 1
    measured = time.monotonic() - started
    time.sleep(1.5)  # the proxy writes its counts every second
    after = read_counts(counts) if counts else {}
    sent = sum(after.values()) - sum(before.values())
    return SkopeoResult(measured / len(order) * repos, measured, len(order), tags_done, sent)


def _skopeo_tags(stdout: bytes) -> list[str]:
    return list(json.loads(stdout)["Tags"])


# ------------------------------------------------------------------ the delaying proxy


def read_counts(path: Path) -> dict[int, int]:
    """{unix second: requests forwarded} as the proxy last wrote them."""
    try:
        return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], delay: float, counts: Path) -> None:
        self.upstream = upstream
        self.delay = delay
        self.counts_path = counts
        self.counts: Counter[int] = Counter()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2 * self.delay)  # the handshake's round trip
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, up_w, count=True), self._pipe(up_r, client_w, count=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                if count:
                    self.counts[int(time.time())] += data.count(b" HTTP/1.1\r\n")
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        except OSError:
            pass
        queue.put_nowait((loop.time() + self.delay, b""))
        with contextlib.suppress(OSError):
            await sender

    async def write_counts(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            tmp = self.counts_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.counts))
            os.replace(tmp, self.counts_path)


async def _serve(listen: tuple[str, int], proxy: DelayProxy) -> None:
    server = await asyncio.start_server(proxy.handle, *listen, backlog=1024)
    async with server:
        await asyncio.gather(server.serve_forever(), proxy.write_counts())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.registry_load")
    sub = p.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="the delaying, counting TCP proxy")
    proxy.add_argument("--listen", required=True, help="host:port")
    proxy.add_argument("--upstream", required=True, help="host:port")
    proxy.add_argument("--delay", type=float, default=0.05, help="seconds each way")
    proxy.add_argument("--counts", type=Path, required=True)
    args = p.parse_args(argv)
    lhost, lport = args.listen.rsplit(":", 1)
    uhost, uport = args.upstream.rsplit(":", 1)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve((lhost, int(lport)), DelayProxy((uhost, int(uport)), args.delay, args.counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
