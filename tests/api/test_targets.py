"""Registration refuses forbidden registry targets at once (SPEC §6): the SSRF matrix through
`POST /api/v1/image/` and `PATCH`, with a stub resolver and the network jail — the refusal
comes from the API's own rules before anything could connect, and no test packet leaves for
a non-loopback address. The answer never shows what a name resolves to: every name that
cannot be used gets the same answer (no oracle), an address written by the caller is judged
as written, and a name allowed by configuration is allowed on its port only."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import test_utils

from api.app import create_app
from api.targets import SystemResolver
from core.address_policy import NAME_RULE
from core.settings import Settings
from tests.api.helpers import json_error, ok_json
from tests.conftest import MakeUser, unique
from tests.support.resolver import StubResolver, stub_resolver

DNS: dict[str, list[str]] = {
    "loopback.test": ["127.0.0.1"],
    "rfc1918.test": ["10.9.9.9"],
    "rfc1918-b.test": ["172.16.5.4"],
    "rfc1918-c.test": ["192.168.1.20"],
    "cgnat.test": ["100.64.3.2"],
    "linklocal.test": ["169.254.10.1"],
    "metadata.test": ["169.254.169.254"],
    "metadata6.test": ["fd00:ec2::254"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "nat64-loop.test": ["64:ff9b::7f00:1"],
    "compat.test": ["::a9fe:a9fe"],
    "mapped.test": ["::ffff:10.9.9.9"],
    "sixtofour.test": ["2002:7f00:1::1"],
    "ula.test": ["fd12:3456::1"],
    "v6only.test": ["2606:4700:4700::1111"],
    "mixed.test": ["10.9.9.9", "93.184.215.14"],
    "listed-net.test": ["10.1.2.3"],
    "listed-nat64.test": ["64:ff9b::a01:203"],
    "registry.corp": ["10.9.9.9"],
    "bare.corp": ["10.9.9.8"],
    "registry-ll.corp": ["169.254.10.1"],
    "nxdomain.test": [],
}
ALLOWED = "10.1.0.0/16, 2001:db8:1::/48, registry.corp:5000, registry-ll.corp, bare.corp"
NAME = f"cannot be used: {NAME_RULE}"  # the one answer for every name that cannot be used

# name (its host, then /<ns>/app) → the reason's words; None: registered (201)
MATRIX: dict[str, str | None] = {
    "loopback.test": NAME,
    "rfc1918.test": NAME,
    "rfc1918-b.test": NAME,
    "rfc1918-c.test:5000": NAME,
    "cgnat.test": NAME,
    "linklocal.test": NAME,
    "metadata.test": NAME,
    "metadata6.test": NAME,
    "nat64.test": NAME,
    "nat64-loop.test": NAME,
    "compat.test": NAME,
    "mapped.test": NAME,
    "sixtofour.test": NAME,
    "ula.test": NAME,
    "registry-ll.corp": NAME,  # a listed name does not open link-local
    "nxdomain.test": NAME,  # no such name: the same answer
    "registry.corp": NAME,  # listed with port 5000, not 443
    "registry.corp:5001": NAME,
    "bare.corp:5000": NAME,  # listed without a port: 443 and 80 only
    # an address the caller wrote is judged as written
    "127.0.0.1:5000": "is a loopback address",
    "10.9.9.9": "is a private address",
    "169.254.169.254": "is a cloud metadata address",
    "[::1]:5000": "is a loopback address",
    "[fd00:ec2::254]": "is a cloud metadata address",
    "[::ffff:169.254.169.254]:443": "embeds a cloud metadata address",
    "[64:ff9b::a9fe:a9fe]": "embeds a cloud metadata address",
    "[2001:db8::1]:5000": "reserved, non-public address",  # documentation range, not listed
    "[fe80::1]:5000": "link-local address",
    # allowed
    "v6only.test": None,
    "mixed.test": None,  # the worker would use the public address only
    "listed-net.test:5000": None,
    "listed-nat64.test": None,
    "registry.corp:5000": None,
    "bare.corp": None,
    "bare.corp:443": None,
    "[2606:4700:4700::1111]:5000": None,
    "[2001:db8:1::7]:5000": None,
    "[2001:0db8:0001:0000::8]": None,  # stored as [2001:db8:1::8]
    "93.184.215.14:5000": None,
}
ODD_SPELLINGS = ["0177.0.0.1:5000", "0x7f.1", "127.1:5000", "2130706433:5000", "0x7f000001:80", "10.0.0.010"]


@pytest.fixture(scope="module")
async def strict_app(settings: Settings) -> AsyncIterator[tuple[test_utils.TestClient, StubResolver]]:
    """An API that refuses private registries, allows ALLOWED, and resolves through DNS."""
    app = create_app(dataclasses.replace(
        settings, allow_private_registries=False, allowed_registry_networks=ALLOWED,
    ))
    stub = stub_resolver(app, DNS, default=None)
    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        yield c, stub


@pytest.fixture
def strict(strict_app: tuple[test_utils.TestClient, StubResolver]) -> tuple[test_utils.TestClient, StubResolver]:
    strict_app[1].asked.clear()
    strict_app[1].hosts.pop("moving.test", None)
    return strict_app


async def _count(pool: asyncpg.Pool, name: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name))


@pytest.mark.parametrize(("host", "reason"), MATRIX.items(), ids=list(MATRIX))
async def test_registration_matrix(strict, pool, make_user: MakeUser, jail: list[str], host: str,
                                   reason: str | None) -> None:
    client, stub = strict
    user = await make_user()
    name = f"{host}/{unique('ns')}/app"
    resp = await client.post("/api/v1/image/", json={"name": name}, headers=user.headers)
    if reason is None:
        body = await ok_json(resp, 201)
        assert await _count(pool, body["name"]) == 1
    else:
        body = await json_error(resp, 400, field="name")
        assert reason in body["error"], body
        if reason == NAME:  # not a word more: nothing that tells one refused name from another
            assert body["error"] == f"registry host '{host}' {NAME}"
        for address in DNS.get(host.split(":")[0], []):
            assert address not in body["error"]
        assert await _count(pool, name) == 0
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") and ":" in host else host
    assert stub.asked == ([hostname] if hostname in DNS else [])  # literals are not resolved
    assert jail == []


async def test_the_ipv6_name_is_stored_in_its_short_form(strict, make_user: MakeUser, jail: list[str]) -> None:
    client, _ = strict
    user = await make_user()
    ns = unique("ns")
    body = await ok_json(await client.post(
        "/api/v1/image/", json={"name": f"[2001:0db8:0001::0009]:5000/{ns}/app"}, headers=user.headers
    ), 201)
    assert body["name"] == f"[2001:db8:1::9]:5000/{ns}/app"
    assert body["resource_uri"] == f"/api/v1/image/[2001:db8:1::9]:5000/{ns}/app/"
    assert body["registry"] == "/api/v1/registry/[2001:db8:1::9]:5000/"
    for path in (body["resource_uri"], body["resource_uri"] + "tag/", body["resource_uri"] + "sync/",
                 body["registry"]):
        await ok_json(await client.get(path, headers=user.headers))
    await ok_json(await client.patch(body["resource_uri"], json={"description": "v6"}, headers=user.headers))
    assert (await client.delete(body["resource_uri"], headers=user.headers)).status == 204


@pytest.mark.parametrize("host", ODD_SPELLINGS)
async def test_octal_hex_and_short_ipv4_are_invalid_names(strict, make_user: MakeUser, jail: list[str],
                                                         host: str) -> None:
    client, stub = strict
    user = await make_user()
    resp = await client.post("/api/v1/image/", json={"name": f"{host}/ns/app"}, headers=user.headers)
    body = await json_error(resp, 400, field="name")
    assert "four decimal numbers" in body["error"]
    assert stub.asked == []


async def test_allow_private_opens_private_but_not_metadata_or_link_local(
    settings: Settings, make_user: MakeUser, jail: list[str]
) -> None:
    app = create_app(dataclasses.replace(settings, allow_private_registries=True))
    stub_resolver(app, DNS, default=None)
    user = await make_user()
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        for host, status in [("rfc1918.test", 201), ("loopback.test", 201), ("ula.test", 201),
                             ("mapped.test", 201), ("metadata.test", 400), ("nat64.test", 400),
                             ("linklocal.test", 400), ("[fd00:ec2::254]", 400), ("[::1]:5000", 201)]:
            resp = await client.post("/api/v1/image/", json={"name": f"{host}/{unique('ns')}/app"},
                                     headers=user.headers)
            assert resp.status == status, (host, await resp.text())
    assert jail == []


async def test_docker_hub_names_are_not_resolved(strict, make_user: MakeUser, jail: list[str]) -> None:
    client, stub = strict
    user = await make_user()
    resp = await client.post("/api/v1/image/", json={"name": f"{unique('hub')}/app"}, headers=user.headers)
    await ok_json(resp, 201)
    assert stub.asked == []


async def test_patch_with_credentials_checks_the_host_again(strict, pool, make_user: MakeUser,
                                                            jail: list[str]) -> None:
    client, stub = strict
    user = await make_user()
    name = f"moving.test/{unique('ns')}/app"
    stub.hosts["moving.test"] = ["93.184.215.14"]
    await ok_json(await client.post("/api/v1/image/", json={"name": name}, headers=user.headers), 201)
    stub.hosts["moving.test"] = ["169.254.169.254"]  # DNS changed since the registration
    resp = await client.patch(f"/api/v1/image/{name}/", json={"username": "u", "password": "p"},
                              headers=user.headers)
    body = await json_error(resp, 400, field="name")
    assert body["error"] == f"registry host 'moving.test' {NAME}"
    assert await pool.fetchval("SELECT credentials FROM images WHERE name = $1", name) is None
    # a change that sends nothing to the registry is not refused
    await ok_json(await client.patch(f"/api/v1/image/{name}/", json={"description": "x"}, headers=user.headers))


class _SlowResolver(SystemResolver):
    async def resolve(self, hostname: str) -> list[str]:
        raise TimeoutError


class _FailingResolver(SystemResolver):
    async def resolve(self, hostname: str) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.mark.parametrize("resolver", [_SlowResolver(), _FailingResolver()], ids=["timeout", "servfail"])
async def test_dns_that_cannot_answer_now_is_a_503(settings: Settings, make_user: MakeUser,
                                                   resolver: SystemResolver) -> None:
    from api.targets import RESOLVER

    app = create_app(settings)
    app[RESOLVER] = resolver
    user = await make_user()
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        resp = await client.post("/api/v1/image/", json={"name": f"flaky.test/{unique('ns')}/app"},
                                 headers=user.headers)
        await json_error(resp, 503)
        assert resp.headers["Retry-After"] == "5"


async def test_hosts_named_in_the_configuration_are_allowed_on_their_port_only(
    settings: Settings, make_user: MakeUser, jail: list[str]
) -> None:
    """TUTUM_REGISTRY_HOST and the Docker Hub URLs name private hosts the operator trusts: on
    the port configured, not on every port of the host (Redis, SSH, an admin console)."""
    app = create_app(dataclasses.replace(
        settings, allow_private_registries=False, allowed_registry_networks="",
        tutum_registry_host="own.corp:5000", docker_hub_registry_url="https://hubmirror.corp",
        docker_hub_api_url="http://hubapi.corp:8080",
    ))
    stub_resolver(app, {"own.corp": ["10.7.7.7"], "hubmirror.corp": ["10.7.7.8"], "hubapi.corp": ["10.7.7.9"]},
                  default=None)
    user = await make_user()
    me = user.account.username
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        for host, status in [("own.corp:5000", 201), ("own.corp", 400), ("own.corp:6379", 400),
                             ("hubmirror.corp", 201), ("hubmirror.corp:443", 201), ("hubmirror.corp:22", 400),
                             ("hubapi.corp:8080", 201), ("hubapi.corp", 400)]:
            resp = await client.post("/api/v1/image/", json={"name": f"{host}/{me}/{unique('app')}"},
                                     headers=user.headers)
            assert resp.status == status, (host, await resp.text())
            if status == 400:
                assert (await resp.json())["error"] == f"registry host '{host}' {NAME}"
    assert jail == []
