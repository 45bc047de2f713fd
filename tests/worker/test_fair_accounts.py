"""Fair sharing per account with real `registry-sync` processes (SPEC §4): an account that
spreads hanging registrations over many hosts gets no more of a worker than any other
account, so another account's registration still syncs at once. (bench/fair_bench.py also
measures the case where B's messages are all queued before a worker starts.)"""

from __future__ import annotations

import time

from tests.conftest import unique
from tests.support.hanging import hanging_hosts
from tests.support.processes import Stack, wait_for
from tests.support.registry import RegistryServer, push_image

HOSTS, PER_HOST = 30, 10


def test_an_account_spread_over_hanging_hosts_delays_no_other_account(stack: Stack, registry: RegistryServer) -> None:
    """Account B registers 300 images on 30 hosts that accept connections and never answer
    (what wildcard DNS gives an attacker for free); then account A registers an image on a
    healthy registry: it is `Success` within 2 s (with shares per host only, A waited 124 s:
    B's syncs filled the worker process and A's message waited behind B's)."""
    hang = hanging_hosts(HOSTS)
    try:
        stack.env.update(
            INSECURE_REGISTRIES=",".join([registry.host, *(h.host for h in hang)]),
            SYNC_INTERVAL_SECONDS="3600", WORKER_DRAIN_SECONDS="1",
            ACCOUNT_REGISTRATION_LIMIT="1000",  # B registers all 300 at once
        )
        key_a, key_b = stack.account("alice"), stack.account("bob")
        repos = [f"{unique('fair')}/app{i}" for i in range(2)]
        for repo in repos:
            push_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)
        stack.start("web")
        worker = stack.start("worker")
        stack.start("beat")
        wait_for(lambda: stack.up() and worker.output().count("ready") >= 2, 90, "API and both consumers")

        def register(user: str, key: str, name: str) -> None:
            status, body = stack.http("POST", "/api/v1/image/", user=user, key=key, body={"name": name})
            assert status == 201, body

        def success(name: str) -> bool:
            return stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key_a)[1]["state"] == "Success"

        warm = f"{registry.host}/{repos[0]}"  # the worker's pool and session are open before
        register("alice", key_a, warm)
        wait_for(lambda: success(warm), 30, "A's first registration")
        for i in range(HOSTS * PER_HOST):
            register("bob", key_b, f"{hang[i % HOSTS].host}/bob/app{i}")

        name = f"{registry.host}/{repos[1]}"
        started = time.monotonic()
        register("alice", key_a, name)
        wait_for(lambda: success(name), 60, "A's registration to sync")
        registered = time.monotonic() - started
        hanging = stack.sql("SELECT count(*) FROM images WHERE name LIKE '127.0.0.%' AND lease_owner LIKE 'run:%'")
        print(f"\nB's {HOSTS * PER_HOST} images on {HOSTS} hanging hosts: A's registration -> Success "
              f"{registered:.2f} s ({hanging} of B's syncs hanging, "
              f"{len(worker.events('sync.host_busy'))} handed back so far)")
        assert hanging >= 1, "B's registries were hanging throughout"
        assert registered < 2
    finally:
        for h in hang:
            h.close()
