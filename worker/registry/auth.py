"""WWW-Authenticate challenges and the bearer-token cache (no I/O)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.crypto import Credentials
from worker.registry.errors import RegistryProtocolError

MIN_TOKEN_SECONDS = 60.0  # expires_in defaults to, and is treated as at least, 60 s
TOKEN_MARGIN_SECONDS = 5.0  # drop a token this long before it expires
MAX_CACHED_TOKENS = 10_000


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def _skip_space(header: str, i: int) -> int:
    while i < len(header) and header[i] in " \t":
        i += 1
    return i


def _token(header: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(header) and header[i] not in ' \t,="':
        i += 1
    return header[start:i], i


def _quoted(header: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    i += 1  # opening quote
    while i < len(header) and header[i] != '"':
        if header[i] == "\\" and i + 1 < len(header):
            i += 1
        out.append(header[i])
        i += 1
    return "".join(out), i + 1


def parse_challenges(header: str | None) -> list[Challenge]:
    """All challenges of one WWW-Authenticate value, e.g.
    `Bearer realm="https://auth/token",service="registry",scope="a,b", Basic realm="x"`.
    Quoted values may contain commas; unknown junk is skipped, never raised."""
    challenges: list[Challenge] = []
    if not header:
        return challenges
    i, n = 0, len(header)
    current: Challenge | None = None
    while i < n:
        i = _skip_space(header, i)
        if i < n and header[i] == ",":
            i += 1
            continue
        word, j = _token(header, i)
        if not word:
            i = j + 1  # stray quote or '='
            continue
        k = _skip_space(header, j)
        if k < n and header[k] == "=" and current is not None:
            k = _skip_space(header, k + 1)
            if k < n and header[k] == '"':
                value, k = _quoted(header, k)
            else:
                value, k = _token(header, k)
            current.params[word.lower()] = value
            i = k
            continue
        current = Challenge(word.lower())
        challenges.append(current)
        i = j
    return challenges


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Bearer when offered (with a realm), else Basic, else None."""
    for scheme in ("bearer", "basic"):
        for ch in challenges:
            if ch.scheme == scheme and (scheme == "basic" or ch.realm):
                return ch
    return None


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_token_response(body: bytes) -> tuple[str, float]:
    """(token, lifetime seconds) from a token endpoint's JSON answer."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RegistryProtocolError("token endpoint answered something that is not JSON") from exc
    if not isinstance(data, dict):
        raise RegistryProtocolError("token endpoint answer is not a JSON object")
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryProtocolError("token endpoint answer has no token")
    expires = data.get("expires_in")
    lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 0.0
    # issued_at may be missing or skewed: the local clock is the reference
    return token, max(lifetime, MIN_TOKEN_SECONDS)


TokenKey = tuple[str, str, str | None]  # (host, repository, username)


class TokenCache:
    """Bearer tokens per (host, repository, username) until expiry minus a margin.

    Shared by all coroutines of a worker: `lock(key)` lets one of them fetch while the
    others wait for its token instead of asking the token server too.
    """

    def __init__(self, max_size: int = MAX_CACHED_TOKENS, clock: Any = time.monotonic) -> None:
        self._tokens: OrderedDict[TokenKey, tuple[str, float]] = OrderedDict()
        self._locks: dict[TokenKey, asyncio.Lock] = {}
        self._max_size = max_size
        self._clock = clock

    def get(self, key: TokenKey) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if self._clock() >= expires_at:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token

    def put(self, key: TokenKey, token: str, lifetime: float) -> None:
        self._tokens[key] = (token, self._clock() + max(lifetime - TOKEN_MARGIN_SECONDS, 1.0))
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._max_size:
            old, _ = self._tokens.popitem(last=False)
            self._locks.pop(old, None)

    def drop(self, key: TokenKey, token: str | None = None) -> None:
        """Forget the token (only if it is still `token`, when given)."""
        entry = self._tokens.get(key)
        if entry is not None and (token is None or entry[0] == token):
            del self._tokens[key]

    def lock(self, key: TokenKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def __len__(self) -> int:
        return len(self._tokens)
