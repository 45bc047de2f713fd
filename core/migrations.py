"""`registry-sync migrate`: numbered SQL migrations (migrations/NNNN_*.sql) applied with
yoyo-migrations, then schema.sql re-applied.

- A fresh database (none of our tables) gets schema.sql, and every migration is recorded as
  applied: schema.sql already is their sum.
- A release-1 database (our tables, no migration records) is recognised: 0001 (release 1's
  schema) is recorded as applied and the later files run.
- Otherwise the files the database has not recorded run in the order of their numbers, each
  in one transaction, recorded after it commits.
- Then schema.sql runs again (it is idempotent): functions and triggers are only written
  there, so they are always those of this release.

Concurrent runs (two deploys rolling at once) serialise on a Postgres advisory lock held by
the session for the whole run; a run that dies loses its lock with its connection. yoyo's own
lock row is taken inside it, so the `yoyo` command line sees the database as busy too.

The DSN is parsed by libpq (psycopg's conninfo), so every form asyncpg takes here works for
the migrations too: host:port URLs and the embedded server's `?host=/socket/dir` URI.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "migrations"
SCHEMA_PATH = ROOT / "schema.sql"
# The same key as core.db.apply_schema's transaction lock: a session holding it may take it
# again (advisory locks are re-entrant per session), any other session waits.
MIGRATE_LOCK = 7_305_001
BASELINE = "0001"
# yoyo's bookkeeping tables (left out of schema comparisons)
YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")
_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# any of these tables present: the database has a registry-sync schema (release 1 or later)
_OUR_TABLE_SQL = "SELECT to_regclass('accounts') IS NOT NULL AND to_regclass('images') IS NOT NULL"


class MigrationError(Exception):
    """A migration file is misnamed or failed; the message names it."""


@dataclass(frozen=True)
class MigrateResult:
    created: bool  # a fresh database was built from schema.sql
    applied: tuple[str, ...]  # ids of the files that ran
    recorded: tuple[str, ...]  # ids recorded without running (fresh database, or the baseline)

    def summary(self) -> str:
        if self.created:
            return f"database created from schema.sql; {len(self.recorded)} migration(s) recorded as applied"
        ran = ", ".join(self.applied) if self.applied else "none to apply"
        return f"migrations: {ran}; schema.sql re-applied"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration files ordered by number; MigrationError for a misnamed file or a number
    used twice (two branches that picked the same number must not both run in any order)."""
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    seen: dict[str, str] = {}
    for path in files:
        m = _NAME.fullmatch(path.name)
        if m is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_case_words.sql")
        if m.group(1) in seen:
            raise MigrationError(f"{path.name} and {seen[m.group(1)]} have the same number")
        seen[m.group(1)] = path.name
    return files


def _backend(dsn: str) -> Any:
    from psycopg.conninfo import conninfo_to_dict
    from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
    from yoyo.connections import DatabaseURI
    from yoyo.migrations import default_migration_table

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    dbname = params.pop("dbname", None)
    # Everything as libpq keywords (yoyo passes `args` to psycopg.connect unchanged).
    uri = DatabaseURI("postgresql+psycopg", None, None, None, None, dbname, params)
    return PostgresqlPsycopgBackend(uri, default_migration_table)


def migrate_sync(
    dsn: str,
    *,
    directory: Path = MIGRATIONS_DIR,
    schema_path: Path = SCHEMA_PATH,
    progress: Callable[[str], None] | None = None,
) -> MigrateResult:
    """Bring the database at `dsn` to schema.sql (see the module docstring). Blocking: call it
    from a thread in async code. Raises MigrationError naming a failed file."""
    from yoyo import read_migrations

    say = progress or (lambda _msg: None)
    files = migration_files(directory)
    backend = _backend(dsn)
    conn = backend.connection  # autocommit: each statement below is its own transaction
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        backend.init_database()
        # Under our lock no other migrate runs: a yoyo lock row left by a killed run is stale.
        backend.break_lock()
        migrations = read_migrations(str(directory))
        by_id = {m.id: m for m in migrations}
        if [m.id for m in migrations] != [p.stem for p in files]:
            raise MigrationError(f"{directory} holds files other than NNNN_name.sql migrations (.py, post-apply)")
        with backend.lock():
            applied_ids = set(backend.get_applied_migration_hashes())
            ours = bool(conn.execute(_OUR_TABLE_SQL).fetchone()[0])  # type: ignore[index]
            if not ours and not applied_ids:
                say("empty database: applying schema.sql")
                _apply_schema(conn, schema_path)
                backend.mark_migrations(migrations)
                return MigrateResult(True, (), tuple(m.id for m in migrations))
            recorded: list[str] = []
            if not applied_ids:
                baseline = [m for m in migrations if m.id.startswith(BASELINE + "_")]
                say(f"release-1 database: recording {baseline[0].id if baseline else BASELINE} as applied")
                backend.mark_migrations(baseline)
                recorded = [m.id for m in baseline]
            pending = [by_id[p.stem] for p in files if by_id[p.stem].hash not in
                       set(backend.get_applied_migration_hashes())]
            for migration in pending:
                say(f"applying {migration.id}")
                try:
                    backend.apply_one(migration)
                except backend.DatabaseError as exc:
                    raise MigrationError(f"{migration.id} failed and was rolled back: {exc}") from exc
            say("re-applying schema.sql")
            _apply_schema(conn, schema_path)
            return MigrateResult(False, tuple(m.id for m in pending), tuple(recorded))
    finally:
        conn.close()  # also releases the advisory lock


def _apply_schema(conn: Any, schema_path: Path) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        conn.execute(schema_path.read_text())
