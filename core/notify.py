"""Outgoing notifications (SPEC §7): event types, subscription secrets and the Standard
Webhooks signature, shared by the API (which shows secrets) and the worker (which signs).

Standard Webhooks: a secret is `whsec_` + base64 of 24-64 random bytes and the HMAC key is
the decoded bytes; a delivery carries `webhook-id` (the same on every attempt),
`webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`, a space-separated
list of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` (one per secret in use: two
while a rotated secret is still honoured).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

TAG_PUSHED, TAG_MOVED, TAG_DELETED = "tag.pushed", "tag.moved", "tag.deleted"
IMAGE_STATE, SYNC_FAILING = "image.state", "sync.failing"
EVENT_TYPES = (TAG_PUSHED, TAG_MOVED, TAG_DELETED, IMAGE_STATE, SYNC_FAILING)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of the format, not a secret
SECRET_BYTES = 32

# A tag glob: the characters of tag names plus `*` (any run) and `?` (one character).
_GLOB = re.compile(r"[A-Za-z0-9_.*?-]{1,128}")


def is_tag_glob(pattern: str) -> bool:
    return bool(_GLOB.fullmatch(pattern))


def new_secret() -> bytes:
    """A fresh signing key (the raw bytes; `show_secret` gives the `whsec_` form)."""
    return secrets.token_bytes(SECRET_BYTES)


def show_secret(key: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(key).decode()


class Signer:
    """Signs deliveries with a subscription's keys; each key's HMAC state is computed once, so
    signing one more delivery costs only the hashing of its id, timestamp and body."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._macs = tuple(hmac.new(k, digestmod=hashlib.sha256) for k in keys)

    def header(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` value: one `v1,<base64>` signature of
        `{msg_id}.{timestamp}.{body}` per key, space-separated."""
        prefix = f"{msg_id}.{timestamp}.".encode()
        signatures = []
        for base in self._macs:
            mac = base.copy()
            mac.update(prefix)
            mac.update(body)
            signatures.append("v1," + base64.b64encode(mac.digest()).decode())
        return " ".join(signatures)


def signature_header(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of one delivery (Signer, for a single use)."""
    return Signer(keys).header(msg_id, timestamp, body)
