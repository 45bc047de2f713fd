"""The address rules shared by the API and the worker (core/address_policy.py): every kind of
address, every IPv4-in-IPv6 form, the allow-list by network and by host name."""

from __future__ import annotations

import ipaddress

import pytest

from core.address_policy import AddressPolicy, Kind, hostname_of, is_odd_ipv4
from core.settings import ConfigError, Settings


def teredo(client: str, server: str = "65.54.227.120") -> str:
    """A Teredo address whose (obfuscated) client address is `client`."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= (0xFFFF << 32) | (int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF)
    return str(ipaddress.IPv6Address(value))


# Refused whatever the configuration says: metadata and addresses that are no destination.
NEVER = {
    "169.254.169.254": Kind.METADATA,  # AWS, GCP, Azure
    "169.254.170.2": Kind.METADATA,  # ECS task metadata
    "100.100.100.200": Kind.METADATA,  # Alibaba
    "fd00:ec2::254": Kind.METADATA,  # AWS over IPv6
    "::ffff:169.254.169.254": Kind.METADATA,  # IPv4-mapped
    "::ffff:0:a9fe:a9fe": Kind.METADATA,  # IPv4-translated
    "::a9fe:a9fe": Kind.METADATA,  # IPv4-compatible
    "64:ff9b::a9fe:a9fe": Kind.METADATA,  # NAT64 well-known prefix
    "64:ff9b:1::a9fe:a9fe": Kind.METADATA,  # NAT64 local-use prefix, /96
    "64:ff9b:1:a9fe:a9:fe00::": Kind.METADATA,  # NAT64 local-use prefix, /48
    "2002:a9fe:a9fe::1": Kind.METADATA,  # 6to4
    teredo("169.254.169.254"): Kind.METADATA,  # Teredo client
    "0.0.0.0": Kind.UNUSABLE,  # noqa: S104 - the point of the test
    "0.1.2.3": Kind.UNUSABLE,
    "::": Kind.UNUSABLE,
    "224.0.0.1": Kind.UNUSABLE,
    "ff02::1": Kind.UNUSABLE,
    "255.255.255.255": Kind.UNUSABLE,
    "::ffff:0.0.0.0": Kind.UNUSABLE,
}
# Refused unless ALLOW_PRIVATE_REGISTRIES (or listed).
PRIVATE = {
    "127.0.0.1": Kind.LOOPBACK,
    "127.8.9.10": Kind.LOOPBACK,
    "::1": Kind.LOOPBACK,
    "::ffff:127.0.0.1": Kind.LOOPBACK,
    "::7f00:1": Kind.LOOPBACK,  # IPv4-compatible
    "64:ff9b::7f00:1": Kind.LOOPBACK,
    "2002:7f00:1::1": Kind.LOOPBACK,
    "10.1.2.3": Kind.PRIVATE,
    "172.16.0.1": Kind.PRIVATE,
    "192.168.1.1": Kind.PRIVATE,
    "100.64.0.1": Kind.PRIVATE,  # CGNAT
    "fc00::1": Kind.PRIVATE,
    "fd12:3456::1": Kind.PRIVATE,
    "fec0::1": Kind.PRIVATE,
    "::ffff:10.1.2.3": Kind.PRIVATE,
    "64:ff9b::a01:203": Kind.PRIVATE,
    "64:ff9b:1::a01:203": Kind.PRIVATE,
    "64:ff9b:1:808:8:800::": Kind.PRIVATE,  # local-use NAT64 is private itself
    "2002:a01:203::1": Kind.PRIVATE,
}
LINK_LOCAL = ["169.254.1.1", "fe80::1", "fe80::1%eth0", "::ffff:169.254.1.1", "64:ff9b::a9fe:101"]
RESERVED = ["192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1", "240.0.0.1", "2001:db8::1",
            "100::1", "3fff::1", "4000::1", teredo("8.8.8.8")]
PUBLIC = ["8.8.8.8", "52.1.2.3", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1"]


@pytest.mark.parametrize(("address", "kind"), NEVER.items(), ids=list(NEVER))
def test_never_allowed(address: str, kind: Kind) -> None:
    loose = AddressPolicy.parse("0.0.0.0/0, ::/0, 169.254.0.0/16, reg.example", allow_private=True)
    for policy in (AddressPolicy(), loose):
        refusal = policy.refusal(address, "reg.example")
        assert refusal is not None and refusal.kind is kind
        assert address not in refusal.message()


@pytest.mark.parametrize(("address", "kind"), PRIVATE.items(), ids=list(PRIVATE))
def test_private_and_loopback_need_the_switch(address: str, kind: Kind) -> None:
    refusal = AddressPolicy().refusal(address)
    assert refusal is not None and refusal.kind is kind
    assert "ALLOW_PRIVATE_REGISTRIES" in refusal.message()
    assert AddressPolicy(allow_private=True).refusal(address) is None


@pytest.mark.parametrize("address", LINK_LOCAL)
def test_link_local_only_by_an_explicit_network(address: str) -> None:
    for policy in (AddressPolicy(allow_private=True), AddressPolicy.parse("reg.example", allow_private=True)):
        refusal = policy.refusal(address, "reg.example")
        assert refusal is not None and refusal.kind is Kind.LINK_LOCAL
    assert AddressPolicy.parse("169.254.0.0/16, fe80::/10").refusal(address) is None


@pytest.mark.parametrize("address", RESERVED)
def test_reserved_only_when_listed(address: str) -> None:
    assert AddressPolicy(allow_private=True).refusal(address) is not None
    assert AddressPolicy.parse("reg.example:5000").refusal(address, "reg.example:5000") is None
    network = "0.0.0.0/0" if ":" not in address or address.startswith("::ffff") else "::/0"
    assert AddressPolicy.parse(network).refusal(address) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_allowed(address: str) -> None:
    assert AddressPolicy().refusal(address) is None


def test_allow_list_by_network_judges_the_embedded_address() -> None:
    policy = AddressPolicy.parse("10.1.0.0/16 fd00:1::/32")
    for ok in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203", "fd00:1::5"):
        assert policy.refusal(ok) is None, ok
    for refused in ("10.2.0.1", "127.0.0.1", "fd00:2::5", "64:ff9b::a02:1"):
        assert policy.refusal(refused) is not None, refused
    # listing the NAT64 range does not open what it embeds
    assert AddressPolicy.parse("64:ff9b::/96").refusal("64:ff9b::a01:203") is not None


def test_allow_list_by_host_name() -> None:
    policy = AddressPolicy.parse("registry.corp:5000")
    assert policy.refusal("10.9.9.9", "registry.corp:5000") is None
    assert policy.refusal("127.0.0.1", "REGISTRY.corp", 5000) is None
    assert policy.refusal("10.9.9.9", "other.corp:5000") is not None
    assert policy.refusal("169.254.1.1", "registry.corp:5000") is not None  # link-local: by network only
    assert policy.refusal("169.254.169.254", "registry.corp:5000") is not None


def test_a_name_is_allowed_on_its_port_only() -> None:
    """A listed name opens its port; a bare name the ports of a registry named without one."""
    policy = AddressPolicy.parse("registry.corp:5000, bare.corp")
    for host, port in [("registry.corp:5000", None), ("registry.corp", 5000), ("bare.corp", None),
                       ("bare.corp:443", None), ("bare.corp", 80)]:
        assert policy.refusal("10.9.9.9", host, port) is None, (host, port)
    for host, port in [("registry.corp", None), ("registry.corp:5001", None), ("registry.corp", 22),
                       ("bare.corp:5000", None), ("bare.corp", 6379)]:
        refusal = policy.refusal("10.9.9.9", host, port)
        assert refusal is not None and refusal.kind is Kind.PRIVATE, (host, port)
    assert policy.refusal("8.8.8.8", "bare.corp", 22) is None  # public addresses: any port


def test_screen_keeps_the_allowed_addresses() -> None:
    allowed, refusal = AddressPolicy().screen(["10.1.2.3", "8.8.8.8"], "mixed.example")
    assert allowed == ["8.8.8.8"] and refusal is not None and refusal.kind is Kind.PRIVATE
    assert AddressPolicy().screen(["8.8.8.8"], None) == (["8.8.8.8"], None)


@pytest.mark.parametrize("entry", ["reg.internal:99999", "reg.internal:http", "reg.internal:", "10.0.0.1:5000",
                                   "0177.0.0.1", "10.0.0.0/33", "bad_name", "http://x"])
def test_bad_allow_list_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_REGISTRY_NETWORKS"):
        AddressPolicy.parse(entry)


def test_from_settings_trusts_the_configured_registries() -> None:
    policy = AddressPolicy.from_settings(Settings(
        allowed_registry_networks="10.0.0.0/8, [fd00::1]", tutum_registry_host="own.registry:5000",
        docker_hub_registry_url="http://hub.mirror.internal:5000",
    ))
    assert policy.hosts == {("own.registry", 5000), ("hub.mirror.internal", 5000), ("hub.docker.com", 443)}
    assert ipaddress.ip_network("fd00::1/128") in policy.networks
    assert policy.refusal("192.168.1.1", "own.registry:5000") is None
    for host in ("own.registry", "own.registry:6379", "hub.mirror.internal:22", "hub.docker.com:80"):
        assert policy.refusal("192.168.1.1", host) is not None, host
    assert policy.allow_private is False


@pytest.mark.parametrize(("host", "odd"), [
    ("0177.0.0.1", True), ("0x7f.1", True), ("127.1", True), ("2130706433", True), ("0x7f000001", True),
    ("10.0.0.010", True), ("1.2.3.4.5", True), ("reg.0x", True),
    ("127.0.0.1", False), ("10.0.0.10", False), ("reg.example", False), ("1e100.net", False),
    ("123.example", False), ("localhost", False),
])
def test_odd_ipv4_spellings(host: str, odd: bool) -> None:
    assert is_odd_ipv4(host) is odd


def test_hostname_of() -> None:
    assert hostname_of("[2001:db8::1]:5000") == "2001:db8::1"
    assert hostname_of("[::1]") == "::1"
    assert hostname_of("Reg.Example:5000") == "reg.example"
    assert hostname_of("reg.example") == "reg.example"
