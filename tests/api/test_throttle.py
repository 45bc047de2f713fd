"""Failed-authentication throttling (api/throttle.py, SPEC §6), in process: the limits per
name, address and network, a correct key always served, the client address through trusted
proxies only, webhook secrets, and the fallback when Redis is down. (Several real web
processes sharing one Redis: tests/api/test_throttle_processes.py.)"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from unittest import mock

import pytest
import redis
import structlog
from aiohttp import test_utils

from api.app import create_app
from api.throttle import client_address, parse_trusted_proxies
from core.settings import ConfigError, Settings
from core.webhook_auth import sign
from tests.api.helpers import json_error, ok_json
from tests.conftest import MakeUser, unique
from tests.support.services import free_port, redis_db

LIMIT = 5
SECRET = "throttle-hook-secret-0123456789"
Client = test_utils.TestClient
MakeClient = Callable[..., AsyncIterator[Client]]


@pytest.fixture(scope="module")
def throttle_settings(settings: Settings, redis_server_url: str) -> Settings:
    """A low limit, on a Redis database of its own (emptied here), behind a trusted proxy."""
    url = f"{redis_server_url}/{redis_db('spare')}"
    redis.Redis.from_url(url).flushdb()
    return dataclasses.replace(
        settings, redis_url=url, auth_failure_limit=LIMIT, trusted_proxies="127.0.0.1/32",
        webhook_secret=SECRET, webhook_secrets=f"build@registry.example.com={SECRET}",
    )


@pytest.fixture(scope="module")
async def proxied(throttle_settings: Settings) -> AsyncIterator[Client]:
    async with test_utils.TestClient(test_utils.TestServer(create_app(throttle_settings))) as c:
        yield c


def via(address: str, spoofed: str | None = None) -> dict[str, str]:
    """Headers of a request our proxy forwards from `address` (the client may have sent its
    own X-Forwarded-For first: the proxy appends to it)."""
    return {"X-Forwarded-For": f"{spoofed}, {address}" if spoofed else address}


def wrong(user: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {user}:{'0' * 40}"}


async def test_wrong_keys_of_one_name_are_throttled_but_the_right_key_is_served(
    proxied: Client, make_user: MakeUser
) -> None:
    user = await make_user()
    name = user.account.username
    for i in range(LIMIT):  # from different addresses: only the name is counted past the limit
        await json_error(await proxied.get("/api/v1/auth/", headers={**wrong(name), **via(f"198.18.{i}.1")}), 401)
    resp = await proxied.get("/api/v1/auth/", headers={**wrong(name), **via("198.18.99.1")})
    await json_error(resp, 429)
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # the user's own key is still served, from anywhere
    for address in ("198.18.0.1", "198.18.99.1", "192.0.2.200"):
        me = await ok_json(await proxied.get("/api/v1/auth/", headers={**user.headers, **via(address)}))
        assert me["username"] == name


async def test_a_throttled_address_still_serves_a_valid_key(proxied: Client, make_user: MakeUser) -> None:
    """A NAT neighbour: someone behind the same address sprays wrong keys."""
    neighbour = await make_user()
    for _ in range(LIMIT + 3):
        await proxied.get("/api/v1/auth/", headers={**wrong(unique("nobody")), **via("198.19.7.7")})
    await json_error(await proxied.get("/api/v1/auth/", headers={**wrong(unique("nobody")), **via("198.19.7.7")}), 429)
    await ok_json(await proxied.get("/api/v1/image/", headers={**neighbour.headers, **via("198.19.7.7")}))


async def test_a_spoofed_forwarded_for_does_not_escape(proxied: Client) -> None:
    """The client's own X-Forwarded-For entries are left of the proxy's: rotating them
    changes nothing, the address the proxy saw is counted."""
    statuses = []
    for i in range(LIMIT + 2):
        headers = {**wrong(unique("spoof")), **via("198.18.200.9", spoofed=f"10.0.0.{i}")}
        resp = await proxied.get("/api/v1/auth/", headers=headers)
        statuses.append(resp.status)
    assert statuses[:LIMIT] == [401] * LIMIT and set(statuses[LIMIT:]) == {429}


async def test_the_network_is_counted_too(proxied: Client) -> None:
    """Spread over many addresses of one /24, with a new name each time."""
    statuses = [
        (await proxied.get("/api/v1/auth/", headers={**wrong(unique("net")), **via(f"198.18.201.{i}")})).status
        for i in range(5 * LIMIT + 2)
    ]
    assert statuses.count(401) == 5 * LIMIT and statuses[-1] == 429


async def test_an_untrusted_peer_cannot_choose_its_address(throttle_settings: Settings) -> None:
    """The proxy list does not contain the peer (127.0.0.1): its X-Forwarded-For is ignored,
    so rotating it does not escape the count of the peer's own address."""
    untrusted = dataclasses.replace(throttle_settings, trusted_proxies="10.0.0.0/8", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with test_utils.TestClient(test_utils.TestServer(create_app(untrusted))) as c:
        statuses = [
            (await c.get("/api/v1/auth/", headers={**wrong(unique("u")), **via(f"203.0.113.{i}")})).status
            for i in range(LIMIT + 1)
        ]
    assert statuses == [401] * LIMIT + [429]


async def test_wrong_webhook_secrets_are_throttled_and_the_right_one_is_not(proxied: Client) -> None:
    body = (b'{"image": "registry.example.com/team/app", "tag": "v1", "status": "building", '
            b'"timestamp": "2024-05-01T12:00:00Z"}')
    for i in range(LIMIT):
        resp = await proxied.post(f"/api/v1/webhooks/quay/wrong-{i}/", data=b"{}", headers=via("198.18.202.1"))
        await json_error(resp, 401)
    resp = await proxied.post("/api/v1/webhooks/quay/wrong-x/", data=b"{}", headers=via("198.18.202.1"))
    await json_error(resp, 429)
    assert resp.headers["Retry-After"].isdigit()
    # the build receiver is counted on its own, and a correct signature passes at once
    headers = {"X-Signature-256": sign(body, SECRET), "Content-Type": "application/json", **via("198.18.202.1")}
    resp = await proxied.post("/api/v1/webhooks/build/", data=body, headers=headers)
    assert resp.status in (200, 202), await resp.text()


async def test_wrong_secrets_at_an_account_receiver_are_throttled_and_the_right_one_is_not(
    proxied: Client, make_user: MakeUser,
) -> None:
    user = await make_user()
    listed = await ok_json(await proxied.get("/api/v1/receiver/", headers=user.headers))
    build = next(r for r in listed["objects"] if r["sender"] == "build")
    body = (b'{"image": "registry.example.com/team/app", "tag": "v1", "status": "building", '
            b'"timestamp": "2024-05-01T12:00:00Z"}')
    wrong = {"X-Signature-256": sign(body, "wrong"), **via("198.18.203.1")}
    for _ in range(LIMIT):
        await json_error(await proxied.post(build["url"], data=body, headers=wrong), 401)
    resp = await proxied.post(build["url"], data=body, headers=wrong)
    await json_error(resp, 429)
    assert resp.headers["Retry-After"].isdigit()
    right = {"X-Signature-256": sign(body, build["secret"]), "Content-Type": "application/json", **via("198.18.203.1")}
    resp = await proxied.post(build["url"], data=body, headers=right)
    assert resp.status == 202, await resp.text()


async def test_redis_down_falls_back_to_this_process(settings: Settings, make_user: MakeUser) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(dataclasses.replace(settings, redis_url=dead, auth_failure_limit=LIMIT))
    user = await make_user()
    with structlog.testing.capture_logs() as logs:
        async with test_utils.TestClient(test_utils.TestServer(app)) as c:
            statuses = [(await c.get("/api/v1/auth/", headers=wrong(user.account.username))).status
                        for _ in range(LIMIT + 2)]
            await ok_json(await c.get("/api/v1/auth/", headers=user.headers))
    assert statuses == [401] * LIMIT + [429, 429]
    assert [e["event"] for e in logs].count("throttle.redis_unavailable") == 1


def _request(peer: str, forwarded: list[str] | None = None) -> mock.Mock:
    headers = mock.Mock()
    headers.getall = lambda name, default=(): forwarded if forwarded is not None else default
    return mock.Mock(remote=peer, headers=headers)


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    ("203.0.113.9", None, "203.0.113.9"),  # no proxy
    ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # untrusted peer: its header is ignored
    ("10.0.0.2", None, "10.0.0.2"),  # a trusted proxy that sent no header
    ("10.0.0.2", ["1.2.3.4"], "1.2.3.4"),
    ("10.0.0.2", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # the client's own entry is further left
    ("10.0.0.2", ["6.6.6.6, 1.2.3.4, 10.0.0.9"], "1.2.3.4"),  # two trusted proxies
    ("10.0.0.2", ["6.6.6.6", "1.2.3.4:5555"], "1.2.3.4"),  # two header lines, a port
    ("10.0.0.2", ["[2001:db8::7]:443"], "2001:db8::7"),
    ("10.0.0.2", ["10.0.0.3, 10.0.0.4"], "10.0.0.3"),  # all trusted: the leftmost
    ("10.0.0.2", ["junk"], "junk"),
    ("::ffff:10.0.0.2", ["1.2.3.4"], "::ffff:10.0.0.2"),  # mapped peer is not in an IPv4 network
])
def test_client_address(peer: str, forwarded: list[str] | None, expected: str) -> None:
    trusted = parse_trusted_proxies("10.0.0.0/8, fd00::/8")
    assert client_address(_request(peer, forwarded), trusted) == expected  # type: ignore[arg-type]


def test_trusted_proxies_must_be_networks() -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        parse_trusted_proxies("10.0.0.0/8, proxy.internal")
