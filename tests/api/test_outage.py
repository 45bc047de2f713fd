"""While Postgres is unreachable the API answers 503 JSON with Retry-After, logs the outage
once rather than a traceback per request, and recovers by itself (SPEC §6). A real
`registry-sync web` on a throwaway Postgres cluster that the test stops and starts again,
under a steady request load."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from core.db import migrate
from tests.support.pgcluster import ThrowawayCluster
from tests.support.processes import Stack, service_env, wait_for
from tests.support.services import free_port, redis_db

LOAD_THREADS = 3


@dataclass
class Load:
    """Threads that GET an authenticated list in a loop; every answer is recorded."""

    stack: Stack
    key: str
    answers: list[tuple[float, int, object, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(LOAD_THREADS):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        import urllib.error
        import urllib.request

        while not self._stop.is_set():
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.stack.port}/api/v1/image/",
                headers={"Authorization": f"ApiKey ops:{self.key}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
                    status, body, retry = resp.status, resp.read(), resp.headers.get("Retry-After")
            except urllib.error.HTTPError as exc:
                status, body, retry = exc.code, exc.read(), exc.headers.get("Retry-After")
            except OSError as exc:
                status, body, retry = 0, repr(exc).encode(), None
            self.answers.append((time.monotonic(), status, body, retry))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def since(self, t: float) -> list[tuple[float, int, object, str | None]]:
        return [a for a in self.answers if a[0] >= t]


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster() as pg:
        yield pg


def test_postgres_outage_gives_503s_then_recovers(cluster: ThrowawayCluster, redis_server_url: str) -> None:
    dsn = cluster.dsn()
    asyncio.run(migrate(dsn))
    redis_url = f"{redis_server_url}/{redis_db('spare')}"
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    stack = Stack(service_env(dsn, redis_url, port), port)
    key = stack.account("ops")
    web = stack.start("web")
    load = Load(stack, key)
    try:
        wait_for(stack.up, 30, "the API")
        load.start()
        wait_for(lambda: sum(1 for a in load.answers if a[1] == 200) >= 20, 20, "answers before the outage")

        cluster.stop()  # returns once the server is down
        stopped = time.monotonic()
        wait_for(lambda: sum(1 for a in load.since(stopped) if a[1] == 503) >= 30, 30, "503s during the outage")
        time.sleep(1.0)

        cluster.start()  # returns once the server accepts connections
        restarted = time.monotonic()
        wait_for(lambda: sum(1 for a in load.since(restarted) if a[1] == 200) >= 20, 30, "200s after the outage")
        recovered = next(a[0] for a in load.since(restarted) if a[1] == 200) - restarted
    finally:
        load.stop()
        stack.stop_all()

    # (a request that started before the shutdown may still end with a 200 just after it)
    during = [a for a in load.answers if stopped + 0.2 <= a[0] < restarted]
    statuses = {a[1] for a in load.answers}
    assert statuses <= {200, 503}, f"only 200 and 503, never a 500 or a dropped connection: {statuses}"
    assert during and {a[1] for a in during} == {503}
    for _, status, body, retry in load.answers:
        if status == 503:
            assert body.startswith(b'{"error":') and b"database" in body and retry == "2"
    assert recovered < 10, f"the API answered 200 again {recovered:.1f} s after Postgres came back"

    output = web.output()
    requests_503 = sum(1 for e in web.events("request.done") if e["status"] == 503)
    assert requests_503 >= 30
    assert len(web.events("database.unavailable")) == 1
    assert len(web.events("database.available")) == 1
    assert web.events("request.unhandled_error") == []
    assert output.count("Traceback") <= 1, "none per request (asyncpg's pool may log one before the outage is known)"
