"""`registry-sync dev` as a user runs it: a real process, real embedded services, signals."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import asyncpg
import pytest

from tests.support.services import free_port, port_open, redis_db, run_tag, worker_index

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0  # pgserver's first start runs initdb
STOP_TIMEOUT = 30.0
KEY_RE = re.compile(r"ApiKey demo:([0-9a-f]+)")
REDIS_RE = re.compile(r"embedded Redis at redis://127\.0\.0\.1:(\d+)/")


class Dev:
    """A running `registry-sync dev`; its output is collected line by line by a thread."""

    def __init__(self, env: dict[str, str], port: int, *args: str) -> None:
        self.port = port
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "dev", "--port", str(port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if m := pattern.search(line):
                return m
        pytest.fail(f"no {pattern.pattern!r} from dev; output:\n{''.join(self.lines)}")

    def call(self, method: str, path: str, key: str, body: dict[str, str] | None = None) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"ApiKey demo:{key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1 only
                return int(resp.status)
        except HTTPError as exc:
            return exc.code

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; returns the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(STOP_TIMEOUT)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL if still running (a failed test); then wait for its output to end."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(STOP_TIMEOUT)

    def output(self) -> str:
        """Everything dev printed so far (all of it, once the process has exited)."""
        while True:
            try:
                self.lines.append(self._queue.get(timeout=0.5))
            except queue.Empty:
                return "".join(self.lines)


def fresh_redis(redis_url: str, area: str) -> str:
    """The URL of this area's Redis database, emptied: Celery messages an earlier stack left
    there name image ids of another database, which dev's worker would sync."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{redis_db(area)}"
    redis.Redis.from_url(url).flushdb()
    return url


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.pop("SECRET_KEY", None)
    env.pop("PORT", None)
    return {**env, "DATA_DIR": str(data_dir), "LOG_LEVEL": "warning", **extra}


def _child_pids(parent: int) -> set[int]:
    """Live children of `parent`, from /proc."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.add(int(pid))
    return found


def _running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_dev_starts_embedded_services_and_stops_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = Dev(_env(data_dir), free_port())
    try:
        started = time.monotonic()
        redis_port = int(dev.wait_for(REDIS_RE, START_TIMEOUT).group(1))
        key = dev.wait_for(KEY_RE, START_TIMEOUT).group(1)
        print(f"dev ready in {time.monotonic() - started:.1f}s")

        assert dev.call("GET", "/api/v1/image/", key) == 200
        assert dev.call("POST", "/api/v1/image/", key, {"name": "127.0.0.1:5999/demo/app"}) == 201
        assert (data_dir / "pg" / "PG_VERSION").exists()
        assert (data_dir / "secret_key").stat().st_mode & 0o077 == 0
        # the webhook receiver is usable at once: its secret is generated, kept and printed
        webhook_secret = (data_dir / "webhook_secret").read_text().strip()
        dev.wait_for(re.compile(re.escape(f"Authorization: Bearer {webhook_secret}")), START_TIMEOUT)

        code, seconds = dev.terminate()
        print(f"dev stopped in {seconds:.1f}s")
    finally:
        dev.kill()
    assert code == 0, dev.output()
    _assert_all_stopped(data_dir, dev.port, redis_port)

    # a second run reuses the data: same account, the same key (kept in the data folder)
    again = Dev(_env(data_dir), free_port())
    try:
        redis_port = int(again.wait_for(REDIS_RE, START_TIMEOUT).group(1))
        assert again.wait_for(KEY_RE, START_TIMEOUT).group(1) == key
        assert f"API key: {key} (the same as before" in "".join(again.lines)
        assert again.call("GET", "/api/v1/image/", key) == 200
        assert (data_dir / "demo_key").stat().st_mode & 0o077 == 0
        # already registered by the first run: the database survived it
        assert again.call("POST", "/api/v1/image/", key, {"name": "127.0.0.1:5999/demo/app"}) == 409
        code, _ = again.terminate()
    finally:
        again.kill()
    assert code == 0, again.output()
    _assert_all_stopped(data_dir, again.port, redis_port)


def _assert_all_stopped(data_dir: Path, port: int, redis_port: int) -> None:
    assert not port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", redis_port)
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    assert _processes_mentioning(str(data_dir / "pg")) == []


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A database with no schema on the test server, dropped afterwards."""
    name = f"rs_dev_test_{worker_index()}_{run_tag()}"
    base, _, query = database_url.partition("?")
    dsn = f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield dsn
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_dev_uses_configured_database_and_redis(
    tmp_path: Path, empty_database: str, redis_url: str
) -> None:
    data_dir = tmp_path / "data"
    # a Redis database of its own, so this run's worker takes no other test's tasks
    redis = fresh_redis(redis_url, "dev")
    dev = Dev(_env(data_dir, DATABASE_URL=empty_database, REDIS_URL=redis), free_port())
    try:
        key = dev.wait_for(KEY_RE, START_TIMEOUT).group(1)
        assert dev.call("GET", "/api/v1/image/", key) == 200
        children = _child_pids(dev.proc.pid)
        assert len(children) == 3  # web, worker, beat
        code, _ = dev.terminate()
    finally:
        dev.kill()
    assert code == 0, dev.output()
    assert _running(children) == set()
    assert not (data_dir / "pg").exists()
    assert not (data_dir / "redis").exists()
    assert "embedded" not in dev.output()


def test_dev_stops_everything_when_a_child_dies(
    tmp_path: Path, empty_database: str, redis_url: str
) -> None:
    redis = fresh_redis(redis_url, "dev")
    dev = Dev(_env(tmp_path, DATABASE_URL=empty_database, REDIS_URL=redis), free_port())
    try:
        dev.wait_for(KEY_RE, START_TIMEOUT)
        children = _child_pids(dev.proc.pid)
        [web] = _processes_mentioning(f"cli.main web --port {dev.port}")
        os.kill(int(web.split(":")[0]), signal.SIGKILL)
        code = dev.proc.wait(STOP_TIMEOUT)
    finally:
        dev.kill()
    assert code == 1
    assert "web exited with code -9" in dev.output()
    assert len(children) == 3
    assert _running(children) == set()


EXPORT_RE = re.compile(r"^\s*(export DATABASE_URL=.*)$", re.M)
SETTINGS_RE = re.compile(r"^dev: settings: (.*)$", re.M)


def _get_json(port: int, path: str, key: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"ApiKey demo:{key}"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1 only
        data: dict[str, Any] = json.loads(resp.read())
        return data


def _wait_json(port: int, path: str, key: str, ok: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = _get_json(port, path, key)
        if ok(last):
            return last
        time.sleep(0.3)
    pytest.fail(f"{path} never satisfied the check; last answer: {last}")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_newcomer_gets_the_catalog_a_shell_environment_and_a_hint_that_works(
    tmp_path: Path, redis_url: str,
) -> None:
    """`dev` on a clean data folder (embedded Postgres); another shell with only the printed
    variables; a local registry on a random port, which fails with a hint until the hint is
    followed from another shell, without a restart; the catalog loaded without a sync."""
    from core.catalog import read_catalog
    from tests.support.registry import RegistryServer, push_image

    data_dir = tmp_path / "data"
    # The test Redis, a database of its own: two embedded Redis servers started at the same
    # moment by two xdist workers could both pick dev's fixed port.
    redis = fresh_redis(redis_url, "spare")
    with RegistryServer() as reg:
        push_image(reg.url, "team/app", "v1", {"config": {"Cmd": ["sh"]}})
        dev = Dev(_env(data_dir, REDIS_URL=redis), free_port())
        try:
            key = dev.wait_for(KEY_RE, START_TIMEOUT).group(1)
            exports = dev.wait_for(EXPORT_RE, START_TIMEOUT).group(1)
            out = dev.output()
            # every default dev sets is said, and the curl lines are the README's
            said = SETTINGS_RE.search(out)
            assert said, out
            for name in ("LOG_FORMAT=console", "BIND_HOST=127.0.0.1", "ALLOW_PRIVATE_REGISTRIES=1",
                         "INSECURE_REGISTRIES=localhost:5000,127.0.0.1:5000", "WEBHOOK_SECRET=", "SECRET_KEY="):
                assert name in said.group(1)
            for line in readme_curl_lines():
                assert line.replace("<key>", key).replace(":8000/", f":{dev.port}/") in out

            jumpstarts = _get_json(dev.port, "/api/v1/image/?jumpstart=true&limit=1", key)
            assert jumpstarts["meta"]["total_count"] == len(read_catalog()) > 0

            # another shell: only the printed variables
            shell = dict(var.split("=", 1) for var in shlex.split(exports)[1:])
            assert set(shell) == {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}
            made = _cli(["create-account", "newbie"], shell)
            assert made.returncode == 0, made.stderr
            assert re.fullmatch(r"[0-9a-f]{64}", made.stdout.strip().splitlines()[-1]), "a 256-bit key"
            loaded = _cli(["load-catalog"], shell)
            assert loaded.returncode == 0 and "catalog loaded" in loaded.stdout, loaded.stderr
            printed = _cli(["env"], {"DATA_DIR": str(data_dir)})
            assert printed.returncode == 0 and printed.stdout.strip() == exports, printed.stderr

            # a registry on a random port, over TLS by default: the sync says what to do
            name = f"{reg.host}/team/app"
            assert dev.call("POST", "/api/v1/image/", key, {"name": name}) == 201
            status = _wait_json(dev.port, f"/api/v1/image/{name}/sync/", key,
                                lambda s: bool(s["error"]), START_TIMEOUT)
            hint = f"registry-sync dev --add-insecure-registry {reg.host}"
            assert "INSECURE_REGISTRIES" in status["error"] and hint in status["error"]

            # following the hint from another shell: no restart
            added = _cli(shlex.split(hint)[1:], {"DATA_DIR": str(data_dir), "PATH": os.environ["PATH"]})
            assert added.returncode == 0 and "the running dev uses them" in added.stdout, added.stderr
            _wait_json(dev.port, f"/api/v1/image/{name}/sync/", key,
                       lambda s: s["error"] is None and s["last_synced_at"] is not None, 30)
            image = _get_json(dev.port, f"/api/v1/image/{name}/", key)
            assert image["tags"] == [f"/api/v1/image/{name}/tag/v1/"] and image["state"] == "Success"
            assert _get_json(dev.port, f"/api/v1/registry/{reg.host}/", key)["is_ssl"] is False

            # dev said first what it would contact, and did not poll Docker Hub for the catalog
            assert out.splitlines()[0].startswith("dev: will contact ")
            assert "Docker Hub (registry-1.docker.io, hub.docker.com) only when someone reads" in out.splitlines()[0]
            assert _sql(shell["DATABASE_URL"], "SELECT count(*) FROM images WHERE owner_id IS NULL"
                        " AND (last_synced_at IS NOT NULL OR sync_error IS NOT NULL OR next_sync_at < 'infinity')") == 0
            code, _ = dev.terminate()
        finally:
            dev.kill()
        assert code == 0, dev.output()
        assert not (data_dir / "dev.env").exists()
        assert _cli(["env"], {"DATA_DIR": str(data_dir)}).returncode == 2


def _sql(dsn: str, query: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def readme_curl_lines() -> list[str]:
    """The curl lines the README shows for `dev` (with <key> and port 8000)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("`registry-sync dev` prints", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def test_the_readme_shows_the_curl_lines_dev_prints() -> None:
    from cli.dev import CURL_LINES

    assert readme_curl_lines() == [line.format(key="<key>", port=8000) for line in CURL_LINES]


def test_dev_refuses_a_weak_secret_key(tmp_path: Path) -> None:
    done = _cli(["dev", "--port", str(free_port())], {**_env(tmp_path), "SECRET_KEY": "short"})
    assert done.returncode == 2 and "SECRET_KEY is too weak" in done.stderr
    assert not (tmp_path / "pg").exists()


def test_a_name_registered_before_its_push_shows_its_tags_within_45_s(
    tmp_path: Path, empty_database: str, redis_url: str,
) -> None:
    """Register first, push after, with no registry notifications configured and dev's
    settings as a newcomer has them (only the database, Redis and the data folder are the
    test's, and the registry on its random port is given with --insecure-registry): the
    repository is missing at the first sync, retried from SYNC_BACKOFF_BASE_SECONDS (10 s,
    doubling), so the tags show within 45 s of the push (worker/missing.py)."""
    from tests.support.registry import RegistryServer, push_image

    redis = fresh_redis(redis_url, "dev")
    env = _env(tmp_path / "data", DATABASE_URL=empty_database, REDIS_URL=redis)
    assert not {k for k in env if k.startswith(("SYNC_", "REPOSITORY_", "BEAT_"))}, "dev's defaults only"
    with RegistryServer() as reg:  # no notifications
        dev = Dev(env, free_port(), "--insecure-registry", reg.host)
        try:
            key = dev.wait_for(KEY_RE, START_TIMEOUT).group(1)
            name = f"{reg.host}/team/later"
            assert dev.call("POST", "/api/v1/image/", key, {"name": name}) == 201
            status = _wait_json(dev.port, f"/api/v1/image/{name}/sync/", key, lambda s: bool(s["error"]), 30)
            assert "repository not found: push it, or check the name" in status["error"]
            assert "Next try in " in status["error"] and status["next_sync_at"] is not None

            push_image(reg.url, "team/later", "v1", {"created": "2024-01-01T00:00:00Z"})
            pushed = time.monotonic()
            _wait_json(dev.port, f"/api/v1/image/{name}/", key,
                       lambda i: i["tags"] == [f"/api/v1/image/{name}/tag/v1/"], 45)
            print(f"tags shown {time.monotonic() - pushed:.1f} s after the push")
            code, _ = dev.terminate()
        finally:
            dev.kill()
    assert code == 0, dev.output()
