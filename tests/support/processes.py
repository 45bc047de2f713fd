"""Run real `registry-sync` commands as child processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson


class Service:
    """`registry-sync <args>` in its own process group, its output kept in a file."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.args = args
        self._log = tempfile.NamedTemporaryFile(prefix=f"rs-{args[0]}-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict]:
        """Parsed JSON log lines whose event is `name`."""
        out = []
        for line in self.output().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if event.get("event") == name:
                    out.append(event)
        return out

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crashed host would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid` in MB (Linux /proc); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def service_env(dsn: str, redis_url: str, port: int | None = None, **settings: str) -> dict[str, str]:
    """The environment of a test's `registry-sync` processes: their database and Redis, the
    suite's SECRET_KEY, loopback only, registries on loopback allowed, JSON logs at info;
    `settings` (variable names) add to it or override it."""
    from tests.conftest import TEST_SECRET_KEY

    env = {
        "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SECRET_KEY": TEST_SECRET_KEY, "BIND_HOST": "127.0.0.1",
        "ALLOW_PRIVATE_REGISTRIES": "1", "LOG_FORMAT": "json", "LOG_LEVEL": "info",
    }
    if port is not None:
        env["PORT"] = str(port)
    return {**env, **settings}


@dataclass
class Stack:
    """`registry-sync` processes sharing one environment (a database, a Redis database, an API
    port), and the client calls the end-to-end tests make against them."""

    env: dict[str, str]
    port: int
    services: list[Service] = field(default_factory=list)

    def start(self, *args: str, **env: str) -> Service:
        svc = Service(list(args), {**self.env, **env})
        self.services.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in self.services:
            svc.stop()

    def http(self, method: str, path: str, *, port: int | None = None, user: str = "", key: str = "",
             body: Any = None, timeout: float = 20, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """(status, decoded JSON body, or the text when it is not JSON) of one API request."""
        headers = {"Content-Type": "application/json", **(headers or {})}
        if user:
            headers["Authorization"] = f"ApiKey {user}:{key}"
        req = urllib.request.Request(
            f"http://127.0.0.1:{port or self.port}{path}", method=method, headers=headers,
            data=json.dumps(body).encode() if body is not None else None,
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode()

    def sql(self, query: str, *args: Any) -> Any:
        """The first column of the first row of `query` on the stack's database."""
        async def run() -> Any:
            conn = await asyncpg.connect(self.env["DATABASE_URL"])
            try:
                return await conn.fetchval(query, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def account(self, name: str) -> str:
        """Create an account with the real CLI; its API key."""
        svc = self.start("create-account", name)
        assert svc.proc.wait(30) == 0, svc.output()
        return svc.output().strip().splitlines()[-1]

    def up(self, port: int | None = None, path: str = "/healthz") -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.port}{path}", timeout=1):
                return True
        except OSError:
            return False
