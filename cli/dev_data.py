"""What `registry-sync dev` keeps in its data folder (DATA_DIR) across restarts, besides the
embedded databases and the secrets (cli/dev.py): the `demo` account's API key, and the
registries it reaches over plain HTTP; and the first line dev prints, saying what it will
contact.

- `demo_key` (mode 0600): the key printed at start. A restart prints the same key while the
  database still accepts it (a new database, or a key revoked, gets a new one).
- `insecure_registries` (core/insecure.py): `--insecure-registry HOST` at start and
  `registry-sync dev --add-insecure-registry HOST` from another shell add to it; the running
  processes read it again when it changes, so a registry on a new port needs no restart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from core.accounts import AccountExistsError, add_api_key, authenticate, create_account
from core.insecure import FILE_NAME, add_host, read_hosts
from core.settings import ConfigError, Settings

DEMO_ACCOUNT = "demo"
DEMO_KEY_FILE = "demo_key"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
    tmp.replace(path)


async def demo_key(conn: asyncpg.Connection, data_dir: Path) -> tuple[str, bool]:
    """The `demo` account's key: the one kept in DATA_DIR/demo_key while the database accepts
    it, else a new one (the account is created if missing), then kept. (key, kept)."""
    path = data_dir / DEMO_KEY_FILE
    kept = path.read_text().strip() if path.exists() else ""
    if kept and await authenticate(conn, DEMO_ACCOUNT, kept) is not None:
        return kept, True
    try:
        _, key = await create_account(conn, DEMO_ACCOUNT)
    except AccountExistsError:
        new_key = await add_api_key(conn, DEMO_ACCOUNT)
        assert new_key is not None  # accounts are never deleted
        key = new_key
    write_private(path, key + "\n")
    return key, False


def insecure_file(env: Mapping[str, str], data_dir: Path) -> Path:
    """INSECURE_REGISTRIES_FILE when set, else DATA_DIR/insecure_registries."""
    return Path(env.get("INSECURE_REGISTRIES_FILE") or data_dir / FILE_NAME).resolve()


def remember_insecure(path: Path, hosts: Iterable[str]) -> list[str]:
    """Add `hosts` to the file; all the hosts it lists now. Raises ConfigError for a bad host."""
    for raw in hosts:
        try:
            add_host(path, raw)
        except ValueError as exc:
            raise ConfigError(f"--insecure-registry: {exc}") from None
    return sorted(read_hosts(path))


def add_insecure_registries(hosts: Iterable[str]) -> int:
    """`registry-sync dev --add-insecure-registry HOST…`, from another shell: add to the file
    the running dev (DATA_DIR) reads; its processes notice within a second."""
    from cli.dev import read_env_file

    data_dir = Path(Settings.from_env().data_dir).resolve()
    path = insecure_file(os.environ, data_dir)
    listed = remember_insecure(path, hosts)
    try:
        read_env_file(data_dir)
        running = True
    except ConfigError:
        running = False
    print(f"dev: reached over plain HTTP: {', '.join(listed)} (kept in {path})")
    if running:
        print("dev: the running dev uses them within a second; the images of a registry that changed sync now")
    else:
        print(f"dev: no `registry-sync dev` runs with DATA_DIR={data_dir}; the next one uses them", file=sys.stderr)
    return 0


def contacts_line(env: Mapping[str, str]) -> str:
    """dev's first line: what it is about to contact."""
    settings = Settings.from_env(dict(env))
    stores = []
    stores.append("the Postgres of DATABASE_URL" if env.get("DATABASE_URL") else "an embedded Postgres")
    stores.append("the Redis of REDIS_URL" if env.get("REDIS_URL") else "an embedded Redis")
    hub = ", ".join(dict.fromkeys(
        urlsplit(u).netloc for u in (settings.docker_hub_registry_url, settings.docker_hub_api_url)))
    if settings.offline:
        outside = "Docker Hub never (--offline)"
    else:
        outside = (f"Docker Hub ({hub}) only when someone reads a catalog image or a Docker Hub name "
                   "(--offline: never)")
    return (f"dev: will contact {' and '.join(stores)}, the registries of the images you register, "
            f"and {outside}")
