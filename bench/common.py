"""What every benchmark needs: the local Postgres server and fresh databases on it, child
processes, polling, the wrk driver, and the processes and figures of the read benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis

from core.db import apply_schema

HOST = "127.0.0.1"


def with_db(dsn: str, dbname: str) -> str:
    """`dsn` pointed at database `dbname` (query string kept)."""
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{dbname}" + (f"?{query}" if query else "")


def server_dsn() -> str:
    """The server of DATABASE_URL, else the machine's Postgres on 127.0.0.1:5432."""
    url = os.environ.get("DATABASE_URL", "")
    return with_db(url, "postgres") if url else f"postgresql://postgres@{HOST}:5432/postgres"


async def recreate_database(server: str, dbname: str, *, schema: bool = True, drop_only: bool = False) -> str:
    """Drop `dbname` and (unless `drop_only`) create it again, with schema.sql applied when
    `schema`; returns its DSN."""
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        if not drop_only:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
    dsn = with_db(server, dbname)
    if schema and not drop_only:
        conn = await asyncpg.connect(dsn)
        try:
            await apply_schema(conn)
        finally:
            await conn.close()
    return dsn


# --- load from wrk (a separate process): one Lua script rotating through a file of paths ------

WRK_LUA = """
local paths = {}
local n = 0
local i = 0
wrk.headers[%(header)s] = %(auth)s
function init(args)
  for line in io.lines(args[1]) do n = n + 1; paths[n] = line end
end
function request()
  i = i %% n + 1
  return wrk.format("GET", paths[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %%d %%d %%.0f %%.0f %%d %%d %%d %%d %%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def write_wrk_script(path: Path, authorization: str, header: str = "Authorization") -> Path:
    """The Lua script, sending `authorization` as `header` (a dashboard's Cookie) with every request."""
    path.write_text(WRK_LUA % {"auth": json.dumps(authorization), "header": json.dumps(header)})
    return path


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(base: str, script: Path, paths: Path, *, duration: float, concurrency: int = 32,
            threads: int = 1) -> Result:
    """Requests, time, p50/p99 and errors of `duration` s of GETs of the paths in `paths`."""
    argv = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "10s",
            "-s", str(script), base, "--", str(paths)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    n, usec, p50, p99, *errs = (float(x) for x in line.split()[1:])
    return Result(int(n), usec / 1e6, p50 / 1000, p99 / 1000, int(sum(errs)))


# --- child processes, polling and a synchronous database handle (sync_bench.py) --------------


class Procs:
    """Child processes, each in its own session with its output in a file of `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str], *,
              module: str = "cli.main") -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.{len(self.running)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args], env={**os.environ, **env},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.running.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.running:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")

    def dump(self) -> None:
        for name, _, log in self.running:
            print(f"--- {name} output:\n{tail(log)}", file=sys.stderr)

    def stop_all(self, timeout: float = 20.0) -> None:
        for _, proc, _ in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc, _ in self.running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the process group is ours alone
                proc.wait(5)
        self.running.clear()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02,
             check: Callable[[], None] | None = None) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Db:
    """A synchronous handle on one connection (the bench's own loop)."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(dsn))

    def val(self, query: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.conn.fetchval(query, *args))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def own_tcp_ports() -> set[int]:
    """Local ports of this process's TCP sockets (Linux /proc)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def foreign_redis_clients(redis_url: str) -> list[str]:
    """Other connections to our Redis database (before our workers start there must be none:
    another bench or test using the same database number would take our messages)."""
    with redis.Redis.from_url(redis_url) as r:
        db = r.connection_pool.connection_kwargs.get("db", 0)
        clients = [c for c in r.client_list() if int(c.get("db", -1)) == db]
        mine = own_tcp_ports()
        return [f"{c['addr']} cmd={c.get('cmd')} age={c.get('age')}s" for c in clients
                if int(c["addr"].rsplit(":", 1)[1]) not in mine]


def flush_redis(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.flushdb()


# --- the servers of the read benchmarks (api_bench.py, stream_bench.py) ---------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Processes:
    """Every subprocess a run started, each in its own process group, stopped at exit."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own group: its children too
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.started)):
            self.stop(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - a fixed http URL on 127.0.0.1
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def cli(name: str) -> str:
    """A console script of this virtualenv (registry-sync)."""
    return str(Path(sys.executable).with_name(name))


def api_env(dsn: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of `registry-sync web`/`stream` on 127.0.0.1:`port` for a benchmark."""
    env = dict(os.environ)
    env.update(DATABASE_URL=dsn, REDIS_URL=os.environ.get("REDIS_URL", f"redis://{HOST}:6379/15"),
               PORT=str(port), STREAM_PORT=str(port), BIND_HOST=HOST, LOG_LEVEL="warning",
               LOG_FORMAT="json", SECRET_KEY=secrets.token_urlsafe(32), LIST_UPKEEP_SECONDS="0")
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (`--workers N`; Linux /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def print_failure(exc: BaseException, tmp: Path) -> int:
    """Report a failed run with the tail of every log it wrote; the exit status."""
    print(f"error: {exc}", file=sys.stderr)
    for log in sorted(tmp.glob("*.log")):
        print(f"--- {log.name} (tail)\n{log.read_text()[-2000:]}", file=sys.stderr)
    return 1


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def run_wrk_bench(bench: Callable[[Path, Processes], int], *, database: str, keep_db: bool,
                  prefix: str = "rs-bench-") -> int:
    """main() of a wrk benchmark on a database of its own: wrk must be installed; `bench(tmp,
    processes)` runs with a temporary folder for logs and every process it started is stopped
    at the end (also on Ctrl-C or SIGTERM); `database` is dropped unless `keep_db`."""
    import shutil
    import tempfile

    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        try:
            return bench(Path(d), procs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (RuntimeError, subprocess.SubprocessError, OSError, AssertionError) as exc:
            return print_failure(exc, Path(d))
        finally:
            procs.stop_all()
            if not keep_db:
                asyncio.run(recreate_database(server_dsn(), database, drop_only=True, schema=False))
