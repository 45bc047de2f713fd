"""The SSRF guard: address policy, the DNS resolver, literal IPs and redirect hops."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.fake_registry import FakeRegistry
from tests.support.registry import RegistryServer
from tests.worker.conftest import ClientFactory
from worker.registry import ForbiddenTargetError, RegistryClient, Target, make_session
from worker.registry.guard import Guard, GuardedResolver, refusal

ALWAYS_REFUSED = [
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "169.254.1.1",  # link-local
    "fd00:ec2::254",  # AWS IPv6 metadata
    "100.100.100.200",  # Alibaba metadata
    "fe80::1",
    "0.0.0.0",  # noqa: S104 - the point of the test
    "::",
    "224.0.0.1",
    "ff02::1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "255.255.255.255",
]
PRIVATE = ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "fc00::1", "100.64.0.1"]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_always_refused(address: str) -> None:
    assert refusal(address, allow_private=True) is not None
    assert refusal(address, allow_private=False) is not None


@pytest.mark.parametrize("address", PRIVATE)
def test_private_refused_unless_allowed(address: str) -> None:
    assert refusal(address, allow_private=False) is not None
    assert refusal(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "52.1.2.3"])
def test_public_allowed(address: str) -> None:
    assert refusal(address, allow_private=False) is None


def test_check_url() -> None:
    guard = Guard(allow_private=False)
    guard.check_url("https://registry-1.docker.io/v2/")  # names are checked after DNS
    guard.check_url("https://8.8.8.8/v2/")
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://127.0.0.1:5000/v2/",
        "http://2130706433/",  # 127.0.0.1 as an integer
        "http://0x7f000001/",
        "file:///etc/passwd",
        "http:///nohost",
    ):
        with pytest.raises(ForbiddenTargetError):
            guard.check_url(url)
    Guard(allow_private=True).check_url("http://127.0.0.1:5000/v2/")


async def test_resolver_filters_after_dns() -> None:
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
    with pytest.raises(ForbiddenTargetError):  # a name: refused by the resolver
        await client.list_tags(Target(fake_registry.other_host, "ok/app"))
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
