"""Authentication of webhook senders (REGISTRY-NOTES "Webhooks we receive"): a static
header secret, a secret token in the URL, or an HMAC-SHA256 signature of the body. Every
comparison is constant-time, and an empty secret never matches.

Operator receivers (secrets from the environment) are bound to registry hosts: each secret
speaks for one (receiver, host) pair (`operator_bindings`), and the host an event is about
comes from the secret that opened the receiver, never from the payload (SPEC §3). Account
receivers (core/receivers.py) speak for their account's images only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence

from core import webhooks as wh
from core.names import HUB_ALIASES, HUB_HOST, InvalidNameError, parse_registry_host
from core.settings import ConfigError, Settings


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _any_equal(given: str, secrets: Sequence[str]) -> bool:
    # Every candidate is compared (no early exit) and empty secrets never match.
    ok = False
    for secret in secrets:
        ok |= bool(secret) and _equal(given, secret)
    return ok


def bearer_ok(header: str | None, secrets: Sequence[str]) -> bool:
    """`Authorization: Bearer <secret>` (CNCF registry). Harbor sends the configured header
    value verbatim, so a bare `<secret>` is accepted too."""
    if not header:
        return False
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer" and rest:
        value = rest.strip()
    return _any_equal(value, secrets)


def token_ok(token: str | None, secrets: Sequence[str]) -> bool:
    """A secret token in the URL path (Docker Hub, Quay)."""
    return bool(token) and _any_equal(token or "", secrets)


def sign(body: bytes, secret: str) -> str:
    """The signature header value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """`X-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` (generic build events)."""
    if not header:
        return False
    return _any_equal(header.strip().lower(), [sign(body, s) if s else "" for s in secrets])


# The registry host an operator receiver speaks for when its secret names none. The
# distribution registry, Harbor and the generic build event have no host of their own: the
# service's own registry (TUTUM_REGISTRY_HOST), else only explicit `<receiver>@<host>` entries.
DEFAULT_HOSTS = {wh.DOCKERHUB: HUB_HOST, wh.QUAY: "quay.io", wh.GITHUB: wh.GITHUB_HOST}


def default_host(receiver: str, settings: Settings) -> str | None:
    """The host a receiver's unbound secrets (WEBHOOK_SECRET, WEBHOOK_SECRET_<RECEIVER>,
    `<receiver>=`) are bound to; None when it has none."""
    own = settings.tutum_registry_host.strip().lower()
    return DEFAULT_HOSTS.get(receiver) or (_host(own, "TUTUM_REGISTRY_HOST") if own else None)


def canonical_host(raw: str) -> str:
    """A registry host as image names have it (Docker Hub's aliases: HUB_HOST); raises
    InvalidNameError saying why it is not one."""
    host = parse_registry_host(raw.strip().lower())
    return HUB_HOST if host in HUB_ALIASES else host


def _host(raw: str, where: str) -> str:
    try:
        return canonical_host(raw)
    except InvalidNameError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# receiver → {registry host: secret}: one secret per (receiver, host)
Bindings = Mapping[str, Mapping[str, str]]


def operator_bindings(settings: Settings) -> dict[str, dict[str, str]]:
    """Each operator receiver's secrets, each bound to one registry host (docs/webhooks.md).
    Where two settings give a (receiver, host) a secret, the first of these wins:
    `<receiver>@<host>=` in WEBHOOK_SECRETS; `<host>=` in WEBHOOK_SECRETS (every receiver);
    then, for the receiver's default host only, WEBHOOK_SECRET_<RECEIVER>, `<receiver>=` in
    WEBHOOK_SECRETS, WEBHOOK_SECRET. So a receiver with a secret of its own never takes the
    shared one, and no secret opens a receiver or a host it is not bound to. Raises
    ConfigError for an entry naming an unknown receiver or an invalid host (the message
    never shows the secret)."""
    per_receiver: list[tuple[str, str, str]] = []
    per_host: list[tuple[str, str]] = []
    for_default: dict[str, str] = {}
    for item in settings.webhook_secrets.split(","):
        key, sep, secret = item.strip().partition("=")
        key, secret = key.strip().lower(), secret.strip()
        if not (sep and key and secret):
            continue
        receiver, at, host = key.partition("@")
        if at:
            if receiver not in wh.SOURCES:
                raise ConfigError(f"WEBHOOK_SECRETS: {receiver!r} is not a receiver ({', '.join(wh.SOURCES)})")
            per_receiver.append((receiver, _host(host, f"WEBHOOK_SECRETS entry {key!r}"), secret))
        elif key in wh.SOURCES:
            for_default.setdefault(key, secret)
        else:
            per_host.append((_host(key, f"WEBHOOK_SECRETS entry {key!r}"), secret))
    out: dict[str, dict[str, str]] = {r: {} for r in wh.SOURCES}
    for receiver, host, secret in per_receiver:
        out[receiver].setdefault(host, secret)
    for host, secret in per_host:
        for receiver in wh.SOURCES:
            out[receiver].setdefault(host, secret)
    for receiver in wh.SOURCES:
        home = default_host(receiver, settings)
        own = getattr(settings, f"webhook_secret_{receiver}", "")
        for secret in (own, for_default.get(receiver, ""), settings.webhook_secret):
            if home and secret:
                out[receiver].setdefault(home, secret)
    return out


def accepted_hosts(bindings: Mapping[str, str], accepts: Callable[[str], bool]) -> frozenset[str]:
    """The hosts whose bound secret the request carries (`accepts(secret)`). Every binding
    is checked, none skipped on a match, so the time says nothing about which one matched."""
    found = set()
    for host, secret in bindings.items():
        if secret and accepts(secret):
            found.add(host)
    return frozenset(found)
