"""Operations with real processes: metrics summed over several processes per host, and
SIGTERM during work (SPEC §4, §7): the API finishes its in-flight request, a worker finishes
its sync, the scheduler leaves no lock and no unqueued claim behind."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from tests.conftest import create_database, unique
from tests.ops.test_metrics import samples, value
from tests.support.fake_registry import FakeRegistry
from tests.support.processes import Stack, service_env, wait_for
from tests.support.registry import RegistryServer, push_image
from tests.support.services import free_port, redis_db, worker_index
from worker.scheduler import BEAT_LOCK

Ops = Stack  # the name these tests use


@pytest.fixture
def ops(postgres_dsn: str, redis_server_url: str) -> Iterator[Ops]:
    """A database and a Redis database of their own; the services are stopped afterwards."""
    dsn = asyncio.run(create_database(postgres_dsn, f"rs_ops_{worker_index()}"))
    redis_url = f"{redis_server_url}/{redis_db('ops')}"
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = service_env(dsn, redis_url, port, BEAT_INTERVAL_SECONDS="0.2", SYNC_INTERVAL_SECONDS="3600")
    st = Ops(env, port)
    yield st
    st.stop_all()


def scrape(st: Ops, port: int | None = None) -> dict:
    status, text = st.http("GET", "/metrics", port=port)
    assert status == 200, text
    return samples(text)


def test_web_with_two_processes_reports_the_sum_from_either(ops: Ops) -> None:
    web = ops.start("web", "--workers", "2")
    wait_for(ops.up, 30, "both API processes")
    wait_for(lambda: len(_children(web.proc.pid)) >= 2, 10, "two API processes")
    n = 24
    for _ in range(n):  # a new connection each: SO_REUSEPORT spreads them over both processes
        assert ops.http("GET", "/readyz")[0] == 200
    label = {"method": "GET", "route": "/readyz", "status": "200"}
    # every scrape, whichever process answers it, reports the requests of both
    for _ in range(6):
        assert value(scrape(ops), "registry_sync_http_requests_total", **label) == n
    assert web.stop() == 0


def test_worker_metrics_are_scrapeable_with_two_consumer_processes(
    ops: Ops, registry: RegistryServer, tmp_path: Path
) -> None:
    metrics_port = free_port()
    ops.env["INSECURE_REGISTRIES"] = registry.host
    key = ops.account("ops")
    repos = [f"{unique('wm')}/app", f"{unique('wm')}/app"]
    for repo in repos:
        push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    ops.start("web")
    worker = ops.start("worker", METRICS_PORT=str(metrics_port), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    wait_for(ops.up, 30, "the API")
    wait_for(lambda: ops.up(metrics_port, "/"), 30, "the worker's metrics endpoint")
    wait_for(lambda: len(worker.events("runtime.started")) >= 2, 30, "both consumers")
    # one image through the priority queue (a registration), one through the routine queue (beat)
    status, _ = ops.http("POST", "/api/v1/image/", user="ops", key=key, body={"name": f"{registry.host}/{repos[0]}"})
    assert status == 201
    ops.sql("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false) ON CONFLICT DO NOTHING",
            registry.host)
    ops.sql("INSERT INTO images (name, registry_id, repository) SELECT $1 || '/' || $2, id, $2 "
            "FROM registries WHERE host = $1", registry.host, repos[1])
    ops.start("beat")
    wait_for(lambda: ops.sql("SELECT count(*) FROM images WHERE last_synced_at IS NOT NULL") == 2,
             30, "both syncs")

    def both_counted() -> dict | None:
        scraped = scrape(ops, metrics_port)
        return scraped if value(scraped, "registry_sync_syncs_total", outcome="synced") == 2 else None

    scraped: dict = wait_for(both_counted, 10, "the sum of both consumers' syncs")  # type: ignore[assignment]
    assert value(scraped, "registry_sync_sync_duration_seconds_count", outcome="synced") == 2
    assert value(scraped, "registry_sync_registry_requests_total", registry=registry.host, status="200") >= 4
    writers = {p.name.rsplit("_", 1)[-1] for p in tmp_path.glob("*.db")}
    assert len(writers) >= 2, f"metric files of both consumer processes: {writers}"
    health = ops.start("worker-health", "--timeout", "3")
    assert health.proc.wait(20) == 0, health.output()  # the liveness probe: both consumers answer
    assert json.loads(health.output().strip().splitlines()[-1])["consumers"] == {"priority": True, "routine": True}
    assert worker.stop() == 0
    health = ops.start("worker-health", "--timeout", "1")
    assert health.proc.wait(20) == 1, "no consumer answers once the worker is gone"


def test_sigterm_lets_the_api_finish_an_in_flight_request(ops: Ops) -> None:
    key = ops.account("slow")
    web = ops.start("web")
    wait_for(ops.up, 30, "the API")
    name = f"127.0.0.1:9/{unique('slow')}/app"  # a literal: registration resolves names
    assert ops.http("POST", "/api/v1/image/", user="slow", key=key, body={"name": name})[0] == 201
    answer: dict[str, Any] = {}

    async def hold_the_row_then_release() -> None:
        # A transaction holds the image's row lock: the PATCH below waits in Postgres.
        conn = await asyncpg.connect(ops.env["DATABASE_URL"])
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM images WHERE name = $1 FOR UPDATE", name)

            def patch() -> None:
                answer["reply"] = ops.http("PATCH", f"/api/v1/image/{name}/", user="slow", key=key,
                                           body={"description": "finished after SIGTERM"})

            thread = threading.Thread(target=patch)
            thread.start()
            waiting = ("SELECT count(*) FROM pg_stat_activity"
                       " WHERE wait_event_type = 'Lock' AND datname = current_database()")
            deadline = time.monotonic() + 10
            while await conn.fetchval(waiting) == 0:
                assert time.monotonic() < deadline, "the PATCH never reached the lock"
                await asyncio.sleep(0.05)
            web.proc.terminate()  # SIGTERM while the request is in flight
            await asyncio.to_thread(wait_for, lambda: not ops.up(), 10, "the API to stop accepting")
            assert web.proc.poll() is None, "the process waits for its in-flight request"
            await tx.commit()
            await asyncio.to_thread(thread.join, 20)
        finally:
            await conn.close()

    asyncio.run(hold_the_row_then_release())
    status, body = answer["reply"]
    assert status == 200 and body["description"] == "finished after SIGTERM"
    assert web.proc.wait(20) == 0
    assert ops.sql("SELECT description FROM images WHERE name = $1", name) == "finished after SIGTERM"


def test_sigterm_lets_a_worker_finish_its_sync_and_beat_leave_nothing_behind(
    ops: Ops, fake_registry: FakeRegistry
) -> None:
    ops.env["INSECURE_REGISTRIES"] = fake_registry.host
    repo = f"slow/{unique('term')}"  # every registry answer takes fake_registry.slow_seconds
    ops.sql("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", fake_registry.host)
    ops.sql("INSERT INTO images (name, registry_id, repository) SELECT $1 || '/' || $2, id, $2 "
            "FROM registries WHERE host = $1", fake_registry.host, repo)
    worker = ops.start("worker", "--queues", "routine")
    beat = ops.start("beat")
    wait_for(lambda: ops.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'run:%'") == 1,
             30, "the sync to start")
    worker.proc.terminate()
    beat.proc.terminate()
    assert beat.proc.wait(10) == 0
    assert worker.proc.wait(30) == 0, worker.output()[-2000:]
    assert worker.events("sync.done"), "the sync in progress was finished, not dropped"
    assert ops.sql("SELECT last_synced_at IS NOT NULL AND lease_owner IS NULL FROM images") is True
    assert ops.sql("SELECT state FROM images") == "Success"
    locks = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1"
             " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    assert ops.sql(locks, BEAT_LOCK) == 0, "beat released its singleton lock"
    # any claim beat made is in the queue for a worker: no claimed image waits for nothing
    claims = ops.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'claim:%'")
    assert claims <= redis.Redis.from_url(ops.env["REDIS_URL"]).llen("routine")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
