"""Fixtures of the notification tests: a real registry, the API, a worker Runtime for syncs
and webhook events, a deliverer running in the test's loop (worker/notifier.py), and
loopback receivers that record what they are sent and answer as a test scripts them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import test_utils, web

from api.app import create_app
from core.settings import Settings
from tests.conftest import User
from tests.support.registry import RegistryServer
from tests.support.resolver import stub_resolver
from worker.fanout import fan_out
from worker.notifier import run_deliverer
from worker.runtime import Runtime

# Short waits between attempts, so retries take milliseconds; the schedule's shape (attempts,
# order, Retry-After, giving up) is what the tests check, not its lengths.
SCHEDULE = "0,0.2,0.2"


@pytest.fixture(scope="session")
def nt_registry() -> Iterator[RegistryServer]:
    with RegistryServer() as reg:
        yield reg


@pytest.fixture(scope="session")
def nt_settings(settings: Settings, nt_registry: RegistryServer) -> Settings:
    return dataclasses.replace(
        settings, insecure_registries=frozenset({nt_registry.host}), notify_retry_schedule=SCHEDULE,
        notify_retry_jitter=0.0, notify_poll_seconds=0.05, notify_timeout_seconds=3.0, worker_drain_seconds=1.0,
    )


@pytest.fixture(scope="session")
async def nt_client(nt_settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    app = create_app(nt_settings)
    stub_resolver(app)
    c = test_utils.TestClient(test_utils.TestServer(app))
    await c.start_server()
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def nt_runtime(nt_settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime(nt_settings, name="test-notify", backoff_base=0.01, max_retry_wait=1.0).open()
    yield rt
    await rt.aclose()


@contextlib.asynccontextmanager
async def running_deliverer(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """A deliverer running beside the test; the subscriptions made meanwhile are deleted
    afterwards so that later tests' deliverers do not keep calling receivers that are gone."""
    stop = asyncio.Event()
    before = await pool.fetchval("SELECT coalesce(max(id), 0) FROM subscriptions")
    task = asyncio.create_task(run_deliverer(settings, stop, pool=pool))
    try:
        yield
    finally:
        stop.set()
        await task
        await pool.execute("DELETE FROM subscriptions WHERE id > $1", before)


@pytest.fixture
async def deliverer(nt_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    async with running_deliverer(nt_settings, pool):
        yield


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback endpoint: `answers[path]` is a list of (status, headers) to answer in turn
    (the last one repeats); unscripted paths answer 200."""

    server: test_utils.TestServer
    got: list[Received] = field(default_factory=list)
    answers: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    delay: float = 0.0  # seconds each answer takes

    def url(self, path: str = "/hook") -> str:
        return str(self.server.make_url(path))

    def to(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec: Receiver

    async def handle(request: web.Request) -> web.Response:
        rec.got.append(Received(request.path, dict(request.headers), await request.read(), time.monotonic()))
        if rec.delay:
            await asyncio.sleep(rec.delay)
        script = rec.answers.get(request.path) or [(200, {})]
        status, headers = script.pop(0) if len(script) > 1 else script[0]
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = test_utils.TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec = Receiver(server)
    yield rec
    await server.close()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy (returned), or fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r} after {within} s")
        await asyncio.sleep(0.02)


async def fanned_out(pool: asyncpg.Pool, image_id: int) -> None:
    """Fan out until no event of the image waits (another deliverer may hold the lock)."""
    waiting = "SELECT count(*) FROM notification_events WHERE image_id = $1 AND NOT fanned_out"
    while await pool.fetchval(waiting, image_id):
        if not (await fan_out(pool))[0]:
            await asyncio.sleep(0.01)


async def subscribe(client: test_utils.TestClient, user: User, url: str, events: list[str],
                    **extra: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/subscription/", json={"url": url, "events": events, **extra},
                             headers=user.headers)
    body = await resp.json()
    assert resp.status == 201, body
    return dict(body)
