"""End to end with real processes: `registry-sync web`, `worker` (two, for the crash test)
and `beat` against the real registry, each end-to-end scenario in a database of its own."""

from __future__ import annotations

import itertools
import os
import re
import signal

import redis

from tests.conftest import unique
from tests.support.fake_registry import FakeRegistry
from tests.support.processes import Service, Stack, wait_for
from tests.support.registry import RegistryServer, delete_tag, push_image


def test_register_then_polling_follows_pushes_and_deletes(stack: Stack, registry: RegistryServer) -> None:
    key = stack.account("alice")
    repo = f"{unique('e2e')}/app"
    push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    push_image(registry.url, repo, "v2", {"created": "2024-02-01T00:00:00Z"})
    web = stack.start("web")
    worker = stack.start("worker")
    stack.start("beat")
    wait_for(lambda: stack.up(), 60, "the API to answer")
    name = f"{registry.host}/{repo}"

    status, image = stack.http("POST", "/api/v1/image/", user="alice", key=key, body={"name": name})
    assert status == 201 and image["state"] == "Empty", image

    def synced() -> dict | None:
        _, img = stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key)
        return img if img["state"] == "Success" else None

    image = wait_for(synced, 20, "the first sync")  # type: ignore[assignment]
    assert [t.rsplit("/", 2)[-2] for t in image["tags"]] == ["v1", "v2"]
    assert image["last_build_date"] == "Thu, 1 Feb 2024 00:00:00 +0000"

    push_image(registry.url, repo, "v3", {"created": "2024-03-01T00:00:00Z"})
    delete_tag(registry.url, repo, "v1")

    def changed() -> bool:
        _, img = stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key)
        return [t.rsplit("/", 2)[-2] for t in img["tags"]] == ["v2", "v3"]

    wait_for(changed, 20, "the scheduled sync to see the new and the deleted tag")
    _, image = stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key)
    assert image["last_build_date"] == "Fri, 1 Mar 2024 00:00:00 +0000"
    assert web.events("request.done"), "the API logs one JSON line per request"
    assert all("request_id" in e for e in web.events("request.done"))
    synced_lines = worker.events("sync.done")
    assert synced_lines and all(e.get("task_id") for e in synced_lines), "worker lines carry the task id"


def test_killing_a_worker_mid_batch_loses_nothing(stack: Stack, registry: RegistryServer) -> None:
    n = 200
    prefix = unique("crash")
    for i in range(n):
        push_image(registry.url, f"{prefix}/app{i}", "latest", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    stack.env.update(SYNC_INTERVAL_SECONDS="3600", LEASE_SECONDS="3", TASK_BATCH_SIZE="10",
                     REGISTRY_CONCURRENCY="2")
    stack.sql(
        "INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", registry.host)
    stack.sql(
        "INSERT INTO images (name, registry_id, repository, next_sync_at)"
        " SELECT $1 || '/' || $2 || '/app' || i, r.id, $2 || '/app' || i, now() + interval '1 hour'"
        " FROM generate_series(0, $3 - 1) AS i, registries AS r WHERE r.host = $1",
        registry.host, prefix, n,
    )
    workers = [stack.start("worker", "--queues", "routine"), stack.start("worker", "--queues", "routine")]
    wait_for(lambda: all("ready" in w.output() for w in workers), 90, "both workers to be ready")
    stack.start("beat")
    stack.sql("UPDATE images SET next_sync_at = now()")
    synced = "SELECT count(*) FROM images WHERE last_synced_at IS NOT NULL"

    # Kill the worker that holds run leases right now, i.e. in the middle of its batch.
    def victim() -> Service | None:
        if stack.sql(synced) < 10:
            return None
        owners = stack.sql("SELECT array_agg(lease_owner) FROM images WHERE lease_owner LIKE 'run:%'") or []
        for w in workers:
            children = _children(w.proc.pid)
            if any(f":{pid}:" in o for o in owners for pid in children):
                return w
        return None

    doomed: Service = wait_for(victim, 60, "a worker in the middle of a batch", interval=0.01)  # type: ignore[assignment]
    doomed.kill()
    assert stack.sql(synced) < n, "the kill came too late to mean anything"
    wait_for(lambda: stack.sql(synced) == n, 90, "every image to be synced")
    wait_for(lambda: stack.sql("SELECT count(*) FROM images WHERE lease_owner IS NOT NULL") == 0,
             30, "every lease to be released")
    assert stack.sql("SELECT count(*) FROM images WHERE state <> 'Success'") == 0
    # No image was synced by two workers at once: every completed sync logged its interval.
    spans: dict[int, list[tuple[float, float]]] = {}
    for w in workers:
        for e in w.events("sync.done"):
            spans.setdefault(e["image_id"], []).append((e["started"], e["finished"]))
    # (a sync the killed worker committed just before the kill may lack its log line)
    assert len(spans) >= n // 2
    for image_id, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"image {image_id} synced twice at once: {intervals}"




def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def test_flushing_redis_loses_no_scheduled_work(stack: Stack, registry: RegistryServer) -> None:
    """Beat claims and queues; Redis loses the messages before any worker runs; the claims
    lapse and beat queues the images again from Postgres."""
    n = 30
    prefix = unique("flush")
    for i in range(n):
        push_image(registry.url, f"{prefix}/app{i}", "latest", {"created": "2024-01-01T00:00:00Z"}, layers=0)
    stack.env.update(SYNC_INTERVAL_SECONDS="3600", LEASE_SECONDS="2")
    stack.sql("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", registry.host)
    stack.sql(
        "INSERT INTO images (name, registry_id, repository)"
        " SELECT $1 || '/' || $2 || '/app' || i, r.id, $2 || '/app' || i"
        " FROM generate_series(0, $3 - 1) AS i, registries AS r WHERE r.host = $1",
        registry.host, prefix, n,
    )
    beat = stack.start("beat")
    claimed = "SELECT count(*) FROM images WHERE lease_owner LIKE 'claim:%'"
    wait_for(lambda: stack.sql(claimed) == n, 20, "beat to claim and queue every image")
    queued = redis.Redis.from_url(stack.env["REDIS_URL"])
    wait_for(lambda: queued.llen("routine") > 0, 10, "the batches in Redis")
    queued.flushdb()
    beat.stop()  # no new claims while the messages are gone
    stack.start("worker", "--queues", "routine")
    stack.start("beat")
    wait_for(lambda: stack.sql("SELECT count(*) FROM images WHERE state = 'Success'") == n,
             40, "every image synced after its claim lapsed")


def test_routine_backlog_does_not_delay_a_registration(
    stack: Stack, registry: RegistryServer, fake_registry: FakeRegistry
) -> None:
    """The routine consumer is busy with slow registries; a new registration goes through the
    priority consumer and is synced at once all the same.

    With one request at a time per host and 1 s per answer, each routine batch holds its
    thread for about 20 s: had priority work shared those threads, the registration would
    wait that long. The 15 s bound is only a timeout; it is met in about a second.
    """
    stack.env.update(SYNC_INTERVAL_SECONDS="3600", TASK_BATCH_SIZE="5", REGISTRY_CONCURRENCY="1",
                     INSECURE_REGISTRIES=f"{registry.host},{fake_registry.host}")
    stack.sql("INSERT INTO registries (host, name, is_ssl) VALUES ($1, $1, false)", fake_registry.host)
    stack.sql(
        "INSERT INTO images (name, registry_id, repository)"
        " SELECT $1 || '/slow/app' || i, r.id, 'slow/app' || i"
        " FROM generate_series(0, 59) AS i, registries AS r WHERE r.host = $1",
        fake_registry.host,
    )
    key = stack.account("carol")
    repo = f"{unique('urgent')}/app"
    push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    stack.start("web")
    worker = stack.start("worker")
    stack.start("beat")
    wait_for(lambda: stack.up() and worker.output().count("ready") >= 2, 90, "API and both consumers")
    busy = "SELECT count(*) FROM images WHERE lease_owner LIKE 'run:routine%'"
    wait_for(lambda: stack.sql(busy) >= 10, 20, "the routine consumer to be busy with slow images")

    name = f"{registry.host}/{repo}"
    status, _ = stack.http("POST", "/api/v1/image/", user="carol", key=key, body={"name": name})
    assert status == 201

    def synced() -> bool:
        _, img = stack.http("GET", f"/api/v1/image/{name}/", user="carol", key=key)
        return img["state"] == "Success"

    wait_for(synced, 15, "the registration's sync")
    assert stack.sql(busy) > 0, "the routine backlog was still being worked on"
    assert stack.sql(
        "SELECT count(*) FROM images WHERE name LIKE $1 AND last_synced_at IS NULL", f"{fake_registry.host}/slow/%"
    ) > 0, "the routine backlog was not yet done when the registration was synced"
    worker.kill()  # its batches would take minutes to finish; nothing here needs them


def test_a_consumer_that_dies_is_started_again(stack: Stack, registry: RegistryServer) -> None:
    """kill -9 of the priority consumer alone: the worker process starts a new one, which
    then syncs a registration."""
    key = stack.account("dave")
    repo = f"{unique('phoenix')}/app"
    push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    stack.start("web")
    worker = stack.start("worker")
    wait_for(lambda: stack.up() and worker.output().count("ready") >= 2, 90, "API and both consumers")
    consumers = _children(worker.proc.pid)  # the two consumers (and multiprocessing's resource tracker)
    # Celery names a consumer `<queue>@<host>.<pid>` (worker/main.py run_consumer)
    ready = re.findall(r"priority@\S+\.(\d+) ready", worker.output())
    priority = int(ready[-1])
    assert priority in consumers
    os.kill(priority, signal.SIGKILL)
    wait_for(lambda: worker.events("worker.consumer_exited"), 20, "the worker to notice")
    wait_for(lambda: worker.output().count("ready") >= 3, 90, "the new consumer")
    assert worker.proc.poll() is None
    name = f"{registry.host}/{repo}"
    status, _ = stack.http("POST", "/api/v1/image/", user="dave", key=key, body={"name": name})
    assert status == 201

    def synced() -> bool:
        return stack.http("GET", f"/api/v1/image/{name}/", user="dave", key=key)[1]["state"] == "Success"

    wait_for(synced, 30, "the registration synced by the new priority consumer")

