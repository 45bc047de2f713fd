"""What the events hub (api/stream.py) keeps of its clients: the bytes it writes to them, each
subscriber's transport and progress, and the catalog names each subscribed account shadows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

MESSAGE_BYTES = 1024  # EVENTS_BUFFER counts messages of this size
WS, SSE, SSE_UNCHUNKED = 0, 1, 2  # what a subscriber's transport carries


def ws_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


@dataclass(frozen=True)
class Batch:
    """Messages ready for the wire, by transport: WebSocket frames, SSE records as one
    HTTP/1.1 chunk (the stream's response is chunked), and the bare records (HTTP/1.0)."""

    wire: tuple[bytes, bytes, bytes]

    @classmethod
    def of(cls, bodies: list[bytes]) -> Batch:
        records = b"".join(b"data: %b\n\n" % b for b in bodies)
        chunk = b"%x\r\n%b\r\n" % (len(records), records)
        return cls((b"".join(ws_frame(b) for b in bodies), chunk, records))


class Subscriber:
    """One connected client: the transport the hub writes to, how far it has been written
    (`sent`: the hub's number of the last change it has had; at first, the last change the
    hub had received when the client joined: a stream starts at its connection), and why it
    was closed."""

    __slots__ = ("account_id", "done", "kind", "reason", "sent", "transport")

    def __init__(self, account_id: int, transport: asyncio.Transport, kind: int, sent: int) -> None:
        self.account_id = account_id
        self.transport = transport
        self.kind = kind
        self.sent = sent
        self.reason: str | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.done.set_result(None)


class TooManyStreamsError(Exception):
    """The account has EVENTS_MAX_PER_ACCOUNT streams open on this process already."""


class Shadows:
    """The names that subscribed accounts own and the catalog has too. The account sees its
    own image at that URI (SPEC §1), so the catalog image's changes are not about anything it
    can see. Read when an account's stream connects (queries.shadowed_names), then kept by its
    own images' creates and deletes (a name added that the catalog lacks does no harm)."""

    def __init__(self) -> None:
        self._names: dict[int, set[str]] = {}  # account -> names
        self._accounts: dict[str, set[int]] = {}  # name -> accounts

    def names(self, account_id: int) -> set[str] | tuple[()]:
        return self._names.get(account_id, ())

    def accounts(self, name: str) -> set[int] | tuple[()]:
        return self._accounts.get(name, ())

    def add(self, account_id: int, names: Iterable[str]) -> None:
        mine = self._names.setdefault(account_id, set())
        for name in names:
            mine.add(name)
            self._accounts.setdefault(name, set()).add(account_id)

    def follow(self, account_id: int, action: str, name: str) -> None:
        """An own image of `account_id` was created or deleted (followed for subscribed
        accounts only)."""
        if account_id not in self._names:
            return
        if action == "create":
            self.add(account_id, (name,))
        elif action == "delete":
            self._discard(account_id, name)

    def drop(self, account_id: int) -> None:
        """The account's last stream here closed."""
        for name in tuple(self._names.get(account_id, ())):
            self._discard(account_id, name)
        self._names.pop(account_id, None)

    def _discard(self, account_id: int, name: str) -> None:
        self._names[account_id].discard(name)
        accounts = self._accounts.get(name)
        if accounts is not None:
            accounts.discard(account_id)
            if not accounts:
                del self._accounts[name]
