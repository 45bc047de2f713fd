"""Registries that never answer: a listening socket that the kernel accepts connections on
(its backlog) and nobody ever reads. Each loopback address (127.0.0.0/8) is a host of its
own, so one test can stand up many hanging hosts without any name resolution."""

from __future__ import annotations

import socket


class HangingRegistry:
    """Accepts TCP connections on `address` and never answers."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(512)

    @property
    def host(self) -> str:
        address, port = self.sock.getsockname()[:2]
        return f"{address}:{port}"

    def close(self) -> None:
        self.sock.close()


def hanging_hosts(n: int) -> list[HangingRegistry]:
    """`n` hanging registries, each on a loopback address of its own (127.0.0.2, .3, …)."""
    return [HangingRegistry(f"127.0.0.{2 + i}") for i in range(n)]
