"""The scheduler across outages: two `registry-sync beat` processes on a throwaway Postgres
cluster that is restarted (and a Redis that is restarted): exactly one is active at any
time and the standby survives. And a backlog in the routine queue stays bounded."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis

from core.db import apply_schema
from tests.conftest import create_database, unique
from tests.support.fake_registry import FakeRegistry
from tests.support.pgcluster import ThrowawayCluster
from tests.support.processes import Service, Stack, service_env, wait_for
from tests.support.services import free_port, redis_db, reserved_port, start_redis_server, worker_index


@pytest.fixture
def outage_stack() -> Iterator[tuple[Stack, ThrowawayCluster, list[subprocess.Popen[bytes]], int]]:
    redis_port = reserved_port()
    procs = [start_redis_server(redis_port)]
    with ThrowawayCluster() as pg:

        async def schema() -> None:
            conn = await asyncpg.connect(pg.dsn())
            try:
                await apply_schema(conn)
            finally:
                await conn.close()

        asyncio.run(schema())
        env = service_env(pg.dsn(), f"redis://127.0.0.1:{redis_port}/0", BEAT_INTERVAL_SECONDS="0.2",
                          LEASE_SECONDS="5")
        st = Stack(env, free_port())
        try:
            yield st, pg, procs, redis_port
        finally:
            st.stop_all()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(10)


def _active_spans(svc: Service) -> list[tuple[datetime, datetime | None]]:
    """[active from, to) of one scheduler, from its beat.active / beat.inactive lines."""
    spans: list[tuple[datetime, datetime | None]] = []
    start: datetime | None = None
    lines = svc.events("beat.active") + svc.events("beat.inactive") + svc.events("beat.stopped")
    for line in sorted(lines, key=lambda e: e["timestamp"]):
        at = datetime.fromisoformat(line["timestamp"])
        if line["event"] == "beat.active":
            start = at
        elif start is not None:
            spans.append((start, at))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans


def _active(svc: Service) -> bool:
    lines = sorted(svc.events("beat.active") + svc.events("beat.inactive"), key=lambda e: e["timestamp"])
    return bool(lines) and lines[-1]["event"] == "beat.active"


def test_one_scheduler_is_active_across_postgres_and_redis_restarts(outage_stack) -> None:  # type: ignore[no-untyped-def]
    st, pg, redis_procs, redis_port = outage_stack
    st.sql("INSERT INTO registries (host, name) VALUES ('beat.test', 'beat.test')")
    a = st.start("beat")
    wait_for(lambda: _active(a), 30, "the first scheduler to be active")
    b = st.start("beat")
    wait_for(lambda: b.events("beat.standby"), 30, "the second one to wait as a standby")

    # 1. the active scheduler's lock session is killed while Postgres stays up: it notices at
    # once, and one of the two (whichever asks first) holds the lock again
    st.sql("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7305002")
    wait_for(lambda: a.events("beat.inactive"), 10, "the active scheduler to notice its lost lock")
    wait_for(lambda: _active(a) != _active(b), 10, "one scheduler active again")

    # 2. Postgres restarts: both lose their connections; afterwards exactly one is active
    pg.stop()
    wait_for(lambda: not _active(a) and not _active(b), 10, "both to notice the lost lock")
    pg.start()
    wait_for(lambda: _active(a) != _active(b), 30, "one scheduler active again")

    # 3. Redis restarts: the active one stays active and queues again once Redis is back
    redis_procs[0].terminate()
    redis_procs[0].wait(10)
    st.sql("INSERT INTO images (name, registry_id, repository) SELECT 'beat.test/x/app' || i, id, 'x/app' || i"
           " FROM registries, generate_series(1, 3) AS i")
    redis_procs.append(start_redis_server(redis_port))
    queue = redis.Redis(port=redis_port)
    wait_for(lambda: queue.llen("routine") > 0, 30, "the scheduler to queue after the Redis restart")

    assert a.proc.poll() is None and b.proc.poll() is None, "both schedulers survived every outage"
    assert _active(a) != _active(b)
    never = datetime.max.replace(tzinfo=UTC)
    for x, y in itertools.product(_active_spans(a), _active_spans(b)):
        assert (x[1] or never) <= y[0] or (y[1] or never) <= x[0], f"two schedulers active at once: {x} and {y}"
    fmt = "%H:%M:%S.%f"
    for name, svc in (("A", a), ("B", b)):
        print(f"\n{name} active: " + ", ".join(
            f"{s.strftime(fmt)[:-3]}-{e.strftime(fmt)[:-3] if e else 'now'}" for s, e in _active_spans(svc)))
    assert not [ln for s in (a, b) for ln in s.output().splitlines() if "Traceback" in ln]


@pytest.fixture
def backlog_stack(postgres_dsn: str, redis_server_url: str, fake_registry: FakeRegistry) -> Iterator[Stack]:
    dsn = asyncio.run(create_database(postgres_dsn, f"rs_backlog_{worker_index()}"))
    redis_url = f"{redis_server_url}/{redis_db('e2e')}"
    redis.Redis.from_url(redis_url).flushdb()
    env = service_env(
        dsn, redis_url, INSECURE_REGISTRIES=fake_registry.host, BEAT_INTERVAL_SECONDS="0.2",
        SYNC_INTERVAL_SECONDS="3600", LEASE_SECONDS="3", BEAT_QUEUE_MAX="3", TASK_BATCH_SIZE="5",
        # One account (the catalog) and one registry host are all it syncs: their shares are
        # the whole process and the registry has no budget, so no sync is handed back (and
        # queued again) for being over a share or waiting for the budget: what is tested is
        # that the claims themselves breed no duplicates. (With the default shares the host
        # holds 16 syncs at once, and on a loaded machine the others waited past
        # REGISTRY_WAIT_MAX_SECONDS and were handed back: 101 queued for 100.)
        ACCOUNT_SHARE="1", HOST_SHARE="1", REGISTRY_CONCURRENCY="64",
        REGISTRY_LIMITS='{"*": {"concurrency": 0, "rate": 0}}',
    )
    st = Stack(env, free_port())
    yield st
    st.stop_all()


def test_a_routine_backlog_stays_bounded_and_breeds_no_duplicates(
    backlog_stack: Stack, fake_registry: FakeRegistry
) -> None:
    """100 due images, nobody consuming: beat queues BEAT_QUEUE_MAX batches and no more, and
    keeps their claims alive for several lease lengths. Then a worker drains the backlog:
    every image is queued and synced exactly once."""
    st, n = backlog_stack, 100
    st.sql("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", fake_registry.host)
    prefix = unique("backlog")
    st.sql("INSERT INTO images (name, registry_id, repository) SELECT $1 || '/ok/' || $2 || i, id, 'ok/' || $2 || i"
           " FROM registries, generate_series(1, $3) AS i WHERE host = $1", fake_registry.host, prefix, n)
    queue = redis.Redis.from_url(st.env["REDIS_URL"])
    beat = st.start("beat")
    wait_for(lambda: queue.llen("routine") >= 3, 20, "beat to fill the queue to its bound")
    depths = []
    # 8 s: more than two lease lengths (3 s: a claim is renewed once 1.5 s of it are left, so a
    # beat stalled ~1 s by a loaded machine still renews in time)
    for _ in range(40):
        depths.append(queue.llen("routine"))
        wait_for(lambda: True, 1, "")
        asyncio.run(asyncio.sleep(0.2))
    assert max(depths) == 3, depths
    assert st.sql("SELECT count(*) FROM images WHERE lease_owner LIKE 'claim:%' AND lease_until > now()") == 15
    assert not beat.events("beat.leases_lapsed"), "queued claims were kept alive"

    worker = st.start("worker", "--queues", "routine")
    wait_for(lambda: st.sql("SELECT count(*) FROM images WHERE state = 'Success'") == n, 90, "the backlog")
    queued = sum(e["images"] for e in beat.events("beat.queued"))
    synced = [e["image_id"] for e in worker.events("sync.done")]
    print(f"\nqueue depth while nobody consumed: max {max(depths)}; images queued {queued}, syncs {len(synced)}")
    assert not worker.events("sync.host_busy"), "no sync was handed back"
    assert queued == n, "every image was queued once"
    assert sorted(synced) == sorted(set(synced)) and len(synced) == n, "and synced once"
