"""Registry credentials and account webhook receiver secrets encrypted at rest (Fernet), keys
derived from SECRET_KEY with HKDF.

A SECRET_KEY becomes a Fernet key by HKDF-SHA256 with a fixed info label. Release 1 derived
it as one SHA-256 of the secret: tokens sealed that way still open (the legacy derivation is
tried last, for decryption only) and `registry-sync rotate-secret` re-seals them.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter
from dataclasses import dataclass

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HKDF_INFO = b"registry-sync credentials v2"
MIN_SECRET_LENGTH = 32
MIN_SECRET_BITS = 128  # estimated from the key's own character frequencies
GENERATE_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


@dataclass(frozen=True, repr=False)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never leak the password through a log or traceback
        return f"Credentials(username={self.username!r}, password='***')"


def weak_secret_reason(secret: str) -> str | None:
    """Why `secret` is too weak to be SECRET_KEY, or None when it is fine: at least 32
    characters and at least 128 bits by a Shannon estimate of its characters (so a repeated
    or dictionary-like value such as 'aaaa…' or 'changeme…' is refused)."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"it has {len(secret)} characters, fewer than {MIN_SECRET_LENGTH}"
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    if per_char * len(secret) < MIN_SECRET_BITS:
        return "it is too predictable (too few distinct characters)"
    return None


def check_secret_key(secret: str, name: str = "SECRET_KEY") -> None:
    """Raises ValueError with a message that says how to make a good key."""
    reason = weak_secret_reason(secret)
    if reason:
        raise ValueError(f"{name} is too weak: {reason}. Generate one with: {GENERATE_HINT}")


def derive_key(secret: str) -> bytes:
    """The Fernet key (urlsafe base64 of 32 bytes) of a SECRET_KEY."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))


def legacy_key(secret: str) -> bytes:
    """Release 1's derivation (one SHA-256): for decrypting old tokens only."""
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


class CredentialBox:
    """Seals with SECRET_KEY; opens with it, with any key of SECRET_KEY_OLD, and with any of
    them derived as release 1 did."""

    def __init__(self, secret_key: str, old_keys: tuple[str, ...] = ()) -> None:
        keys = (secret_key, *old_keys)
        self._primary = Fernet(derive_key(secret_key))
        self._fernet = MultiFernet(
            [self._primary, *(Fernet(derive_key(k)) for k in old_keys), *(Fernet(legacy_key(k)) for k in keys)]
        )

    def seal(self, creds: Credentials) -> bytes:
        payload = orjson.dumps({"username": creds.username, "password": creds.password})
        return self._primary.encrypt(payload)

    def seal_text(self, text: str) -> bytes:
        """Any other secret kept at rest as text (an account's webhook receiver secrets, an
        image's build token)."""
        return self.seal_bytes(text.encode())

    def open_text(self, token: bytes) -> str:
        """Raises ValueError when the token was made with an unknown key or was altered."""
        return self.open_bytes(token).decode()

    def open(self, token: bytes) -> Credentials:
        """Raises ValueError when the token was made with an unknown key or was altered."""
        try:
            data = orjson.loads(self._fernet.decrypt(bytes(token)))
        except InvalidToken as exc:
            raise ValueError("credentials cannot be decrypted with SECRET_KEY") from exc
        return Credentials(data["username"], data["password"])

    def seal_bytes(self, secret: bytes) -> bytes:
        """Seal a raw secret (a subscription's signing key) with SECRET_KEY; `reseal` and
        `is_current` work on these tokens too."""
        return self._primary.encrypt(secret)

    def open_bytes(self, token: bytes) -> bytes:
        """Raises ValueError when the token was made with an unknown key or was altered."""
        try:
            return self._fernet.decrypt(bytes(token))
        except InvalidToken as exc:
            raise ValueError("the secret cannot be decrypted with SECRET_KEY") from exc

    def is_current(self, token: bytes) -> bool:
        """True when `token` is sealed with SECRET_KEY as derived now (nothing to re-seal)."""
        try:
            self._primary.decrypt(bytes(token))
        except InvalidToken:
            return False
        return True

    def reseal(self, token: bytes) -> bytes:
        """The same credentials sealed with SECRET_KEY; ValueError when no key opens it."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise ValueError("credentials cannot be decrypted with SECRET_KEY or SECRET_KEY_OLD") from exc
