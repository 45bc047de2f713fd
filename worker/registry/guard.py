"""SSRF guard (SPEC §6): the worker fetches from user-supplied hosts.

Always refused: link-local (169.254.0.0/16, fe80::/10), cloud metadata addresses,
unspecified (0.0.0.0, ::), multicast, reserved and broadcast. Refused unless
`allow_private`: private (RFC 1918, fc00::/7, 100.64.0.0/10 CGNAT) and loopback.

Applied three ways, because each alone has a hole:
- after DNS resolution, by `GuardedResolver` inside the session's connector (a name that
  resolves to a forbidden address never gets a socket);
- to literal-IP hosts, which aiohttp never passes to the resolver (`Guard.check_url`);
- on every redirect hop, which the client follows by hand (`Guard.check_url` again).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from worker.registry.errors import ForbiddenTargetError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _candidates(address: IPAddress) -> list[IPAddress]:
    """The addresses a connection to `address` really reaches: the IPv4 inside an
    IPv4-mapped IPv6 address, and both sides of a 6to4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            return [address, address.sixtofour]
    return [address]


def refusal(address: str | IPAddress, *, allow_private: bool) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return "is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%")[0])
    for candidate in _candidates(ip):
        if candidate in METADATA_ADDRESSES:
            return "is a cloud metadata address"
        if candidate.is_unspecified:
            return "is the unspecified address"
        if candidate.is_link_local:
            return "is link-local"
        if candidate.is_multicast:
            return "is multicast"
        if candidate.is_loopback:
            if not allow_private:
                return "is loopback (private registries are not allowed)"
            continue
        if isinstance(candidate, ipaddress.IPv4Address) and candidate.is_reserved:
            return "is a reserved address"  # 240.0.0.0/4 and the broadcast address
        if candidate.is_private or candidate in _CGNAT:
            if not allow_private:
                return "is a private address (private registries are not allowed)"
            continue
        if not candidate.is_global:
            return "is a reserved address"  # e.g. documentation and benchmarking ranges
    return None


class Guard:
    """The policy, shared by the resolver and the client."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def check_address(self, address: str, host: str | None = None) -> None:
        reason = refusal(address, allow_private=self.allow_private)
        if reason is not None:
            shown = address if host in (None, address) else f"{host} ({address})"
            raise ForbiddenTargetError(f"refused to contact {shown}: the address {reason}")

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is a forbidden literal IP, or whose scheme is not http(s).
        Names are checked after resolution by GuardedResolver."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ForbiddenTargetError(f"refused a {parts.scheme or 'relative'} URL")
        host = (parts.hostname or "").strip("[]")
        if not host:
            raise ForbiddenTargetError("refused a URL without a host")
        try:
            ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            # a name; also catch integer/hex spellings of addresses that resolvers accept
            if host.isdigit() or host.lower().startswith("0x"):
                raise ForbiddenTargetError(f"refused the numeric host {host!r}") from None
            return
        self.check_address(host)


class GuardedResolver(AbstractResolver):
    """Wraps aiohttp's default resolver and drops forbidden addresses; raises
    ForbiddenTargetError when none is left (no connection is attempted)."""

    def __init__(self, guard: Guard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [
            r for r in results if refusal(r["host"], allow_private=self.guard.allow_private) is None
        ]
        if not allowed:
            if results:
                self.guard.check_address(results[0]["host"], host)
            raise ForbiddenTargetError(f"refused to contact {host}: it resolves to nothing")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose DNS answers pass the guard; `guard` is read by the client so
    literal IPs and redirect hops follow the same policy."""

    def __init__(self, guard: Guard, **kwargs: Any) -> None:
        super().__init__(resolver=GuardedResolver(guard), **kwargs)
        self.guard = guard


def make_session(*, allow_private: bool, timeout: float) -> aiohttp.ClientSession:
    """The worker's HTTP session for registry I/O; call it inside the running event loop and
    close it at shutdown. Proxies from the environment are ignored (they would bypass the
    guard's view of the destination)."""
    connector = GuardedConnector(Guard(allow_private=allow_private), limit=100, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,
        headers={"User-Agent": "registry-sync/0.1"},
    )
