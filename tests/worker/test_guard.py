"""The worker's SSRF guard: the DNS resolver, literal IPs and redirect hops, all refused
before a connection is attempted, with messages that never show a resolved address, and one
answer for every name that cannot be used (resolved to refused addresses, or not at all).
(The address rules themselves: tests/core/test_address_policy.py.)"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from core.address_policy import NAME_RULE, AddressPolicy
from core.settings import Settings
from tests.conftest import insert_image, unique
from tests.support.fake_registry import FakeRegistry
from tests.support.registry import RegistryServer
from tests.worker.conftest import ClientFactory
from worker import sync
from worker.registry import ForbiddenTargetError, RegistryClient, Target, make_session
from worker.registry.guard import Guard, GuardedConnector, GuardedResolver
from worker.runtime import Runtime


class StubDns(AbstractResolver):
    """aiohttp resolver answering from a mapping; unknown names do not exist."""

    def __init__(self, hosts: Mapping[str, list[str]]) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.hosts:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for a in self.hosts[host]
        ]

    async def close(self) -> None:
        pass


DNS = {
    "metadata.test": ["169.254.169.254"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "compat.test": ["::a9fe:a9fe"],
    "private.test": ["10.1.2.3"],
    "mixed.test": ["10.1.2.3", "127.0.0.1"],
    "corp.test": ["10.1.2.3"],
}


@pytest.mark.parametrize("host", ["metadata.test", "nat64.test", "compat.test", "private.test", "nxdomain.test"])
async def test_resolver_refuses_with_one_answer_for_every_name(host: str) -> None:
    """Refused addresses of any kind, or no such name: the same error and sentence (no
    oracle), retried later rather than within the call."""
    resolver = GuardedResolver(Guard(allow_private=False), StubDns(DNS))
    with pytest.raises(ForbiddenTargetError) as caught:
        await resolver.resolve(host, 443)
    assert str(caught.value) == f"refused to contact {host}: {NAME_RULE}"
    assert caught.value.transient and caught.value.give_up


async def test_resolver_keeps_the_allowed_addresses() -> None:
    policy = AddressPolicy.parse("127.0.0.0/8")
    answers = await GuardedResolver(Guard(policy=policy), StubDns(DNS)).resolve("mixed.test", 80)
    assert [r["host"] for r in answers] == ["127.0.0.1"]
    by_name = GuardedResolver(Guard(policy=AddressPolicy.parse("corp.test")), StubDns(DNS))
    assert [r["host"] for r in await by_name.resolve("corp.test", 80)] == ["10.1.2.3"]
    with pytest.raises(ForbiddenTargetError):
        await by_name.resolve("private.test", 80)


async def test_a_refused_name_never_gets_a_connection(jail: list[str]) -> None:
    """Through a whole session: the request fails in the resolver; no socket connects."""
    connector = GuardedConnector(Guard(allow_private=True), inner=StubDns(DNS))
    async with aiohttp.ClientSession(connector=connector) as session:
        client = RegistryClient(session, insecure_hosts=frozenset({"metadata.test", "nat64.test"}))
        for host in ("metadata.test", "nat64.test"):
            with pytest.raises(ForbiddenTargetError, match="must resolve to a public address"):
                await client.list_tags(Target(host, "team/app"))
    assert jail == []


def test_check_url() -> None:
    guard = Guard(allow_private=False)
    guard.check_url("https://registry-1.docker.io/v2/")  # names are checked after DNS
    guard.check_url("https://8.8.8.8/v2/")
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://127.0.0.1:5000/v2/",
        "http://2130706433/",  # 127.0.0.1 as an integer
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "file:///etc/passwd",
        "http:///nohost",
    ):
        with pytest.raises(ForbiddenTargetError):
            guard.check_url(url)
    Guard(allow_private=True).check_url("http://127.0.0.1:5000/v2/")
    Guard(allow_private=True).check_url("http://[::1]:5000/v2/")


async def test_system_resolver_filters_after_dns() -> None:
    with pytest.raises(ForbiddenTargetError, match="localhost"):
        await GuardedResolver(Guard(allow_private=False)).resolve("localhost", 80)
    allowed = await GuardedResolver(Guard(allow_private=True)).resolve("localhost", 80)
    assert allowed and all(r["host"] in ("127.0.0.1", "::1") for r in allowed)


async def test_loopback_refused_unless_allowed(
    registry: RegistryServer, fake_registry: FakeRegistry, registry_client: ClientFactory
) -> None:
    fake_registry.reset()
    client = registry_client(allow_private=False)
    with pytest.raises(ForbiddenTargetError):  # literal IP: aiohttp skips the resolver
        await client.list_tags(Target(registry.host, "team/app"))
    with pytest.raises(ForbiddenTargetError) as caught:  # a name: refused by the resolver
        await client.list_tags(Target(fake_registry.other_host, "ok/app"))
    assert "127.0.0.1" not in str(caught.value)
    assert sum(fake_registry.hits.values()) == 0
    # allowed by configuration
    assert await registry_client(allow_private=True).list_tags(
        Target(fake_registry.other_host, "ok/app")
    ) == ["a", "b"]


async def test_redirect_hop_is_checked(fake_registry: FakeRegistry, registry_client) -> None:
    client = registry_client(allow_private=True)
    with pytest.raises(ForbiddenTargetError, match="metadata"):
        await client.resolve_tag(Target(fake_registry.host, "ssrf/app"), "a")
    assert client.requests[("GET", "blob")] == 1  # the hop never went out


async def test_plain_session_gets_a_strict_guard(registry: RegistryServer) -> None:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, insecure_hosts=frozenset({registry.host}))
        assert client.guard.allow_private is False
        with pytest.raises(ForbiddenTargetError):
            await client.list_tags(Target(registry.host, "team/app"))
    async with make_session(allow_private=True, timeout=5) as session:
        assert RegistryClient(session).guard.allow_private is True
    policy = AddressPolicy.parse("10.0.0.0/8")
    async with make_session(policy=policy, timeout=5) as session:
        assert RegistryClient(session).guard.policy is policy


async def test_a_refused_sync_records_why_without_the_address(settings: Settings, pool, jail: list[str]) -> None:
    """The error a caller reads in `…/sync/` names the host and the kind of address only."""
    strict = dataclasses.replace(settings, allow_private_registries=False, allowed_registry_networks="")
    iid = await insert_image(pool, name=f"localhost:5000/{unique('ns')}/app", owner_id=None)
    async with contextlib.aclosing(await Runtime(strict, name="test-guard").open()) as rt:
        assert await sync.sync_image(rt, iid) == sync.FAILED
    error = await pool.fetchval("SELECT sync_error FROM images WHERE id = $1", iid)
    assert error == f"ForbiddenTargetError: refused to contact localhost: {NAME_RULE}"
    assert jail == []


async def test_a_name_allowed_by_configuration_is_allowed_on_its_port_only(jail: list[str]) -> None:
    """`corp.test:5000` listed: its private address on 5000 yes, on 6379 or 443 no, before any
    connection."""
    policy = AddressPolicy.parse("corp.test:5000")
    connector = GuardedConnector(Guard(policy=policy), inner=StubDns(DNS))
    async with aiohttp.ClientSession(connector=connector) as session:
        client = RegistryClient(session, insecure_hosts=frozenset({"corp.test:6379", "corp.test"}), max_attempts=1)
        for host in ("corp.test:6379", "corp.test"):
            with pytest.raises(ForbiddenTargetError, match="must resolve to a public address"):
                await client.list_tags(Target(host, "team/app"))
    resolver = GuardedResolver(Guard(policy=policy), StubDns(DNS))
    assert [r["host"] for r in await resolver.resolve("corp.test", 5000)] == ["10.1.2.3"]
    assert jail == []


async def test_a_redirect_or_token_realm_never_leads_to_a_host_allowed_by_name(
    fake_registry: FakeRegistry, registry: RegistryServer,
) -> None:
    """The own registry (listed by name) is read for its own images only: another
    registry's redirect or token realm pointing there is refused before it is sent."""
    own = registry.host.replace("127.0.0.1", "localhost")
    guard = Guard(policy=AddressPolicy.parse("", trusted_hosts=[own]))
    guard.check_hop(f"http://{own}/v2/alice/app/manifests/latest", own)  # the registry itself
    guard.check_hop(f"http://{own}/token?scope=x", own.replace("localhost", "LOCALHOST"))
    guard.check_hop("http://cdn.example/blob", "registry.example")  # not listed: the address decides
    for url in (f"http://{own}/v2/alice/app/manifests/latest", f"http://user@{own}/token"):
        with pytest.raises(ForbiddenTargetError, match="allowed by name is contacted only as the registry itself"):
            guard.check_hop(url, fake_registry.host)
    # through the client: the fake's blob redirect goes to localhost:<its port>, listed by name
    listed = Guard(policy=AddressPolicy.parse("", allow_private=True, trusted_hosts=[fake_registry.other_host]))
    async with aiohttp.ClientSession(connector=GuardedConnector(listed)) as session:
        client = RegistryClient(session, insecure_hosts=frozenset({fake_registry.host}), max_attempts=1)
        fake_registry.reset()
        with pytest.raises(ForbiddenTargetError, match="allowed by name is contacted only as the registry itself"):
            await client.resolve_tag(Target(fake_registry.host, "redirect/app"), "a")
    assert fake_registry.cdn_authorization == []  # the hop was never sent
