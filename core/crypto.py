"""Registry credentials encrypted at rest (Fernet, key derived from SECRET_KEY)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet


@dataclass(frozen=True, repr=False)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never leak the password through a log or traceback
        return f"Credentials(username={self.username!r}, password='***')"


def _fernet(secret: str) -> Fernet:
    key = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
    return Fernet(key)


class CredentialBox:
    """Encrypts with SECRET_KEY; decrypts with it or any older key (for key rotation)."""

    def __init__(self, secret_key: str, old_keys: tuple[str, ...] = ()) -> None:
        self._fernet = MultiFernet([_fernet(k) for k in (secret_key, *old_keys)])

    def seal(self, creds: Credentials) -> bytes:
        payload = orjson.dumps({"username": creds.username, "password": creds.password})
        return self._fernet.encrypt(payload)

    def open(self, token: bytes) -> Credentials:
        """Raises ValueError when the token was made with an unknown key or was altered."""
        try:
            data = orjson.loads(self._fernet.decrypt(bytes(token)))
        except InvalidToken as exc:
            raise ValueError("credentials cannot be decrypted with SECRET_KEY") from exc
        return Credentials(data["username"], data["password"])
