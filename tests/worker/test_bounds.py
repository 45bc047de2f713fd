"""Hostile registries against a real `registry-sync worker`: an endless tag list, oversized
manifests, and 50,000 tags whose manifests never answer. The worker's processes stay small,
every sync ends with a clear error, and no lease stays held.

Only the command and the database are observed (not how the worker runs its tasks): the
memory of every process under `registry-sync worker`, from /proc/<pid>/status.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import create_database, unique
from tests.support.fake_registry import FakeRegistry
from tests.support.processes import Stack, rss_mb, service_env, wait_for
from tests.support.services import free_port, redis_db, worker_index

RSS_BOUND_MB = 250  # per process: an idle consumer is ~80 MB here; unbounded, one reached 1.5 GB


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


class RssWatch:
    """Samples the RSS of every process under `pid` until stopped; keeps each one's peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for child in descendants(self.pid):
                self.peaks[child] = max(self.peaks.get(child, 0.0), rss_mb(child))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeRegistry]]:
    """One fake registry per behaviour: each is its own host, as hostile registries are."""
    started = {kind: FakeRegistry().start() for kind in ("endless", "huge", "hang")}
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@pytest.fixture
def stack(postgres_dsn: str, redis_server_url: str, fakes: dict[str, FakeRegistry]) -> Iterator[Stack]:
    dsn = asyncio.run(create_database(postgres_dsn, f"rs_bounds_{worker_index()}"))
    # the end-to-end area's Redis database: one xdist worker runs one test at a time
    redis_url = f"{redis_server_url}/{redis_db('e2e')}"
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = service_env(
        dsn, redis_url, port, INSECURE_REGISTRIES=",".join(f.host for f in fakes.values()),
        REGISTRY_TIMEOUT_SECONDS="2", SYNC_DEADLINE_SECONDS="10", MAX_TAG_PAGES="10",
        LEASE_SECONDS="6", SYNC_INTERVAL_SECONDS="3600", SYNC_BACKOFF_BASE_SECONDS="3600",
    )
    st = Stack(env, port)
    yield st
    st.stop_all()


def test_hostile_registries_stay_within_memory_and_time(stack: Stack, fakes: dict[str, FakeRegistry]) -> None:
    key = stack.account("mallory")
    stack.start("web")
    worker = stack.start("worker")
    wait_for(stack.up, 60, "the API to answer")
    names = {kind: f"{fake.host}/{kind}/{unique('r')}" for kind, fake in fakes.items()}
    images = "(SELECT id FROM images WHERE name = ANY ($1::text[]))"
    with RssWatch(worker.proc.pid) as watch:
        started = time.monotonic()
        for name in names.values():
            status, body = stack.http("POST", "/api/v1/image/", user="mallory", key=key, body={"name": name})
            assert status == 201, body
        wait_for(
            lambda: stack.sql(
                f"SELECT count(*) FROM images WHERE id IN {images} AND lease_owner IS NULL"
                " AND (last_synced_at IS NOT NULL OR sync_error IS NOT NULL)", list(names.values())) == 3,
            120, "every sync to end",
        )
        elapsed = time.monotonic() - started
        time.sleep(6 + 1)  # a lease still renewed by a lingering sync would show by now
    assert stack.sql("SELECT count(*) FROM images WHERE lease_owner IS NOT NULL") == 0

    def status(kind: str) -> dict:
        code, body = stack.http("GET", f"/api/v1/image/{names[kind]}/sync/", user="mallory", key=key)
        assert code == 200, body
        return body

    endless, huge, hang = status("endless"), status("huge"), status("hang")
    assert endless["error"].startswith("RegistryProtocolError: ")
    assert "the tag list goes on for more than 10 pages" in endless["error"]
    assert hang["error"].startswith("SyncDeadlineError: the sync did not finish within SYNC_DEADLINE_SECONDS=10s")
    # oversized manifests are the tags' problem, not the image's
    assert huge["error"] is None and huge["tag_issue_count"] == 50
    assert all("answer larger than 4194304 bytes" in i["error"] for i in huge["tag_issues"])

    peaks = sorted(watch.peaks.values(), reverse=True)
    print(f"\nhostile registries: all syncs ended in {elapsed:.1f} s; peak RSS per worker process "
          f"(MB): {', '.join(f'{p:.0f}' for p in peaks)}")
    assert peaks and peaks[0] < RSS_BOUND_MB, peaks
