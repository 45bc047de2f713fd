"""Authentication of webhook senders (REGISTRY-NOTES "Webhooks we receive"): a static
header secret, a secret token in the URL, or an HMAC-SHA256 signature of the body. Every
comparison is constant-time, and an empty secret never matches.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from core.settings import Settings


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


def parse_secret_overrides(raw: str) -> dict[str, str]:
    """`WEBHOOK_SECRETS`: comma-separated `<receiver or registry host>=<secret>` pairs."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, secret = item.strip().partition("=")
        if sep and key.strip() and secret.strip():
            out[key.strip().lower()] = secret.strip()
    return out


def secrets_for(
    receiver: str, host: str | None, default: str, overrides: Mapping[str, str], own: str = ""
) -> list[str]:
    """The secret a receiver accepts: the pinned registry host's (`?host=`) from
    WEBHOOK_SECRETS, else the receiver's own (`own`, WEBHOOK_SECRET_<RECEIVER>), else the
    receiver's entry in WEBHOOK_SECRETS, else WEBHOOK_SECRET. An empty list: the receiver is
    disabled. Exactly one secret is returned, so one receiver's secret never opens another."""
    if host and host.lower() in overrides:
        return [overrides[host.lower()]]
    if own:
        return [own]
    if receiver.lower() in overrides:
        return [overrides[receiver.lower()]]
    return [default] if default else []


def receiver_secrets(receiver: str, host: str | None, settings: Settings) -> list[str]:
    """secrets_for() from the settings: `webhook_secret_<receiver>` is the receiver's own."""
    own = getattr(settings, f"webhook_secret_{receiver}", "")
    return secrets_for(
        receiver, host, settings.webhook_secret, parse_secret_overrides(settings.webhook_secrets),
        own if isinstance(own, str) else "",
    )
