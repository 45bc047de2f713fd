"""Which network addresses the service may contact as a registry (SPEC §6): the rules that the
API applies at registration and the worker applies after every DNS answer and redirect.

Every address is classified, and an IPv6 address that carries an IPv4 address (mapped
`::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`
and the local-use `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) is judged by the
IPv4 address it embeds as well, since that is where a connection to it ends up.

- never contacted, whatever the configuration: cloud metadata addresses, unspecified,
  "this network" (0.0.0.0/8), multicast and broadcast;
- public addresses: always allowed;
- loopback and private (RFC 1918, CGNAT 100.64.0.0/10, unique-local fc00::/7, site-local,
  local-use NAT64): allowed with `allow_private` (ALLOW_PRIVATE_REGISTRIES=1), or when the
  address is in a listed network, or the host is a listed name on its listed port;
- reserved and documentation ranges, anything outside IPv6 global unicast: only in a listed
  network or for a listed host name on its port;
- link-local (169.254.0.0/16, fe80::/10): only in an explicitly listed network (metadata
  services live there; neither ALLOW_PRIVATE_REGISTRIES nor a host name opens it).

A host name is listed with its port (`registry.corp:5000`); a name listed without one stands
for the ports a registry named without one is reached on, 443 (https) and 80 (plain http,
INSECURE_REGISTRIES). The service's own registry and the Docker Hub URLs are listed with the
port they are configured with.

No refusal contains an address, and a name that cannot be used gets one answer whatever it
resolves to, or if it does not resolve (NAME_RULE): a caller must not learn what an internal
name resolves to, or whether it exists. An address the caller wrote is judged as written.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.settings import ConfigError, Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The ports of a registry host named without one: https, or plain http (INSECURE_REGISTRIES).
DEFAULT_PORTS = (443, 80)

# Why a registry host *name* cannot be used, the same for every such name: it says the rule,
# never what the name resolves to (or that it does not resolve).
NAME_RULE = (
    "a registry host name must resolve to a public address, or to one that ALLOW_PRIVATE_REGISTRIES "
    "or ALLOWED_REGISTRY_NETWORKS allows (which may also list the name, with its port); a name that "
    "does not resolve gets this same answer"
)


class Kind(enum.Enum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    RESERVED = "reserved"
    LINK_LOCAL = "link-local"
    METADATA = "metadata"
    UNUSABLE = "unusable"


# The reason given when several addresses behind one are refused: the most serious.
_SEVERITY = (Kind.METADATA, Kind.UNUSABLE, Kind.LINK_LOCAL, Kind.RESERVED, Kind.LOOPBACK, Kind.PRIVATE, Kind.PUBLIC)


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Checked in this order; the first table containing the address gives its kind.
_TABLES: tuple[tuple[Kind, tuple[IPNetwork, ...]], ...] = (
    # AWS (IMDS, time, DNS, ECS task metadata), GCP and Azure share 169.254.169.254;
    # Alibaba 100.100.100.200; Oracle's legacy 192.0.0.192; AWS IPv6 IMDS fd00:ec2::254.
    (Kind.METADATA, _nets(
        "169.254.169.0/24", "169.254.170.0/24", "100.100.100.200/32", "192.0.0.192/32", "fd00:ec2::/32",
    )),
    (Kind.UNUSABLE, _nets("0.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::/128", "ff00::/8")),
    (Kind.LOOPBACK, _nets("127.0.0.0/8", "::1/128")),
    (Kind.LINK_LOCAL, _nets("169.254.0.0/16", "fe80::/10")),
    (Kind.PRIVATE, _nets(
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
        "fc00::/7", "fec0::/10", "64:ff9b:1::/48",
    )),
    (Kind.RESERVED, _nets(
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "240.0.0.0/4",
        "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
    )),
)
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def classify(ip: IPAddress) -> Kind:
    """The kind of one address, without looking inside IPv6 addresses (see destinations)."""
    for kind, nets in _TABLES:
        if any(ip in net for net in nets if net.version == ip.version):
            return kind
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST:
        return Kind.RESERVED
    return Kind.PUBLIC


def _rfc6052(ip: ipaddress.IPv6Address, prefix_len: int) -> ipaddress.IPv4Address:
    """The IPv4 address embedded after a translation prefix of `prefix_len` bits (RFC 6052
    §2.2: bits 64-71 are the reserved `u` octet and never carry address bits)."""
    bits = f"{int(ip):0128b}"
    payload = bits[96:] if prefix_len == 96 else (bits[prefix_len:64] + bits[72:])[:32]
    return ipaddress.IPv4Address(int(payload, 2))


def destinations(ip: IPAddress) -> list[tuple[IPAddress, bool]]:
    """The addresses a connection to `ip` really reaches, each to be judged on its own, with
    True for a guess: the local-use NAT64 prefix may be 48 to 96 bits long, so every RFC 6052
    position is read, and a guess only counts when it lands somewhere sensitive."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [(ip, False)]
    if ip.scope_id:
        ip = ipaddress.IPv6Address(int(ip))
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        return [(low32, False)]
    if ip in _COMPATIBLE and int(ip) > 1:  # `::` and `::1` are themselves
        return [(low32, False)]
    if ip in _NAT64_LOCAL:
        return [(ip, False), *((_rfc6052(ip, n), True) for n in (48, 56, 64, 96))]
    if ip in _SIXTOFOUR:
        assert ip.sixtofour is not None
        return [(ip, False), (ip.sixtofour, False)]
    if ip in _TEREDO:
        assert ip.teredo is not None
        server, client = ip.teredo
        return [(ip, False), (server, False), (client, False)]
    return [(ip, False)]


@dataclass(frozen=True)
class Refusal:
    """Why an address may not be contacted; `message` never contains the address."""

    kind: Kind
    embedded: bool = False  # the refused address is an IPv4 address inside an IPv6 one

    def message(self, subject: str = "the registry host", verb: str = "resolves to") -> str:
        what = {
            Kind.LOOPBACK: "a loopback address",
            Kind.PRIVATE: "a private address",
            Kind.RESERVED: "a reserved, non-public address",
            Kind.LINK_LOCAL: "a link-local address",
            Kind.METADATA: "a cloud metadata address",
            Kind.UNUSABLE: "an address that cannot be a registry (unspecified, multicast or broadcast)",
        }[self.kind]
        if self.embedded:
            what = f"an IPv6 address that embeds {what}"
        advice = {
            Kind.LOOPBACK: "; set ALLOW_PRIVATE_REGISTRIES or list it in ALLOWED_REGISTRY_NETWORKS",
            Kind.PRIVATE: "; set ALLOW_PRIVATE_REGISTRIES or list it in ALLOWED_REGISTRY_NETWORKS",
            Kind.RESERVED: "; list it in ALLOWED_REGISTRY_NETWORKS to allow it",
            Kind.LINK_LOCAL: "; list its network in ALLOWED_REGISTRY_NETWORKS to allow it",
            Kind.METADATA: ", which is never allowed",
            Kind.UNUSABLE: "",
        }[self.kind]
        return f"{subject} {verb} {what}{advice}"


_HOSTNAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
# An IPv4 address in any of the forms inet_aton() accepts: decimal, octal, hex, 1-4 parts.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_DOTTED_QUAD = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                          r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def is_odd_ipv4(hostname: str) -> bool:
    """True for a host name that resolvers would read as an IPv4 address but that is not four
    decimal numbers: `0177.0.0.1`, `0x7f.1`, `127.1`, `2130706433`, `10.0.0.010`. Like URL
    parsers, a name whose last label is a number is taken as an address."""
    last = hostname.lower().rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.fullmatch(last)) and not _DOTTED_QUAD.fullmatch(hostname)


def hostname_of(host: str) -> str:
    """`reg.example:5000` → `reg.example`; `[2001:db8::1]:5000` → `2001:db8::1`."""
    return split_host(host)[0]


def split_host(host: str) -> tuple[str, int | None]:
    """`reg.example:5000` → (`reg.example`, 5000); `[2001:db8::1]` → (`2001:db8::1`, None);
    lower case. A port that is not a number is None."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name, int(port) if port.isdigit() else None


def ports_of(port: int | None) -> tuple[int, ...]:
    """The ports a host named with `port` is reached on (DEFAULT_PORTS when it has none)."""
    return (port,) if port is not None else DEFAULT_PORTS


def same_endpoint(a: str, b: str) -> bool:
    """True when the hosts `a` and `b` (`name[:port]`) name the same server and port:
    `reg.example` and `reg.example:443` do, `reg.example:5000` and `reg.example` do not."""
    (name_a, port_a), (name_b, port_b) = split_host(a), split_host(b)
    return name_a == name_b and not set(ports_of(port_a)).isdisjoint(ports_of(port_b))


def literal_address(hostname: str) -> IPAddress | None:
    """The address when `hostname` is an IP literal (an IPv6 zone id is dropped), else None."""
    try:
        return ipaddress.ip_address(hostname.split("%", 1)[0])
    except ValueError:
        return None


_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[tuple[str, int]] = frozenset()  # (name, port) pairs allowed by name

    @classmethod
    def parse(cls, allowed: str, *, allow_private: bool = False, trusted_hosts: Iterable[str] = ()) -> AddressPolicy:
        """`allowed`: comma- or space-separated CIDRs, addresses, and host names with or
        without a port (`registry.internal:5000`; without one: DEFAULT_PORTS).
        `trusted_hosts`: `name[:port]` the operator configured elsewhere, allowed like listed ones."""
        networks: list[IPNetwork] = []
        hosts: set[tuple[str, int]] = set()
        for trusted in trusted_hosts:
            if trusted:
                name, port = split_host(trusted)
                hosts.update((name, p) for p in ports_of(port))
        for entry in re.split(r"[,\s]+", allowed.strip().lower()):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name, colon, written = entry.partition(":")
            if (not _HOSTNAME.fullmatch(name) or is_odd_ipv4(name) or literal_address(name) is not None
                    or (colon and (not _PORT.fullmatch(written) or not 0 < int(written) < 65536))):
                raise ConfigError(
                    f"ALLOWED_REGISTRY_NETWORKS entry {entry!r} is neither a network (10.0.0.0/8, "
                    "fd00::/8, 192.0.2.7) nor a host name with an optional port (registry.internal, "
                    "registry.internal:5000)"
                )
            hosts.update((name, p) for p in ports_of(int(written) if written else None))
        return cls(allow_private=allow_private, networks=tuple(networks), hosts=frozenset(hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        """The configured policy. The service's own registry and the Docker Hub endpoints are
        named by the operator, so they are allowed like listed host names, on the port they
        are configured with."""
        configured = [settings.tutum_registry_host] if settings.tutum_registry_host else []
        for url in (settings.docker_hub_registry_url, settings.docker_hub_api_url):
            parts = urlsplit(url)
            if parts.hostname:
                port = parts.port or (80 if parts.scheme == "http" else 443)
                name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
                configured.append(f"{name}:{port}")
        return cls.parse(
            settings.allowed_registry_networks, allow_private=settings.allow_private_registries,
            trusted_hosts=configured,
        )

    def host_listed(self, host: str | None, port: int | None = None) -> bool:
        """True when `host` (`name[:port]`; `port` wins over a port in it) is allowed by name
        on that port; a host without a port is reached on DEFAULT_PORTS, any of them counts."""
        if host is None:
            return False
        name, written = split_host(host)
        return any((name, p) in self.hosts for p in ports_of(port if port is not None else written))

    def refusal(self, address: str | IPAddress, host: str | None = None, port: int | None = None) -> Refusal | None:
        """Why `address` (reached as `host` on `port`, if by name) may not be contacted, or None."""
        ip = literal_address(address) if isinstance(address, str) else address
        if ip is None:
            return Refusal(Kind.UNUSABLE)
        listed_host = self.host_listed(host, port)
        refusals = []
        for dest, guess in destinations(ip):
            kind = classify(dest)
            if guess and kind in (Kind.PUBLIC, Kind.RESERVED, Kind.UNUSABLE):
                continue  # zeros and prefix bits read as an address: not a destination
            if not self._allows(dest, kind, listed_host):
                refusals.append(Refusal(kind, embedded=dest.version != ip.version))
        return min(refusals, key=lambda r: _SEVERITY.index(r.kind), default=None)

    def _allows(self, ip: IPAddress, kind: Kind, listed_host: bool) -> bool:
        if kind in (Kind.METADATA, Kind.UNUSABLE):
            return False
        if kind is Kind.PUBLIC or any(ip in n for n in self.networks if n.version == ip.version):
            return True
        if kind is Kind.LINK_LOCAL:
            return False
        return listed_host or (self.allow_private and kind in (Kind.LOOPBACK, Kind.PRIVATE))

    def screen(
        self, addresses: Iterable[str], host: str | None, port: int | None = None,
    ) -> tuple[list[str], Refusal | None]:
        """The addresses that may be contacted, and the first refusal (None if none was)."""
        allowed: list[str] = []
        first: Refusal | None = None
        for address in addresses:
            refusal = self.refusal(address, host, port)
            if refusal is None:
                allowed.append(address)
            elif first is None:
                first = refusal
        return allowed, first
