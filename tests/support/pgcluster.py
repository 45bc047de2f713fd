"""A throwaway PostgreSQL cluster that a test can stop and start again (outage tests).

Uses the machine's PostgreSQL binaries (`initdb`, `pg_ctl`; Debian keeps them under
/usr/lib/postgresql/<version>/bin). The cluster listens on 127.0.0.1 only, on a port below
the ephemeral range (so no other process takes it while the server is down), with trust
authentication, in a temporary folder removed at the end. When the tests run as root the
server runs as the `postgres` user, since PostgreSQL refuses to run as root.

    with ThrowawayCluster() as pg:
        dsn = pg.dsn()           # postgresql://postgres@127.0.0.1:<port>/postgres
        pg.stop()                # fast shutdown: connections are cut
        pg.start()               # same port, same data
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.services import reserved_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("no PostgreSQL server binaries (pg_ctl) on this machine")
    return Path(pg_ctl).parent


class ThrowawayCluster:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = reserved_port()
        self._tmp = tempfile.mkdtemp(prefix="rs-pgcluster-")
        self.data = Path(self._tmp) / "data"
        self.log = Path(self._tmp) / "server.log"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> ThrowawayCluster:
        if self._as_postgres:
            shutil.chown(self._tmp, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self._tmp}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
            )
        return self

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` cuts every connection (what clients see when the database goes away)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def __enter__(self) -> ThrowawayCluster:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self._tmp, ignore_errors=True)
