"""Session-wide services for every test: a database per xdist worker with the schema
applied once, a Redis database per worker, settings, an API app, account factories."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core.accounts import Account, create_account
from core.db import apply_schema, create_pool
from core.settings import Settings
from tests.support.resolver import stub_resolver
from tests.support.services import (
    CHROMIUM_BINARY,
    REGISTRY_BINARY,
    ensure_debian_packages,
    postgres_server,
    redis_db,
    redis_server,
    run_tag,
    worker_index,
)

_names = count(1)
pytest_plugins = ["tests.support.netjail"]  # the `jail` fixture: loopback only
# A fixed SECRET_KEY strong enough for web/worker/beat (core/crypto.py check_secret_key).
TEST_SECRET_KEY = "wUwnhX3WwD9R3VbL6zv2p5E5ElDUxjyUuHlYmlSKy3g"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Once, in the controller (xdist workers have `workerinput`): the real CNCF registry, and
    # the browser the dashboard's tests drive (tests/dashboard/test_browser.py).
    if not hasattr(session.config, "workerinput"):
        ensure_debian_packages({"docker-registry": REGISTRY_BINARY, "chromium": CHROMIUM_BINARY})


def unique(prefix: str = "t") -> str:
    """A name no other test in this session uses (tests share one database)."""
    return f"{prefix}{next(_names)}w{worker_index()}"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    with postgres_server() as server_dsn:
        yield server_dsn


_created: set[str] = set()


async def create_database(server_dsn: str, dbname: str) -> str:
    """(Re)create `dbname` (suffixed with this run's tag) with the schema; returns its DSN.

    Every database made this way is dropped when the session ends."""
    dbname = f"{dbname}_{run_tag()}"
    _created.add(dbname)
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
    dsn = _with_db(server_dsn, dbname)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    return dsn


@pytest.fixture(scope="session", autouse=True)
def _drop_created_databases(postgres_dsn: str) -> Iterator[None]:
    yield
    asyncio.run(_drop_databases(postgres_dsn))


@pytest.fixture(scope="session")
def database_url(postgres_dsn: str) -> str:
    return asyncio.run(create_database(postgres_dsn, f"rs_test_{worker_index()}"))


async def _drop_databases(server_dsn: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        for name in sorted(_created):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    _created.clear()


def _with_db(dsn: str, dbname: str) -> str:
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{dbname}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """The Redis server's URL without a database number."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> str:
    return f"{redis_server_url}/{redis_db('base')}"


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings.from_env(
        {},
        database_url=database_url,
        redis_url=redis_url,
        secret_key=TEST_SECRET_KEY,
        log_level="warning",
        allow_private_registries=True,
        auth_cache_seconds=0.0,
        # failed attempts are counted in Redis, shared by every app of the session: the
        # throttling tests use their own limit and Redis database (tests/api/test_throttle.py)
        auth_failure_limit=1_000_000,
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings.database_url, min_size=1, max_size=5)
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    """An HTTP client of the real app on a real loopback socket."""
    app = create_app(settings)
    stub_resolver(app)
    server = TestServer(app)
    c = TestClient(server)
    await c.start_server()
    yield c
    await c.close()


@dataclass(frozen=True)
class User:
    account: Account
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"ApiKey {self.account.username}:{self.key}"}

    @property
    def basic_headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.account.username}:{self.key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


MakeUser = Callable[..., Awaitable[User]]


@pytest.fixture
def make_user(pool: asyncpg.Pool) -> MakeUser:
    async def make(name: str | None = None, *, is_admin: bool = False) -> User:
        async with pool.acquire() as conn:
            account, key = await create_account(conn, name or unique("user"), is_admin=is_admin)
        return User(account, key)

    return make


async def insert_image(pool: asyncpg.Pool, **kw: Any) -> int:
    """Factory: an image row with defaults (owner None = shared catalog)."""
    from core.names import parse_image_name
    from core.registries import ensure_registry

    name = parse_image_name(kw.pop("name", f"example.com/{unique('ns')}/app"))
    settings = kw.pop("settings", Settings())
    categories = kw.pop("categories", ())
    tags = kw.pop("tags", ())
    async with pool.acquire() as conn, conn.transaction():
        registry_id = await ensure_registry(conn, name.host, settings)
        cols = {
            "name": name.name, "registry_id": registry_id, "repository": name.repository,
            "owner_id": None, "is_private_image": not name.is_hub, "public_url": name.public_url,
            **kw,
        }
        keys = ", ".join(cols)
        params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
        image_id: int = await conn.fetchval(
            f"INSERT INTO images ({keys}) VALUES ({params}) RETURNING id", *cols.values()
        )
        for cat in categories:
            cat_id = await conn.fetchval(
                "INSERT INTO categories (name) VALUES ($1) ON CONFLICT (name) DO UPDATE "
                "SET name = EXCLUDED.name RETURNING id", cat,
            )
            await conn.execute("INSERT INTO image_categories VALUES ($1, $2)", image_id, cat_id)
        for tag in tags:
            tag = {"state": "Success", **tag} if isinstance(tag, dict) else {"name": tag, "state": "Success"}
            await conn.execute(
                "INSERT INTO tags (image_id, name, state, build_date) VALUES ($1, $2, $3, $4)",
                image_id, tag["name"], tag["state"], tag.get("build_date"),
            )
    return image_id
