"""Several real `registry-sync worker` processes sharing registry budgets through Redis, a
registry that hangs, and SIGTERM with syncs in flight (SPEC §4 fair sharing and scaling)."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid

import redis
from aiohttp import web

from tests.conftest import unique
from tests.support import ThreadedApp
from tests.support.fake_registry import CONFIG, CONFIG_DIGEST, DOCKER_MANIFEST, MANIFEST, MANIFEST_DIGEST
from tests.support.hanging import HangingRegistry
from tests.support.processes import Stack, wait_for
from tests.support.registry import RegistryServer, push_image

WEBHOOK_SECRET = "fleet-webhook-secret"


class LimitingRegistry:
    """A registry whose every repository has tags a and b, answering after `delay`; after
    `limit_after` requests it answers one with `429 Retry-After: <retry_after>`. Records the
    arrival time of every request."""

    def __init__(self, *, delay: float = 0.05, limit_after: int = 40, retry_after: int = 5) -> None:
        self.delay = delay
        self.limit_after = limit_after
        self.retry_after = retry_after
        self.arrivals: list[tuple[float, str, str]] = []
        self.limited_at: float | None = None
        self._app = ThreadedApp(self._make_app)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._app.port}"

    def __enter__(self) -> LimitingRegistry:
        self._app.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._app.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append((time.time(), request.method, request.path))
        if self.limited_at is None and len(self.arrivals) > self.limit_after:
            self.limited_at = time.time()
            return web.json_response({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
                                     status=429, headers={"Retry-After": str(self.retry_after)})
        await asyncio.sleep(self.delay)
        path = request.path
        if path == "/v2/":
            return web.json_response({})
        if path.endswith("/tags/list"):
            return web.json_response({"name": path[4:-10], "tags": ["a", "b"]})
        if "/manifests/" in path:
            return web.Response(body=MANIFEST, content_type=DOCKER_MANIFEST,
                                headers={"Docker-Content-Digest": MANIFEST_DIGEST})
        if path.endswith(f"/blobs/{CONFIG_DIGEST}"):
            return web.Response(body=CONFIG, content_type="application/octet-stream")
        raise web.HTTPNotFound()

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app


def add_images(stack: Stack, host: str, n: int, prefix: str, *, due: bool = True) -> None:
    stack.sql("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false) ON CONFLICT DO NOTHING", host)
    stack.sql(
        "INSERT INTO images (name, registry_id, repository, next_sync_at)"
        " SELECT $1 || '/' || $2 || '/app' || i, r.id, $2 || '/app' || i,"
        "        CASE WHEN $4 THEN now() ELSE now() + interval '1 hour' END"
        " FROM generate_series(0, $3 - 1) AS i, registries AS r WHERE r.host = $1",
        host, prefix, n, due,
    )


def test_a_429_pauses_the_host_for_every_worker_process(stack: Stack) -> None:
    """Two worker processes sync 60 images of one registry; it answers one request with
    `429 Retry-After: 5`. From then on no request from either process reaches it until the
    five seconds are over; the images whose syncs met the pause are handed back and synced
    after it, none counted as failed."""
    n = 60
    with LimitingRegistry(limit_after=40) as reg:
        stack.env.update(INSECURE_REGISTRIES=reg.host, SYNC_INTERVAL_SECONDS="3600")
        add_images(stack, reg.host, n, unique("paused"), due=False)
        workers = [stack.start("worker", "--queues", "routine") for _ in range(2)]
        wait_for(lambda: all("ready" in w.output() for w in workers), 90, "both workers")
        stack.start("beat")
        stack.sql("UPDATE images SET next_sync_at = now()")
        wait_for(lambda: stack.sql("SELECT count(*) FROM images WHERE state = 'Success'") == n, 60,
                 "every image synced after the pause")
        assert reg.limited_at is not None
        t429 = reg.limited_at
        during = [a for a in reg.arrivals if t429 + 0.25 <= a[0] < t429 + reg.retry_after - 0.1]
        after = [a for a in reg.arrivals if a[0] >= t429 + reg.retry_after - 0.1]
        gap = min((a[0] for a in after), default=float("inf")) - t429
        print(f"\n429 at +0 s; requests in flight before it arrived until "
              f"+{max((a[0] - t429 for a in reg.arrivals if a[0] < t429 + 0.25), default=0):.3f} s; "
              f"next request at +{gap:.2f} s; {len(reg.arrivals)} requests in all")
        assert during == [], f"requests reached the paused host: {during[:5]}"
        assert after, "syncing went on after the pause"
        assert stack.sql("SELECT count(*) FROM images WHERE sync_failures > 0") <= 1  # the 429's own sync, if any
        for w in workers:
            assert w.events("sync.done"), "both processes synced images"
        logs = [e for w in workers for e in w.events("sync.host_busy")]
        assert logs, "syncs that met the pause were handed back"


def test_a_hanging_registry_delays_nobody_else(stack: Stack, registry: RegistryServer) -> None:
    """Account B registers 10 images on a registry that never answers; meanwhile account A's
    registration on a healthy registry reaches Success and A's webhook push is visible, both
    within seconds (the bounds are generous; the figures are printed)."""
    hang = HangingRegistry()
    try:
        stack.env.update(INSECURE_REGISTRIES=f"{registry.host},{hang.host}", WEBHOOK_SECRET=WEBHOOK_SECRET,
                         WEBHOOK_SECRETS=f"registry@{registry.host}={WEBHOOK_SECRET}",
                         SYNC_INTERVAL_SECONDS="3600", WORKER_DRAIN_SECONDS="2")
        key_a, key_b = stack.account("alice"), stack.account("bob")
        repo = f"{unique('healthy')}/app"
        push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
        stack.start("web")
        worker = stack.start("worker")
        stack.start("beat")
        wait_for(lambda: stack.up() and worker.output().count("ready") >= 2, 90, "API and both consumers")
        for i in range(10):
            status, _ = stack.http("POST", "/api/v1/image/", user="bob", key=key_b,
                                   body={"name": f"{hang.host}/bob/app{i}"})
            assert status == 201
        wait_for(lambda: stack.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'run:%'") >= 10, 20,
                 "B's syncs to hang")

        name = f"{registry.host}/{repo}"
        started = time.monotonic()
        status, _ = stack.http("POST", "/api/v1/image/", user="alice", key=key_a, body={"name": name})
        assert status == 201

        def image() -> dict:
            return stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key_a)[1]

        wait_for(lambda: image()["state"] == "Success", 15, "A's registration to sync")
        registered = time.monotonic() - started

        pushed = push_image(registry.url, repo, "v2", {"created": "2024-02-01T00:00:00Z"}, layers=0)
        event = {"events": [{
            "id": str(uuid.uuid4()), "timestamp": "2026-01-01T00:00:00Z", "action": "push",
            "target": {"mediaType": DOCKER_MANIFEST, "digest": pushed.digest, "repository": repo, "tag": "v2",
                       "url": f"http://{registry.host}/v2/{repo}/manifests/{pushed.digest}"},
            "request": {"host": registry.host, "method": "PUT"},
        }]}
        started = time.monotonic()
        status, body = stack.http(
            "POST", f"/api/v1/webhooks/registry/?host={registry.host}", body=event,
            headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"},
        )
        assert status == 202, body
        wait_for(lambda: f"/api/v1/image/{name}/tag/v2/" in image()["tags"], 15, "A's push to be visible")
        visible = time.monotonic() - started
        hanging = stack.sql("SELECT count(*) FROM images WHERE name LIKE $1 AND lease_owner LIKE 'run:%'",
                            f"{hang.host}/%")
        print(f"\nwith 10 syncs hanging: registration -> Success {registered:.2f} s, "
              f"webhook push -> visible {visible:.3f} s ({hanging} of B's syncs still hanging)")
        assert hanging >= 1, "B's registry was still hanging throughout"
        assert registered < 10 and visible < 5
    finally:
        hang.close()


def test_sigterm_drains_then_hands_back_what_still_runs(stack: Stack) -> None:
    """A worker with syncs hanging on a registry gets SIGTERM: it exits after
    WORKER_DRAIN_SECONDS, and every image it had (run leases and claims of a batch not
    started) is free again at once, not after its lease lapses."""
    hang = HangingRegistry()
    try:
        stack.env.update(INSECURE_REGISTRIES=hang.host, WORKER_DRAIN_SECONDS="1", LEASE_SECONDS="600",
                         SYNC_INTERVAL_SECONDS="3600",
                         WORKER_CONCURRENCY="10", TASK_BATCH_SIZE="5", HOST_SHARE="1", ACCOUNT_SHARE="1")
        add_images(stack, hang.host, 20, unique("drain"))
        worker = stack.start("worker", "--queues", "routine")
        beat = stack.start("beat")
        wait_for(lambda: stack.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'run:%'") >= 10, 60,
                 "the worker to be full of hanging syncs")
        assert beat.stop() == 0
        started = time.monotonic()
        assert worker.stop(30) == 0, worker.output()[-2000:]
        took = time.monotonic() - started
        leased = stack.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'run:%'")
        claimed = stack.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'claim:%'")
        queued = redis.Redis.from_url(stack.env["REDIS_URL"]).llen("routine")
        print(f"\nSIGTERM with 10 hanging syncs: exited after {took:.1f} s; {leased} run leases left, "
              f"{claimed} claims for {queued} queued batches")
        assert leased == 0, "every running sync handed its image back"
        assert claimed <= queued * 5, "only the claims of batches still in the queue remain"
        assert worker.events("worker.drain_cancelled")
        assert took < 20
    finally:
        hang.close()


def test_requests_counted_per_process_stay_within_the_fleet_rate(stack: Stack) -> None:
    """Two processes, one host limited to 20 requests/s fleet-wide: per second the registry
    never sees more than the rate (plus one for the edges of a second)."""
    with LimitingRegistry(delay=0.0, limit_after=10**9) as reg:
        stack.env.update(INSECURE_REGISTRIES=reg.host, SYNC_INTERVAL_SECONDS="3600",
                         REGISTRY_LIMITS=f'{{"{reg.host}": {{"rate": 20, "burst": 1}}}}')
        add_images(stack, reg.host, 30, unique("rated"), due=False)
        workers = [stack.start("worker", "--queues", "routine") for _ in range(2)]
        wait_for(lambda: all("ready" in w.output() for w in workers), 90, "both workers")
        stack.start("beat")
        stack.sql("UPDATE images SET next_sync_at = now()")
        wait_for(lambda: stack.sql("SELECT count(*) FROM images WHERE state = 'Success'") == 30, 60, "every image")
        per_second = collections.Counter(int(t) for t, _, _ in reg.arrivals)
        busiest = max(per_second.values())
        print(f"\n{len(reg.arrivals)} requests at 20/s fleet-wide: busiest second {busiest}")
        assert busiest <= 21
