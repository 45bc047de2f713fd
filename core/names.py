"""Docker reference grammar: image names, tags, digests (SPEC §1 Names).

Grammar (distribution/reference): path components `[a-z0-9]+` joined by `.`, `_`, `__` or
runs of `-`, components joined by `/`; an optional registry host first, recognised only when
the name has a `/` and the first component contains `.` or `:` or is `localhost`. A host is a
DNS name, an IPv4 address in four decimal parts, or an IPv6 address in brackets
(`[2001:db8::1]:5000`, stored in its RFC 5952 form), each with an optional port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from core.address_policy import is_odd_ipv4

HUB_HOST = "registry.hub.docker.com"
# Hosts that mean Docker Hub: a name written with one of them is stored in its short form.
HUB_ALIASES = frozenset({HUB_HOST, "docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])(?:\.(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9]))*"
    r"(?::[0-9]{1,5})?"
)
_IPV6_HOST = re.compile(r"\[([0-9a-f:.]+)\](?::([0-9]{1,5}))?")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}")


class InvalidNameError(ValueError):
    """The message says what is wrong, in words a person understands."""


@dataclass(frozen=True)
class ImageName:
    name: str  # canonical API form: ubuntu, tutum/hello-world, host:5000/team/app
    host: str  # registry host; HUB_HOST for Docker Hub
    repository: str  # path on the registry: library/ubuntu, team/app

    @property
    def is_hub(self) -> bool:
        return self.host == HUB_HOST

    @property
    def public_url(self) -> str:
        if not self.is_hub:
            return ""
        if self.repository.startswith("library/"):
            return f"https://hub.docker.com/_/{self.repository.removeprefix('library/')}/"
        return f"https://hub.docker.com/r/{self.repository}/"


def parse_image_name(raw: object) -> ImageName:
    """Parse and canonicalise a docker image name; raise InvalidNameError saying why not."""
    if not isinstance(raw, str) or not raw:
        raise InvalidNameError("name must be a non-empty string")
    if len(raw) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"name is longer than {MAX_NAME_LENGTH} characters")
    if raw != raw.lower():
        raise InvalidNameError("name must be lower case")
    if any(c in raw for c in "@ \t\n"):
        raise InvalidNameError("name must not contain a digest, spaces or control characters")
    parts = raw.split("/")
    host = HUB_HOST
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        host = parse_registry_host(first)
        parts = parts[1:]
    for part in parts:
        if not part:
            raise InvalidNameError("name has an empty path component (a leading, trailing or double '/')")
        if not _COMPONENT.fullmatch(part):
            raise InvalidNameError(
                f"path component {part!r} is invalid: use lower-case letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    if ":" in "/".join(parts):
        raise InvalidNameError("name must not include a tag; register the repository name only")
    if host in HUB_ALIASES:
        host = HUB_HOST
        if parts[0] == "library" and len(parts) == 2:
            parts = parts[1:]
        repository = "/".join(parts) if len(parts) > 1 else f"library/{parts[0]}"
        return ImageName(name="/".join(parts), host=HUB_HOST, repository=repository)
    return ImageName(name=f"{host}/{'/'.join(parts)}", host=host, repository="/".join(parts))


def parse_registry_host(raw: str) -> str:
    """A registry `host[:port]` in canonical form; raise InvalidNameError saying why not."""
    port: str | None
    if raw.startswith("["):
        match = _IPV6_HOST.fullmatch(raw)
        try:
            address = ipaddress.IPv6Address(match.group(1)) if match else None
        except ValueError:
            address = None
        if match is None or address is None:
            raise InvalidNameError(
                f"registry host {raw!r} is not a valid [IPv6 address]:port (no zone ids)"
            )
        host, port = f"[{_rfc5952(address)}]", match.group(2)
    else:
        if not _DOMAIN.fullmatch(raw):
            raise InvalidNameError(f"registry host {raw!r} is not a valid host[:port]")
        host, _, port = raw.partition(":")
        if is_odd_ipv4(host):
            raise InvalidNameError(
                f"registry host {host!r} is not a valid host: an IPv4 address is written as four "
                "decimal numbers (no octal, hex or shortened forms)"
            )
    if port:
        if not 0 < int(port) < 65536:
            raise InvalidNameError(f"registry host {raw!r} has a port out of range")
        return f"{host}:{port}"
    return host


def canonical_host(host: str) -> str:
    """`host[:port]` as names store it (IPv6 in RFC 5952 form, lower case), for comparing
    configured hosts with the hosts of names; a host that is not valid is only lower-cased."""
    try:
        return parse_registry_host(host.strip().lower())
    except (InvalidNameError, ValueError):
        return host.strip().lower()


def _rfc5952(address: ipaddress.IPv6Address) -> str:
    """Lower-case hex groups, the longest run of two or more zero groups as `::` (the first of
    equals). Written out here because `str()` of an IPv4-mapped address differs between
    Python versions, and a stored name must not."""
    groups = [format(int(g, 16), "x") for g in address.exploded.split(":")]
    best, best_len, run_start = -1, 1, -1
    for i, g in enumerate([*groups, "end"]):
        if g == "0":
            run_start = i if run_start < 0 else run_start
            continue
        if run_start >= 0 and i - run_start > best_len:
            best, best_len = run_start, i - run_start
        run_start = -1
    if best < 0:
        return ":".join(groups)
    return ":".join(groups[:best]) + "::" + ":".join(groups[best + best_len:])


def is_valid_tag(tag: object) -> bool:
    return isinstance(tag, str) and TAG_RE.fullmatch(tag) is not None


def is_digest(value: str) -> bool:
    return DIGEST_RE.fullmatch(value) is not None
