"""Fair sharing per account with real `registry-sync` processes (SPEC §4): an account that
spreads hanging registrations over many hosts gets no more of a worker than any other
account, so another account's registration still syncs at once."""

from __future__ import annotations

from datetime import datetime

import orjson

from tests.conftest import unique
from tests.support.hanging import hanging_hosts
from tests.support.processes import Service, Stack, wait_for
from tests.support.registry import RegistryServer, push_image

HOSTS, PER_HOST = 30, 10


def consumer_ready_at(worker: Service, queue: str) -> float | None:
    """When the `queue` consumer of `worker` said it was ready (epoch seconds), from its log."""
    for line in worker.output().splitlines():
        if line.startswith("{") and f"{queue}@" in line and "ready" in line:
            event = orjson.loads(line)
            return datetime.fromisoformat(event["timestamp"]).timestamp()
    return None


def test_an_account_spread_over_hanging_hosts_delays_no_other_account(stack: Stack, registry: RegistryServer) -> None:
    """Account B registers 300 images on 30 hosts that accept connections and never answer
    (what wildcard DNS gives an attacker for free); then account A registers an image on a
    healthy registry. The worker starts with B's 300 priority messages ahead of A's in the
    queue, yet A's image is `Success` within 2 s of the priority consumer being ready (with
    shares per host only, A waited 124 s: B's syncs filled the process)."""
    hang = hanging_hosts(HOSTS)
    try:
        stack.env.update(
            INSECURE_REGISTRIES=",".join([registry.host, *(h.host for h in hang)]),
            SYNC_INTERVAL_SECONDS="3600", WORKER_DRAIN_SECONDS="1",
            ACCOUNT_REGISTRATION_LIMIT="1000",  # B registers all 300 at once
        )
        key_a, key_b = stack.account("alice"), stack.account("bob")
        repo = f"{unique('fair')}/app"
        push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
        stack.start("web")
        stack.start("beat")
        wait_for(stack.up, 60, "the API")
        for i in range(HOSTS * PER_HOST):
            status, body = stack.http("POST", "/api/v1/image/", user="bob", key=key_b,
                                      body={"name": f"{hang[i % HOSTS].host}/bob/app{i}"})
            assert status == 201, body
        name = f"{registry.host}/{repo}"
        status, body = stack.http("POST", "/api/v1/image/", user="alice", key=key_a, body={"name": name})
        assert status == 201, body

        worker = stack.start("worker")
        wait_for(lambda: stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key_a)[1]["state"]
                 == "Success", 90, "A's registration to sync")
        ready = wait_for(lambda: consumer_ready_at(worker, "priority"), 10, "the consumer's ready line")
        done = next(e for e in worker.events("sync.done") if e["image"] == name)
        waited = done["finished"] - ready
        hanging = stack.sql("SELECT count(*) FROM images WHERE name LIKE '127.0.0.%' AND lease_owner LIKE 'run:%'")
        handed_back = len(worker.events("sync.host_busy"))
        print(f"\nB's {HOSTS * PER_HOST} images on {HOSTS} hanging hosts queued ahead: A's registration -> "
              f"Success {waited:.2f} s after the priority consumer was ready (its sync started after "
              f"{done['started'] - ready:.2f} s and took {done['ms']:.0f} ms; {hanging} of B's syncs hanging, "
              f"{handed_back} handed back meanwhile)")
        assert hanging >= 1, "B's registries were hanging throughout"
        assert waited < 2
    finally:
        for h in hang:
            h.close()
