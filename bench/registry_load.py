"""The registry side of bench/sync_bench.py: the real CNCF registry with its access log on
(the request counts come from it), the images pushed to it, and the skopeo loop an operator
would script instead of registry-sync (the baseline)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections import Counter
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
    seconds: float  # measured, or extrapolated to every repository
    measured_seconds: float
    repos_measured: int
    tags_measured: int
    extrapolated: bool
    requests: Counter[str]


def skopeo_baseline(reg: LoggedRegistry, repos: int, tags: int, budget: float, rng: random.Random) -> SkopeoResult:
    """The loop an operator would script, run sequentially; a random sample when too slow."""
    order = list(range(repos))
    rng.shuffle(order)
    mark = reg.mark()
    started = time.monotonic()
    done = tags_done = 0
    flags = ["--tls-verify=false"]
    for r in order:
        ref = f"docker://{reg.host}/{repo_name(r)}"
        out = subprocess.run([SKOPEO, "list-tags", *flags, ref], capture_output=True, check=True, timeout=60)
        names = _skopeo_tags(out.stdout)
        if len(names) != tags:
            raise RuntimeError(f"skopeo listed {len(names)} tags of {ref}, expected {tags}")
        for tag in names:
            subprocess.run([SKOPEO, "inspect", "--config", *flags, f"{ref}:{tag}"],
                           capture_output=True, check=True, timeout=60)
            tags_done += 1
        done += 1
        elapsed = time.monotonic() - started
        if done >= min(10, repos) and done < repos and elapsed / done * repos > budget:
            break
    measured = time.monotonic() - started
    requests = reg.requests_since(mark)
    return SkopeoResult(measured / done * repos, measured, done, tags_done, done < repos, requests)


def _skopeo_tags(stdout: bytes) -> list[str]:
    return list(json.loads(stdout)["Tags"])
