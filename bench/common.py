"""What every benchmark needs: the local Postgres server and fresh databases on it, the wrk
driver, and the processes a run starts."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

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
wrk.headers["Authorization"] = %(auth)s
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


def write_wrk_script(path: Path, authorization: str) -> Path:
    """The Lua script, sending `authorization` with every request."""
    path.write_text(WRK_LUA % {"auth": json.dumps(authorization)})
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


# --- processes the benchmarks start ---------------------------------------------------------

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
