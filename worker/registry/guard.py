"""SSRF guard (SPEC §6): the worker fetches from user-supplied hosts.

Which addresses may be contacted is core/address_policy.py (the API checks registrations
with the same rules). Here the policy is applied three ways, because each alone has a hole:
- after DNS resolution, by `GuardedResolver` inside the session's connector (a name that
  resolves to a forbidden address never gets a socket);
- to literal-IP hosts, which aiohttp never passes to the resolver (`Guard.check_url`);
- on every redirect hop, which the client follows by hand (`Guard.check_url` again).

Refusals name the host as the caller wrote it, never the address it resolved to.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from core.address_policy import AddressPolicy, Refusal, is_odd_ipv4, literal_address
from worker.registry.errors import ForbiddenTargetError


class Guard:
    """The policy, shared by the resolver and the client. `allow_private` alone is the old
    switch (ALLOW_PRIVATE_REGISTRIES); `policy` is the whole configuration."""

    def __init__(self, *, allow_private: bool = False, policy: AddressPolicy | None = None) -> None:
        self.policy = policy if policy is not None else AddressPolicy(allow_private=allow_private)

    @property
    def allow_private(self) -> bool:
        return self.policy.allow_private

    def refusal(self, address: str, host: str | None = None) -> Refusal | None:
        return self.policy.refusal(address, host)

    def check_address(self, address: str, host: str | None = None) -> None:
        """Raise ForbiddenTargetError if `address` (reached as `host`) may not be contacted."""
        refusal = self.refusal(address, host)
        if refusal is not None:
            raise _refused(host or address, refusal, "is" if host in (None, address) else "resolves to")

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is a forbidden literal IP, or whose scheme is not http(s).
        Names are checked after resolution by GuardedResolver."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ForbiddenTargetError(f"refused a {parts.scheme or 'relative'} URL")
        host = parts.hostname or ""
        if not host:
            raise ForbiddenTargetError("refused a URL without a host")
        if literal_address(host) is None:
            # a name; also catch the octal, hex and short spellings of addresses that
            # resolvers accept (`0177.0.0.1`, `0x7f.1`, `2130706433`)
            if is_odd_ipv4(host):
                raise ForbiddenTargetError(f"refused the numeric host {host!r}")
            return
        self.check_address(host)


def _refused(shown: str, refusal: Refusal, verb: str) -> ForbiddenTargetError:
    return ForbiddenTargetError(f"refused to contact {shown}: {refusal.message('it', verb)}")


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
        allowed = [r for r in results if self.guard.refusal(r["host"], host) is None]
        if not allowed:
            first = next((self.guard.refusal(r["host"], host) for r in results), None)
            if first is not None:
                raise _refused(host, first, "resolves to")
            raise ForbiddenTargetError(f"refused to contact {host}: it resolves to nothing")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose DNS answers pass the guard; `guard` is read by the client so
    literal IPs and redirect hops follow the same policy. `inner` resolves (tests: a stub)."""

    def __init__(self, guard: Guard, *, inner: AbstractResolver | None = None, **kwargs: Any) -> None:
        super().__init__(resolver=GuardedResolver(guard, inner), **kwargs)
        self.guard = guard


def make_session(
    *, allow_private: bool = False, policy: AddressPolicy | None = None, timeout: float, limit: int = 100,
    user_agent: str = "registry-sync/0.1",
) -> aiohttp.ClientSession:
    """The worker's HTTP session for registry I/O; call it inside the running event loop and
    close it at shutdown. `policy` (AddressPolicy.from_settings) wins over `allow_private`.
    Proxies from the environment are ignored (they would bypass the guard's view of the
    destination)."""
    guard = Guard(allow_private=allow_private, policy=policy)
    connector = GuardedConnector(guard, limit=limit, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,
        headers={"User-Agent": user_agent},
    )
