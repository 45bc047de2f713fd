"""`registry-sync <command>`: migrate, create-account, web, stream, worker, beat, dev, env,
load-catalog, rotate-secret, worker-health."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import asyncpg

from core.accounts import AccountExistsError, create_account
from core.crypto import check_secret_key
from core.logs import configure_logging
from core.settings import ConfigError, Settings


def _settings(*required: str, check_secret: bool = False) -> Settings:
    """Settings from the environment; ConfigError when a required one is missing or, with
    `check_secret`, when SECRET_KEY is set but weak (web, worker, beat, rotate-secret)."""
    settings = Settings.from_env()
    settings.require(*required)
    if check_secret and settings.secret_key:
        try:
            check_secret_key(settings.secret_key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def cmd_migrate(_: argparse.Namespace) -> int:
    from core.migrations import MigrationError, migrate_sync

    settings = _settings("database_url")
    try:
        result = migrate_sync(settings.database_url, progress=lambda msg: print(f"migrate: {msg}", flush=True))
    except MigrationError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


async def _create_account(dsn: str, name: str, admin: bool) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        _, key = await create_account(conn, name, is_admin=admin)
    finally:
        await conn.close()
    return key


def cmd_create_account(args: argparse.Namespace) -> int:
    settings = _settings("database_url")
    try:
        key = asyncio.run(_create_account(settings.database_url, args.name, args.admin))
    except (AccountExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    kind = "admin account" if args.admin else "account"
    print(f"created {kind} {args.name!r}; its API key is shown once, below:")
    print(f"  use it as:  Authorization: ApiKey {args.name}:<key>")
    print(key)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from api.server import serve
    from core.webhook_auth import operator_bindings

    settings = _settings("database_url", "redis_url", "secret_key", check_secret=True)
    operator_bindings(settings)  # a malformed WEBHOOK_SECRETS stops here, before any process starts
    serve(settings, port=args.port, workers=args.workers)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from api.stream_app import serve_stream

    settings = _settings("database_url", "redis_url")
    serve_stream(settings, port=args.port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    settings = _settings("database_url", "redis_url", "secret_key", check_secret=True)
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    return run_worker(settings, queues, args.concurrency)


def cmd_worker_health(args: argparse.Namespace) -> int:
    import json

    from worker.health import ping_consumers

    settings = Settings.from_env()  # no logging setup: the probe prints one JSON line
    settings.require("redis_url")
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    answered = ping_consumers(settings, queues, timeout=args.timeout)
    print(json.dumps({"status": "ok" if all(answered.values()) else "down", "consumers": answered}))
    return 0 if all(answered.values()) else 1


def cmd_beat(_: argparse.Namespace) -> int:
    from worker.scheduler import celery_sender, run_beat

    settings = _settings("database_url", "redis_url", check_secret=True)
    if settings.metrics_port:
        from core.metrics import serve_metrics

        serve_metrics(settings.metrics_port, settings.bind_host)
    asyncio.run(run_beat(settings, celery_sender(settings)))
    return 0


async def _load_catalog(settings: Settings, path: str | None) -> str:
    from pathlib import Path

    from core.catalog import DEFAULT_CATALOG, load_catalog, read_catalog

    entries = read_catalog(Path(path) if path else DEFAULT_CATALOG)
    conn = await asyncpg.connect(settings.database_url)
    try:
        result = await load_catalog(conn, entries, settings)
    finally:
        await conn.close()
    return (f"catalog loaded: {len(entries)} jumpstarts ({result.created} new, {result.updated} updated, "
            f"{result.retired} no longer jumpstarts)")


def cmd_load_catalog(args: argparse.Namespace) -> int:
    from core.catalog import CatalogError

    settings = _settings("database_url")
    try:
        print(asyncio.run(_load_catalog(settings, args.file)))
    except (CatalogError, OSError) as exc:
        print(f"error: {args.file or 'catalog'}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    if args.add_insecure_registry:
        from cli.dev_data import add_insecure_registries

        return add_insecure_registries(args.add_insecure_registry)
    from cli.dev import run_dev

    return run_dev(port=args.port, insecure=tuple(args.insecure_registry), offline=args.offline)


def cmd_env(_: argparse.Namespace) -> int:
    from pathlib import Path

    from cli.dev import read_env_file

    settings = Settings.from_env()  # DATA_DIR only: no logging setup, the output is for eval
    print(read_env_file(Path(settings.data_dir).resolve()))
    return 0


async def _rotate(settings: Settings, batch_size: int) -> int:
    from core.crypto import CredentialBox
    from core.secret_rotation import RotationResult, rotate_credentials

    def progress(r: RotationResult) -> None:
        print(f"rotate-secret: {r.checked} checked, {r.resealed} re-sealed, {r.current} already current, "
              f"{len(r.unreadable)} unreadable", flush=True)

    box = CredentialBox(settings.secret_key, settings.secret_keys_old)
    conn = await asyncpg.connect(settings.database_url)
    try:
        result = await rotate_credentials(conn, box, batch_size=batch_size, progress=progress)
    finally:
        await conn.close()
    progress(result)
    if result.unreadable:
        print(f"rotate-secret: no key opens {len(result.unreadable)} secret(s):"
              f" {', '.join(result.unreadable[:20])}{' …' if len(result.unreadable) > 20 else ''};"
              " add the key they were sealed with to SECRET_KEY_OLD and run again, or replace them: PATCH new"
              " credentials or build_token, POST /api/v1/receiver/rotate/ for receivers,"
              " POST /api/v1/subscription/<id>/rotate/ for subscriptions",
              file=sys.stderr)
        return 1
    print("rotate-secret: every credential is sealed with SECRET_KEY; SECRET_KEY_OLD can be emptied")
    return 0


def cmd_rotate_secret(args: argparse.Namespace) -> int:
    settings = _settings("database_url", "secret_key", check_secret=True)
    return asyncio.run(_rotate(settings, args.batch_size))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-sync",
        description="Keeps the state of container images fresh (see README.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "migrate", help="apply the numbered migrations, then schema.sql (safe to repeat, serialised)"
    ).set_defaults(func=cmd_migrate)
    p = sub.add_parser("create-account", help="create an account and print its API key once")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="an operator account (may edit the shared catalog)")
    p.set_defaults(func=cmd_create_account)
    p = sub.add_parser("web", help="serve the API")
    p.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    p.add_argument("--workers", type=int, default=1, help="API processes sharing the port")
    p.set_defaults(func=cmd_web)
    p = sub.add_parser("stream", help="serve the events stream alone (/api/v1/events/ on STREAM_PORT)")
    p.add_argument("--port", type=int, default=None, help="default: $STREAM_PORT or 8001")
    p.add_argument("--workers", type=int, default=1, help="stream processes sharing the port")
    p.set_defaults(func=cmd_stream)
    p = sub.add_parser("worker", help="run the sync workers (one consumer process per queue)")
    p.add_argument("--queues", default="priority,routine", help="comma-separated: priority, routine")
    p.add_argument("--concurrency", type=int, default=None,
                   help="syncs in flight per consumer process (default: WORKER_CONCURRENCY)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("worker-health", help="exit 0 if this host's worker consumers answer a ping (liveness)")
    p.add_argument("--queues", default="priority,routine", help="the queues the worker was started with")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answers")
    p.set_defaults(func=cmd_worker_health)
    sub.add_parser("beat", help="run the scheduler (a singleton: extra copies wait)").set_defaults(func=cmd_beat)
    p = sub.add_parser("load-catalog", help="load the jumpstart catalog (safe to repeat)")
    p.add_argument("file", nargs="?", default=None, help="default: catalog/jumpstarts.json")
    p.set_defaults(func=cmd_load_catalog)
    p = sub.add_parser(
        "dev", help="run API, worker and scheduler locally (embedded Postgres/Redis if none set)"
    )
    p.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="also reach this registry over plain HTTP (kept in DATA_DIR/insecure_registries; repeatable)")
    p.add_argument("--add-insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="from another shell: the running dev reaches this registry over plain HTTP from now on "
                        "(no restart; kept for later runs); starts nothing")
    p.add_argument("--offline", action="store_true",
                   help="never contact Docker Hub (OFFLINE=1): its images do not sync, its names are not looked up")
    p.set_defaults(func=cmd_dev)
    sub.add_parser(
        "env", help="print the export line of the running `dev` (DATA_DIR): eval \"$(registry-sync env)\""
    ).set_defaults(func=cmd_env)
    p = sub.add_parser(
        "rotate-secret",
        help="re-seal every stored credential with SECRET_KEY (old keys in SECRET_KEY_OLD; idempotent)",
    )
    p.add_argument("--batch-size", type=int, default=500, help="credentials per transaction")
    p.set_defaults(func=cmd_rotate_secret)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
