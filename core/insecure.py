"""Registries reached over plain HTTP: INSECURE_REGISTRIES, plus the hosts listed in
INSECURE_REGISTRIES_FILE (one `host[:port]` a line, `#` comments), which may change while the
processes run.

`registry-sync dev` keeps that file in its data folder (DATA_DIR/insecure_registries):
`--insecure-registry HOST` at start and `registry-sync dev --add-insecure-registry HOST` from
another shell add to it. Every process reads it again when it changes (a stat per look, the
file is read only when its inode, size or mtime moved): the worker's registry client on each
request, the API when it creates a registry, and beat once a tick, which brings the
registries' `is_ssl` in line and makes the images of a registry whose scheme changed due at
once (core/registries.py InsecureWatch). So a registry on a new port needs no restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from core.names import InvalidNameError, canonical_host, parse_registry_host
from core.settings import Settings

FILE_NAME = "insecure_registries"  # in dev's DATA_DIR


def read_hosts(path: Path) -> frozenset[str]:
    """The hosts of the file (canonical); none when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return frozenset()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(canonical_host(line) for line in lines if line)


def add_host(path: Path, raw: str) -> tuple[str, bool]:
    """Add `raw` (`host[:port]`) to the file, atomically (a reader sees the old file or the new
    one). Returns (the canonical host, whether it was new). Raises ValueError for a malformed
    host."""
    try:
        host = parse_registry_host(raw.strip().lower())
    except InvalidNameError as exc:
        raise ValueError(str(exc)) from None
    if host in read_hosts(path):
        return host, False
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else "# registries reached over plain HTTP (registry-sync dev)\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(old + ("" if old.endswith("\n") else "\n") + host + "\n")
    tmp.replace(path)
    return host, True


class InsecureRegistries:
    """The current set: the fixed hosts plus the file's, re-read when the file changes. The
    same frozenset object is returned for as long as the file is unchanged."""

    def __init__(self, fixed: Iterable[str], path: str = "") -> None:
        self._fixed = frozenset(canonical_host(h) for h in fixed if h.strip())
        self._path = Path(path) if path else None
        self._seen: tuple[int, int, int] | None = None
        self._hosts = self._fixed

    @classmethod
    def from_settings(cls, settings: Settings) -> InsecureRegistries:
        return cls(settings.insecure_registries, settings.insecure_registries_file)

    def hosts(self) -> frozenset[str]:
        if self._path is None:
            return self._fixed
        try:
            st = self._path.stat()
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._seen = seen
            self._hosts = self._fixed | read_hosts(self._path) if seen is not None else self._fixed
        return self._hosts


_CURRENT: dict[tuple[frozenset[str], str], InsecureRegistries] = {}


def insecure_registries(settings: Settings) -> frozenset[str]:
    """What `settings` make insecure right now (INSECURE_REGISTRIES and the file)."""
    key = (settings.insecure_registries, settings.insecure_registries_file)
    current = _CURRENT.get(key)
    if current is None:
        current = _CURRENT[key] = InsecureRegistries.from_settings(settings)
    return current.hosts()

