"""Fixtures of the webhook tests: sender payloads (tests/webhooks/fixtures), an API app with
operator webhook secrets bound to the hosts the tests use, senders through either kind of
receiver (`Sender`: an operator's, or an account's own), and a worker Runtime for applying
events directly."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import test_utils

from api.app import create_app
from core import webhook_auth as whauth
from core import webhooks as wh
from core.accounts import create_account
from core.settings import Settings
from tests.conftest import User, unique
from tests.support.registry import RegistryServer
from tests.support.resolver import stub_resolver
from tests.support.services import reserved_port
from worker.runtime import Runtime

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "hook-secret-0123456789"
QUAY_SECRET = "quay-only-secret"
_ID = re.compile(r'"id": "([0-9a-f-]{36})"')
H = "/api/v1/webhooks"
OPERATOR, ACCOUNT = "operator", "account"
KINDS = (OPERATOR, ACCOUNT)
# The hosts the tests name: the operator's secret is bound to each for the receivers that
# use it (the payload chooses among the hosts its secret is bound to: docs/webhooks.md).
EXAMPLE, EXAMPLE_5000, HARBOR_EXAMPLE = "registry.example.com", "registry.example.com:5000", "harbor.example.com"


def fixture_text(name: str, ns: str = "acme") -> str:
    """A fixture with its namespace `acme` replaced by `ns` and its event ids made unique to
    `ns`, so that tests sharing the database do not dedupe each other's events."""
    text = (FIXTURES / name).read_text().replace("acme", ns)
    return _ID.sub(lambda m: f'"id": "{m.group(1)}-{ns}"', text) if ns != "acme" else text


def fixture(name: str, ns: str = "acme") -> Any:
    return orjson.loads(fixture_text(name, ns))


@pytest.fixture(scope="session")
def wh_registry() -> Iterator[RegistryServer]:
    """The real registry the enrichment reads from (no notifications)."""
    with RegistryServer() as reg:
        yield reg


@pytest.fixture(scope="session")
def notifying_hosts() -> tuple[str, str]:
    """Where the registries that notify the session's API run (tests/webhooks/test_content.py,
    test_proof.py): ports chosen before the API starts, so the operator can bind its secret
    to these hosts as an operator binds it to the registry it runs."""
    return f"127.0.0.1:{reserved_port()}", f"127.0.0.1:{reserved_port()}"


@pytest.fixture(scope="session")
def wh_settings(settings: Settings, wh_registry: RegistryServer, notifying_hosts: tuple[str, str]) -> Settings:
    registry_hosts = (EXAMPLE, EXAMPLE_5000, wh_registry.host, *notifying_hosts)
    bound = [f"registry@{h}={SECRET}" for h in registry_hosts]
    bound += [f"build@{h}={SECRET}" for h in (EXAMPLE, *notifying_hosts)]
    bound.append(f"harbor@{HARBOR_EXAMPLE}={SECRET}")
    return dataclasses.replace(
        settings, webhook_secret=SECRET, webhook_secrets=",".join([f"quay={QUAY_SECRET}", *bound]),
        tutum_registry_host="own.registry.test:5000",
        insecure_registries=frozenset({wh_registry.host, *notifying_hosts}),
        # every hint synced at once: tests/webhooks/test_scope.py tests the interval itself
        webhook_hint_interval_seconds=0.0,
    )


@pytest.fixture(scope="session")
async def wh_client(wh_settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    app = create_app(wh_settings)
    stub_resolver(app)
    server = test_utils.TestServer(app)
    c = test_utils.TestClient(server)
    await c.start_server()
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def runtime(wh_settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime(wh_settings, name="test-events", backoff_base=0.01, max_retry_wait=1.0).open()
    yield rt
    await rt.aclose()


@dataclass(frozen=True)
class Sender:
    """Who sends a test's webhooks: an operator receiver (the environment's secrets, bound in
    wh_settings to the hosts the tests name) or `user`'s own account receivers. Tests register
    their images for `user`: an account receiver's events are facts for its own images only."""

    kind: str
    user: User
    receivers: dict[str, dict[str, Any]]  # ACCOUNT: GET /api/v1/receiver/'s objects by sender

    def path(self, sender: str, query: str = "") -> str:
        if self.kind == ACCOUNT:
            path = str(self.receivers[sender]["url"])
        elif sender in (wh.DOCKERHUB, wh.QUAY):
            path = f"{H}/{sender}/{QUAY_SECRET if sender == wh.QUAY else SECRET}/"
        else:
            path = f"{H}/{sender}/"
        return path + query

    def secret(self, sender: str) -> str:
        if self.kind == ACCOUNT:
            return str(self.receivers[sender]["secret"] or "")
        return QUAY_SECRET if sender == wh.QUAY else SECRET

    def headers(self, sender: str, body: bytes) -> dict[str, str]:
        """What authenticates `body` from this sender (Content-Type included)."""
        secret = self.secret(sender)
        out = {"Content-Type": "application/json"}
        if sender in (wh.REGISTRY, wh.HARBOR):
            out["Authorization"] = f"Bearer {secret}"
        elif sender == wh.BUILD:
            out["X-Signature-256"] = whauth.sign(body, secret)
        elif sender == wh.GITHUB:
            out["X-Hub-Signature-256"] = whauth.sign(body, secret)
        return out

    async def post(self, client: test_utils.TestClient, sender: str, body: bytes | str | dict[str, Any],
                   query: str = "", headers: dict[str, str] | None = None) -> Any:
        data = orjson.dumps(body) if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
        return await client.post(self.path(sender, query), data=data,
                                 headers={**self.headers(sender, data), **(headers or {})})

    def registry_hook(self, client: test_utils.TestClient) -> dict[str, Any]:
        """A registry's notifications endpoint for this sender's registry receiver."""
        return {"url": str(client.make_url(self.path(wh.REGISTRY))),
                "headers": {"Authorization": f"Bearer {self.secret(wh.REGISTRY)}"}, "backoff": "200ms"}


async def make_sender(client: test_utils.TestClient, kind: str, user: User) -> Sender:
    found: dict[str, dict[str, Any]] = {}
    if kind == ACCOUNT:
        resp = await client.get("/api/v1/receiver/", headers=user.headers)
        assert resp.status == 200, await resp.text()
        found = {r["sender"]: r for r in (await resp.json())["objects"]}
    return Sender(kind, user, found)


async def new_user(pool: asyncpg.Pool) -> User:
    """An account for fixtures wider than a test (make_user is per test)."""
    async with pool.acquire() as conn:
        account, key = await create_account(conn, unique("sender"))
    return User(account, key)


@pytest.fixture(params=KINDS)
async def sender(request: pytest.FixtureRequest, wh_client: test_utils.TestClient, pool: asyncpg.Pool) -> Sender:
    """Each test that takes it runs through an operator receiver and through an account's."""
    return await make_sender(wh_client, request.param, await new_user(pool))


@contextmanager
def notifying_registry(client: test_utils.TestClient, sender: Sender, host: str, **kw: Any) -> Iterator[RegistryServer]:
    """A real registry at `host` (one of notifying_hosts; RegistryServer options in `kw`) whose
    notifications go to `sender`'s registry receiver of `client`."""
    port = int(host.rsplit(":", 1)[1])
    with RegistryServer(notifications=[sender.registry_hook(client)], port=port, **kw) as reg:
        yield reg


@asynccontextmanager
async def runtime_for(settings: Settings, reg: RegistryServer, name: str) -> AsyncIterator[Runtime]:
    """A worker Runtime that reaches `reg` over plain HTTP."""
    s = dataclasses.replace(settings, insecure_registries=settings.insecure_registries | {reg.host})
    rt = await Runtime(s, name=name, backoff_base=0.01, max_retry_wait=1.0).open()
    try:
        yield rt
    finally:
        await rt.aclose()
