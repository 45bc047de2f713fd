"""A stub for the API's registry-host resolver (api/targets.py), so that no test resolves a
name through the network: unknown names get one public address, which nothing contacts."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

from aiohttp import web

from api.targets import RESOLVER, SystemResolver

PUBLIC_ADDRESS = "93.184.215.14"  # public and never contacted: the API does not connect


class StubResolver(SystemResolver):
    """`hosts` maps names to addresses (an empty list: DNS says there is no such name);
    other names resolve to `default`, or do not exist when `default` is None."""

    def __init__(
        self, hosts: Mapping[str, Sequence[str]] | None = None, *, default: Sequence[str] | None = (PUBLIC_ADDRESS,)
    ) -> None:
        super().__init__()
        self.hosts = {"localhost": ["127.0.0.1", "::1"], **{k: list(v) for k, v in (hosts or {}).items()}}
        self.default = list(default) if default is not None else None
        self.asked: list[str] = []

    async def resolve(self, hostname: str) -> list[str]:
        self.asked.append(hostname)
        found = self.hosts.get(hostname, self.default)
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(found)


def stub_resolver(app: web.Application, hosts: Mapping[str, Sequence[str]] | None = None, **kw: object) -> StubResolver:
    """Give `app` (not started yet) a StubResolver; returns it."""
    stub = StubResolver(hosts, **kw)  # type: ignore[arg-type]
    app[RESOLVER] = stub
    return stub
