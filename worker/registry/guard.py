"""SSRF guard (SPEC §6): the worker fetches from user-supplied hosts.

Which addresses may be contacted is core/address_policy.py (the API checks registrations
with the same rules). Here the policy is applied three ways, because each alone has a hole:
- after DNS resolution, by `GuardedResolver` inside the session's connector (a name that
  resolves to a forbidden address never gets a socket);
- to literal-IP hosts, which aiohttp never passes to the resolver (`Guard.check_url`);
- on every redirect hop, which the client follows by hand (`Guard.check_url` again).

A host allowed by name (the service's own registry, the Docker Hub URLs, names in
ALLOWED_REGISTRY_NETWORKS) is allowed on its configured port, and only as the registry a
request is for: a redirect or a token realm of another registry never leads there
(`Guard.check_hop`), or any registry could make the worker read the own registry for it.

Refusals name the host as the caller wrote it, never the address it resolved to; a name
that cannot be used, because of its addresses or because it does not resolve, gets one
answer (core.address_policy.NAME_RULE).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from core.address_policy import (
    NAME_RULE,
    AddressPolicy,
    Refusal,
    is_odd_ipv4,
    literal_address,
    same_endpoint,
    split_host,
)
from worker.registry.errors import ForbiddenTargetError


class Guard:
    """The policy, shared by the resolver and the client. `allow_private` alone is the old
    switch (ALLOW_PRIVATE_REGISTRIES); `policy` is the whole configuration."""

    def __init__(self, *, allow_private: bool = False, policy: AddressPolicy | None = None) -> None:
        self.policy = policy if policy is not None else AddressPolicy(allow_private=allow_private)

    @property
    def allow_private(self) -> bool:
        return self.policy.allow_private

    def refusal(self, address: str, host: str | None = None, port: int | None = None) -> Refusal | None:
        return self.policy.refusal(address, host, port)

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

    def check_hop(self, url: str, registry: str) -> None:
        """Refuse `url` when it leads away from the registry host `registry` (a redirect, a
        token realm) to a host that is allowed by name: that allowance is for requests to
        that registry itself."""
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        name, port = split_host(netloc)
        if literal_address(name) is not None or same_endpoint(netloc, registry):
            return
        port = port or (80 if parts.scheme == "http" else 443)
        if self.policy.host_listed(name, port):
            raise ForbiddenTargetError(
                f"refused to follow {registry} to {name}: a host allowed by name is contacted only "
                "as the registry itself, never by a redirect or token realm of another registry"
            )


def _refused(shown: str, refusal: Refusal, verb: str) -> ForbiddenTargetError:
    return ForbiddenTargetError(f"refused to contact {shown}: {refusal.message('it', verb)}")


def _unusable_name(host: str) -> ForbiddenTargetError:
    """The one answer for a name with no address that may be contacted (NAME_RULE). Its
    resolution may change, so it is retried later like a transient error, not within a call."""
    error = ForbiddenTargetError(f"refused to contact {host}: {NAME_RULE}", transient=True)
    error.give_up = True
    return error


class GuardedResolver(AbstractResolver):
    """Wraps aiohttp's default resolver and drops forbidden addresses; raises
    ForbiddenTargetError when none is left, or when the name does not resolve (the same
    error: no connection is attempted)."""

    def __init__(self, guard: Guard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await self._inner.resolve(host, port, family)
        except OSError:  # no such name, or DNS failed: told apart, it would be an oracle
            raise _unusable_name(host) from None
        allowed = [r for r in results if self.guard.refusal(r["host"], host, port or None) is None]
        if not allowed:
            raise _unusable_name(host)
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
