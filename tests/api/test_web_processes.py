"""Trust boundaries with real `registry-sync web` processes sharing one Postgres database and
one Redis (SPEC §6): failed-auth throttling counted across processes, the client address
through a trusted proxy only, webhook secrets throttled, per-receiver secrets, no secret in
any log line or metric, and a JSON 400 that echoes nothing for an oversized header."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from core.webhook_auth import sign
from tests.conftest import create_database, unique
from tests.support.processes import Service, Stack, service_env, wait_for
from tests.support.services import free_port, redis_db, worker_index
from tests.webhooks.conftest import fixture_text

LIMIT = 20
SECRET = "default-hook-secret-5b9f0c2d7e"
QUAY_SECRET = "quay-own-secret-81c44e09aa"
DOCKERHUB_SECRET = "dockerhub-own-secret-3d7710f2bc"
ALL_SECRETS = (SECRET, QUAY_SECRET, DOCKERHUB_SECRET)
H = "/api/v1/webhooks"


@dataclass
class Trust:
    stack: Stack
    ports: tuple[int, int]  # two processes that trust 127.0.0.1 as their proxy
    untrusted_port: int  # a third that trusts no proxy on this machine
    services: list[Service]
    key: str  # of the account "victim"

    def get(self, i: int, user: str, key: str, forwarded_for: str, port: int | None = None) -> int:
        status, _ = self.stack.http("GET", "/api/v1/auth/", port=port or self.ports[i % 2], user=user, key=key,
                                    headers={"X-Forwarded-For": forwarded_for})
        return status

    def logs(self) -> str:
        return "".join(svc.output() for svc in self.services)


@pytest.fixture(scope="module")
def trust(postgres_dsn: str, redis_server_url: str) -> Iterator[Trust]:
    dsn = asyncio.run(create_database(postgres_dsn, f"rs_trust_{worker_index()}"))
    redis_url = f"{redis_server_url}/{redis_db('spare')}"
    redis.Redis.from_url(redis_url).flushdb()
    ports = free_port(), free_port()
    env = service_env(
        dsn, redis_url, ports[0], AUTH_CACHE_SECONDS="0", AUTH_FAILURE_LIMIT=str(LIMIT),
        TRUSTED_PROXIES="127.0.0.1", WEBHOOK_SECRET=SECRET, WEBHOOK_SECRET_QUAY=QUAY_SECRET,
        WEBHOOK_SECRET_DOCKERHUB=DOCKERHUB_SECRET,
        # the registry the operator runs: WEBHOOK_SECRET's host for the CNCF, Harbor and build receivers
        TUTUM_REGISTRY_HOST="registry.example.com:5000",
    )
    stack = Stack(env, ports[0])
    untrusted = free_port()
    services = [stack.start("web", "--port", str(p)) for p in ports]
    services.append(stack.start("web", "--port", str(untrusted), TRUSTED_PROXIES="10.0.0.0/8"))
    try:
        for port in (*ports, untrusted):
            wait_for(lambda p=port: stack.up(p), 30, f"the API on port {port}")
        yield Trust(stack, ports, untrusted, services, stack.account("victim"))
    finally:
        stack.stop_all()


def test_failed_keys_on_two_processes_are_counted_together(trust: Trust) -> None:
    """Ten wrong keys on each process from one address: the 21st is throttled on either,
    although neither process alone saw more than the limit."""
    statuses = [trust.get(i, unique("nobody"), "0" * 40, "203.0.113.77") for i in range(LIMIT)]
    assert statuses == [401] * LIMIT
    assert trust.get(0, unique("nobody"), "0" * 40, "203.0.113.77") == 429
    assert trust.get(1, unique("nobody"), "0" * 40, "203.0.113.77") == 429


def test_a_spray_from_many_addresses_is_throttled_and_the_victim_is_served(trust: Trust) -> None:
    """300 wrong keys for one account from 20 addresses (15 each, under the per-address
    limit) through the proxy, spread over both processes: the account name's count stops
    them; the account's real key is served throughout, from any of those addresses."""
    addresses = [f"198.51.{i}.9" for i in range(20)]
    statuses = [trust.get(i, "victim", f"{i:040d}", addresses[i % 20]) for i in range(300)]
    assert statuses.count(401) == LIMIT and statuses.count(429) == 300 - LIMIT
    for i, address in enumerate(addresses[:4]):
        assert trust.get(i, "victim", trust.key, address) == 200


def test_a_valid_key_from_a_throttled_address_is_served(trust: Trust) -> None:
    """A neighbour behind the same NAT address sprays wrong keys; the user is not refused."""
    nat = "192.0.2.50"
    for i in range(LIMIT + 5):
        trust.get(i, unique("intruder"), "0" * 40, nat)
    assert trust.get(0, unique("intruder"), "0" * 40, nat) == 429
    assert trust.get(0, "victim", trust.key, nat) == 200
    assert trust.get(1, "victim", trust.key, nat) == 200


def test_an_untrusted_peer_cannot_choose_its_address(trust: Trust) -> None:
    """The third process does not trust 127.0.0.1: the X-Forwarded-For a client sends is
    ignored, so a new address per request does not escape the count of its real one."""
    statuses = [trust.get(0, unique("u"), "0" * 40, f"192.0.2.{i}", port=trust.untrusted_port)
                for i in range(LIMIT + 2)]
    assert statuses == [401] * LIMIT + [429, 429]
    assert trust.get(0, "victim", trust.key, "192.0.2.1", port=trust.untrusted_port) == 200


def test_wrong_webhook_secrets_are_throttled(trust: Trust) -> None:
    """(Harbor: no other test here sends it a wrong secret, so its count starts at 0.)"""
    body = json.loads(fixture_text("harbor_push.json", unique("thr")))
    statuses = [
        trust.stack.http("POST", f"{H}/harbor/", port=trust.ports[i % 2], body=body,
                         headers={"X-Forwarded-For": "198.18.50.5", "Authorization": f"Bearer wrong-{i}"})[0]
        for i in range(LIMIT + 2)
    ]
    assert statuses == [401] * LIMIT + [429, 429]
    status, answer = trust.stack.http("POST", f"{H}/harbor/", body=body,
                                      headers={"X-Forwarded-For": "198.18.50.5", "Authorization": f"Bearer {SECRET}"})
    assert status == 202, answer


def test_each_receiver_takes_only_its_own_secret(trust: Trust) -> None:
    ns = unique("own")
    quay = json.loads(fixture_text("quay_repo_push.json", ns))
    hub = json.loads(fixture_text("dockerhub_push.json", ns))
    headers = {"X-Forwarded-For": "198.18.60.6"}
    assert trust.stack.http("POST", f"{H}/quay/{SECRET}/", body=quay, headers=headers)[0] == 401
    assert trust.stack.http("POST", f"{H}/quay/{DOCKERHUB_SECRET}/", body=quay, headers=headers)[0] == 401
    assert trust.stack.http("POST", f"{H}/dockerhub/{QUAY_SECRET}/", body=hub, headers=headers)[0] == 401
    assert trust.stack.http("POST", f"{H}/dockerhub/{SECRET}/", body=hub, headers=headers)[0] == 401
    assert trust.stack.http("POST", f"{H}/dockerhub/{DOCKERHUB_SECRET}/", body=hub, headers=headers)[0] == 202
    assert trust.stack.http("POST", f"{H}/quay/{QUAY_SECRET}/", body=quay, headers=headers)[0] == 202
    # the receivers without their own secret take WEBHOOK_SECRET, and not the others'
    registry = json.loads(fixture_text("registry_push.json", ns))
    for secret, status in ((QUAY_SECRET, 401), (SECRET, 202)):
        answer = trust.stack.http("POST", f"{H}/registry/", body=registry,
                                  headers={**headers, "Authorization": f"Bearer {secret}"})
        assert answer[0] == status, answer


def test_no_secret_in_logs_or_metrics_after_deliveries(trust: Trust) -> None:
    ns = unique("leak")
    headers = {"X-Forwarded-For": "198.18.70.7"}
    deliveries = [
        (f"{H}/dockerhub/{DOCKERHUB_SECRET}/", fixture_text("dockerhub_push.json", ns), {}),
        (f"{H}/dockerhub/{DOCKERHUB_SECRET}x/", fixture_text("dockerhub_push.json", ns), {}),  # a near miss
        (f"{H}/quay/{QUAY_SECRET}/?event=build_start", fixture_text("quay_build_start.json", ns), {}),
        (f"{H}/quay/{SECRET}/", fixture_text("quay_repo_push.json", ns), {}),  # another receiver's
        (f"{H}/quay/{QUAY_SECRET}/extra/", "{}", {}),  # no such route
        (f"{H}/{SECRET}/", "{}", {}),  # the receiver name forgotten
        (f"{H}/registry/", fixture_text("registry_push.json", ns), {"Authorization": f"Bearer {SECRET}"}),
        (f"{H}/registry/", fixture_text("registry_push.json", ns), {"Authorization": f"Bearer {QUAY_SECRET}"}),
        (f"{H}/build/", "{not json", {"X-Signature-256": sign(b"{not json", SECRET)}),
        (f"{H}/quay/{QUAY_SECRET}/", "not json at all", {}),  # malformed, after a good secret
    ]
    statuses = []
    for i, (path, body, extra) in enumerate(deliveries):
        statuses.append(_post(trust.ports[i % 2], path, body, {**headers, **extra}))
    assert statuses == [202, 401, 202, 401, 404, 404, 202, 401, 400, 400]
    for port in trust.ports:
        status, text = trust.stack.http("GET", "/metrics", port=port)
        assert status == 200
        for secret in ALL_SECRETS:
            assert secret not in text
    logs = trust.logs()
    assert f"{H}/quay/[redacted]/" in logs and f"{H}/dockerhub/[redacted]/" in logs
    for secret in ALL_SECRETS:
        assert secret not in logs


def test_an_oversized_header_gets_a_json_400_that_echoes_nothing(trust: Trust) -> None:
    marker = "SECRETMARKER"
    for value in (marker * 800, "ApiKey victim:" + marker * 800):  # ~9.6 KB, over the 8 KB limit
        conn = http.client.HTTPConnection("127.0.0.1", trust.ports[0], timeout=10)
        try:
            conn.putrequest("GET", "/api/v1/auth/")
            conn.putheader("X-Big" if value.startswith(marker) else "Authorization", value)
            conn.endheaders()
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        assert resp.status == 400
        assert resp.getheader("Content-Type", "").startswith("application/json")
        assert "longer than 8190 bytes" in json.loads(raw)["error"]
        assert marker.encode() not in raw
    assert trust.stack.up(trust.ports[0])  # the process still serves
    logs = trust.logs()
    assert marker not in logs and "request.malformed" in logs and "Traceback" not in logs


def _post(port: int, path: str, body: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body.encode(), headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()
