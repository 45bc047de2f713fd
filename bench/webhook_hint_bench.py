"""What a hint costs: an account's push event about a repository that another account has
registered too (docs/webhooks.md, "Two kinds of receivers").

    .venv/bin/python -m bench.webhook_hint_bench [--pushes 50] [--log-level info]

The real CNCF registry notifies the account `bench`'s own registry receiver (its URL and
secret from `GET /api/v1/receiver/`, as a tenant sets up the registry it runs). Two
repositories: `hint/app`, registered by `bench` and by a second account `other`, and
`solo/app`, registered by `bench` only; both synced first (their access proven). Then
`--pushes` tags are pushed one after another to each, and after each push returns the
benchmark polls (1 ms apart) until the tag is visible through the API to `bench` (the event
is a fact for its image) and to `other` (a hint: the worker syncs `other`'s image with its own
credentials, which reads the tag from the registry). It prints p50 / p99 / max of both, and
the registry requests the worker made per push (its `/metrics`, settled after each phase) with
and without the hinted image: the difference is what one hint costs the registry.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import time
from collections.abc import Sequence

from bench.common import HOST
from bench.webhook_bench import Api, Stack, _count_pending, _pct, _summary, stack
from tests.support.processes import wait_for
from tests.support.registry import push_image


def _registry_requests(st: Stack) -> float:
    """The worker's registry requests so far (every host, every status)."""
    conn = http.client.HTTPConnection(HOST, st.metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("registry_sync_registry_requests_total{"))


def _settled(st: Stack) -> float:
    """The request count once it has not moved for a second (enrichment and syncs done)."""
    last, since = _registry_requests(st), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.2)
        now = _registry_requests(st)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _register(st: Stack, apis: dict[str, Api], repo: str) -> str:
    push_image(st.registry.url, repo, "warmup", {"created": "2024-01-01T00:00:00Z"}, layers=1)
    name = f"{st.registry.host}/{repo}"
    for user, api in apis.items():
        status, _ = api.call("POST", "/api/v1/image/", {"name": name})
        assert status == 201, (user, status)

        def synced(a: Api = api) -> bool:
            return a.call("GET", f"/api/v1/image/{name}/tag/warmup/")[0] == 200

        wait_for(synced, 60, f"the first sync of {user}'s {name}")
    return name


def _visible(api: Api, path: str, since: float, deadline: float) -> float | None:
    while time.perf_counter() < deadline:
        if api.call("GET", path)[0] == 200:
            return (time.perf_counter() - since) * 1000
        time.sleep(0.001)
    return None


def run(st: Stack, pushes: int) -> int:
    bench, other = st.api("bench"), st.api("other")
    hinted = _register(st, {"bench": bench, "other": other}, "hint/app")
    solo = _register(st, {"bench": st.api("bench")}, "solo/app")
    costs: dict[str, float] = {}
    fact_ms: list[float] = []
    hint_ms: list[float] = []
    for repo, name in (("hint/app", hinted), ("solo/app", solo)):
        before = _settled(st)
        for i in range(pushes):
            tag = f"t{i:04d}"
            push_image(st.registry.url, repo, tag, {"created": "2024-01-01T00:00:00Z"}, layers=1)
            done = time.perf_counter()
            path = f"/api/v1/image/{name}/tag/{tag}/"
            seen = _visible(bench, path, done, done + 10)
            if seen is None:
                print(f"{name}:{tag} not visible to bench within 10 s", file=sys.stderr)
                return 1
            if repo == "hint/app":
                fact_ms.append(seen)
                hinted_seen = _visible(other, path, done, done + 30)
                if hinted_seen is None:
                    print(f"{name}:{tag} not visible to other within 30 s", file=sys.stderr)
                    return 1
                hint_ms.append(hinted_seen)
        costs[repo] = (_settled(st) - before) / pushes
    print(f"hints: {pushes} pushes, one after another, notified to bench's own registry receiver")
    print(_summary("fact", fact_ms) + "   (bench's image: the event applied)")
    print(_summary("hint", hint_ms) + "   (other's image: synced with its own credentials)")
    print(f"registry requests per push: {costs['hint/app']:.1f} with the hinted image, {costs['solo/app']:.1f}"
          f" without: a hint costs {costs['hint/app'] - costs['solo/app']:.1f} requests"
          f" (a sync of an image of 1..{pushes + 1} tags: the tag list, a HEAD per known tag, GETs for the new one)")
    print(f"hint latency over the pushes: first 10 p50 {statistics.median(hint_ms[:10]):.1f} ms,"
          f" last 10 p50 {statistics.median(hint_ms[-10:]):.1f} ms, p99 {_pct(hint_ms, 0.99):.1f} ms")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pushes", type=int, default=50)
    p.add_argument("--log-level", default="info")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args(argv)
    with stack(args.log_level, args.keep_db, False, receiver="account", users=("bench", "other")) as st:
        code = run(st, args.pushes)
        print(f"events pending at the end: {asyncio.run(_count_pending(st.dsn))}")
    return code


if __name__ == "__main__":
    sys.exit(main())
