"""Registration refuses a registry the worker would not be allowed to contact (SPEC §6), at
once and with a sentence that never contains an address.

`POST /api/v1/image/` (and a `PATCH` that changes credentials, which the next sync sends to
the registry) resolves the registry host through `app[RESOLVER]` and applies the worker's
rules (core/address_policy.py): a literal address is judged as written; a name is refused
when none of its addresses may be contacted on its port, as the worker's resolver would
find. Docker Hub names are not checked: the operator configures where they are synced from.

No oracle: every name that cannot be used gets one answer, the rule (NAME_RULE), whether it
resolves to loopback, private, link-local or metadata addresses or does not resolve at all,
so registration cannot map internal DNS names. Only a DNS that cannot answer now (SERVFAIL,
a timeout) is a 503 "try again": it is about the resolver, the same for every name while it
lasts, and says nothing of what the name resolves to.

This check is the early answer, not the defence: DNS can change after registration, so the
worker checks again after every resolution and redirect.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from api.errors import BadRequestError, UnavailableError
from api.keys import SETTINGS
from core.address_policy import NAME_RULE, AddressPolicy, literal_address, split_host
from core.names import ImageName

# getaddrinfo's answers that mean "no such name", as opposed to "cannot answer now"
_NO_SUCH_NAME = frozenset(
    getattr(socket, code) for code in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, code)
)


class SystemResolver:
    """The resolver of the API process: the system's getaddrinfo, bounded in time. Tests put
    a subclass with a fixed mapping into `app[RESOLVER]`."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

    async def resolve(self, hostname: str) -> list[str]:
        """The addresses of `hostname`. Raises socket.gaierror when DNS has none or fails,
        TimeoutError when it does not answer within `timeout`."""
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(hostname, None, type=socket.SOCK_STREAM), self.timeout
        )
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


RESOLVER = web.AppKey("registry_resolver", SystemResolver)
ADDRESS_POLICY = web.AppKey("address_policy", AddressPolicy)


async def check_registry_host(app: web.Application, name: ImageName) -> None:
    """Raise BadRequestError (400, field `name`) when `name`'s registry may not be contacted,
    UnavailableError (503) when its host cannot be resolved right now."""
    if name.is_hub:
        return
    # without a port: the one the worker will use (INSECURE_REGISTRIES: plain http)
    default_port = 80 if name.host in app[SETTINGS].insecure_registries else 443
    await check_host(app, name.host, f"registry host '{name.host}'", "name", default_port)


async def check_host(app: web.Application, host: str, subject: str, field: str, default_port: int) -> None:
    """The rule of check_registry_host for any `host` (as in URLs and image names, with an
    optional port, else `default_port`): 400 naming `field` and `subject` when it may not be
    contacted, 503 when it cannot be resolved right now. Also for the endpoints of
    notification subscriptions."""
    policy = app[ADDRESS_POLICY]
    hostname, port = split_host(host)
    address = literal_address(hostname)
    if address is not None:
        refusal = policy.refusal(address)
        if refusal is not None:
            raise BadRequestError(refusal.message(subject, "is"), field=field)
        return
    unusable = BadRequestError(f"{subject} cannot be used: {NAME_RULE}", field=field)
    try:
        addresses = await app[RESOLVER].resolve(hostname)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            raise unusable from None
        raise _unresolvable(subject) from None
    except (TimeoutError, OSError):
        raise _unresolvable(subject) from None
    allowed, _ = policy.screen(addresses, hostname, default_port if port is None else port)
    if not allowed:
        raise unusable


def _unresolvable(subject: str) -> UnavailableError:
    return UnavailableError(
        f"{subject} cannot be resolved right now; try again shortly", headers={"Retry-After": "5"}
    )
