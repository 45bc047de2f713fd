"""Build states read from Quay's build API (worker/quay_builds.py), in one process: the real
registry behind a loopback stand-in for a Quay host (tests/support/quay.py), the sync and the
build poll called directly, the results read through the API."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core.settings import Settings
from tests.conftest import MakeUser, User, unique
from tests.ops.test_openapi import check
from tests.support.quay import QuayStandIn, quay_build
from tests.support.registry import RegistryServer, apush_image
from tests.support.resolver import stub_resolver
from tests.worker.conftest import ALICE, OpenRuntime
from tests.worker.helpers import get, register
from worker import quay_builds, sync
from worker.registry.errors import RegistryProtocolError
from worker.registry.quay import parse_builds, parse_started
from worker.runtime import Runtime

CONFIG = {"created": "2024-01-01T00:00:00Z"}


@pytest.fixture(scope="module")
def quay(registry: RegistryServer) -> Iterator[QuayStandIn]:
    with QuayStandIn(registry) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def private_quay(auth_registry: RegistryServer) -> Iterator[QuayStandIn]:
    """A Quay host whose registry needs credentials (ALICE: a robot account's, say)."""
    with QuayStandIn(auth_registry) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
async def api(settings: Settings, quay: QuayStandIn, private_quay: QuayStandIn) -> AsyncIterator[TestClient]:
    """The API with both stand-ins as Quay hosts (so `…/sync/` shows their builds)."""
    app = create_app(dataclasses.replace(settings, quay_hosts=frozenset({quay.host, private_quay.host})))
    stub_resolver(app)
    c = TestClient(TestServer(app))
    await c.start_server()
    yield c
    await c.close()


async def open_runtime(runtime: OpenRuntime, stand_in: QuayStandIn, **settings: Any) -> Runtime:
    return await runtime(stand_in.host, with_settings={"quay_hosts": frozenset({stand_in.host}), **settings})


async def states(pool: asyncpg.Pool, image_id: int) -> dict[str, str]:
    rows = await pool.fetch("SELECT name, state FROM tags WHERE image_id = $1", image_id)
    return {r["name"]: r["state"] for r in rows}


async def sync_status(api: TestClient, user: User, name: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/image/{name}/sync/", headers=user.headers)
    body: dict[str, Any] = await check(resp, "/api/v1/image/{name}/sync/")
    return body


async def test_phases_become_tag_states_newest_build_per_tag(
    api: TestClient, make_user: MakeUser, quay: QuayStandIn, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user, repo = await make_user(), f"{unique('qb')}/app"
    for tag in ("v1", "old"):
        await apush_image(quay.registry.url, repo, tag, CONFIG)
    quay.script(repo, [
        quay_build("b6", "building", ["ci"]),  # a tag the registry does not have yet
        quay_build("b5", "pushing", ["v2"]),
        quay_build("b4", "complete", ["v1"]),
        quay_build("b3", "error", ["v3", "sha256-" + "a" * 64 + ".sig"], error="step 3: npm ci failed"),
        quay_build("b2", "cancelled", ["old", "never"]),
        quay_build("b1", "internalerror", ["v1"]),  # older than b4: v1 is b4's
    ])
    name = f"{quay.host}/{repo}"
    iid = await register(api, user, name)
    rt = await open_runtime(runtime, quay)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await states(pool, iid) == {"v1": "Success", "old": "Success", "ci": "Building", "v2": "Building",
                                       "v3": "Failed"}
    image = await get(api, user, f"/api/v1/image/{name}/")
    assert image["state"] == "Building"
    builds = (await sync_status(api, user, name))["builds"]
    assert builds["build_token"] is False and builds["error"] is None and builds["read_at"] is not None
    assert builds["next_poll_at"] is not None  # b6 and b5 run: polled every BUILD_POLL_SECONDS
    recent = {b["id"]: b for b in builds["recent"]}
    assert [b["id"] for b in builds["recent"]] == ["b6", "b5", "b4", "b3", "b2", "b1"]
    assert (recent["b3"]["state"], recent["b3"]["error"]) == ("Failed", "step 3: npm ci failed")
    assert recent["b2"]["state"] is None and recent["b2"]["ended_at"] is not None
    assert recent["b6"]["ended_at"] is None and recent["b6"]["started"].endswith("+0000")
    assert quay.hits[repo] == 1

    # b5 pushes v2 and completes, b6 is cancelled: the poll alone (no sync) moves the tags
    await apush_image(quay.registry.url, repo, "v2", CONFIG)
    quay.script(repo, [quay_build("b6", "cancelled", ["ci"]), quay_build("b5", "complete", ["v2"]),
                       *quay.builds[repo][2:]])
    await pool.execute("UPDATE images SET next_sync_at = now() + interval '1 hour' WHERE id = $1", iid)
    polled = await quay_builds.poll(rt, iid)
    assert polled == quay_builds.Polled(quay_builds.READ, completed=True)
    assert await states(pool, iid) == {"v1": "Success", "old": "Success", "v2": "Success", "v3": "Failed"}
    row = await pool.fetchrow("SELECT next_sync_at <= now() AS due, sync_requested_at IS NOT NULL AS asked"
                              " FROM images WHERE id = $1", iid)
    assert row["due"] and row["asked"], "the completed build's pushes are to be synced at once"
    assert (await sync_status(api, user, name))["builds"]["next_poll_at"] is None  # nothing runs
    # a second read of the same builds changes nothing: each build moves forward once
    assert await quay_builds.poll(rt, iid) == quay_builds.Polled(quay_builds.READ, completed=False)


async def test_a_newer_build_wins_and_an_older_one_never_comes_back(
    api: TestClient, make_user: MakeUser, quay: QuayStandIn, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user, repo = await make_user(), f"{unique('qn')}/app"
    await apush_image(quay.registry.url, repo, "latest", CONFIG)
    quay.script(repo, [quay_build("old", "complete")])
    name = f"{quay.host}/{repo}"
    iid = await register(api, user, name)
    rt = await open_runtime(runtime, quay)
    await sync.sync_image(rt, iid)
    assert await states(pool, iid) == {"latest": "Success"}
    quay.script(repo, [quay_build("new", "error", error="boom"), quay_build("old", "complete")])
    await sync.sync_image(rt, iid)
    assert await states(pool, iid) == {"latest": "Failed"}
    # Quay's listing is cut at QUAY_BUILD_LIMIT: `new` is gone from it, `old` listed alone
    quay.script(repo, [quay_build("old", "complete")])
    await sync.sync_image(rt, iid)
    assert await states(pool, iid) == {"latest": "Failed"}
    assert (await get(api, user, f"/api/v1/image/{name}/"))["state"] == "Failed"


async def test_tags_a_build_creates_count_against_max_tags_and_the_tag_policy(
    api: TestClient, make_user: MakeUser, quay: QuayStandIn, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user, repo = await make_user(), f"{unique('qc')}/app"
    for tag in ("a", "b"):
        await apush_image(quay.registry.url, repo, tag, CONFIG)
    quay.script(repo, [quay_build("x", "building", ["a", "c", "skip-me"])])
    name = f"{quay.host}/{repo}"
    iid = await register(api, user, name, tag_policy={"exclude": ["skip-*"]})  # type: ignore[arg-type]
    rt = await open_runtime(runtime, quay, max_tags_per_image=2)
    await sync.sync_image(rt, iid)
    assert await states(pool, iid) == {"a": "Building", "b": "Success"}  # no room for c


async def test_a_private_repository_without_build_token_shows_401_and_its_tags_still_sync(
    api: TestClient, make_user: MakeUser, private_quay: QuayStandIn, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user, repo, secret = await make_user(), f"{unique('qp')}/app", f"qtok-{unique()}-abcdef"
    await apush_image(private_quay.registry.url, repo, "latest", CONFIG, auth=ALICE)
    private_quay.script(repo, [quay_build("p1", "building")])
    private_quay.private(repo, secret)
    name = f"{private_quay.host}/{repo}"
    iid = await register(api, user, name, username=ALICE[0], password=ALICE[1])
    rt = await open_runtime(runtime, private_quay)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await states(pool, iid) == {"latest": "Success"}
    status = await sync_status(api, user, name)
    assert status["error"] is None and status["consecutive_failures"] == 0, "not a failed sync"
    builds = status["builds"]
    assert "401" in builds["error"] and "build_token" in builds["error"] and builds["read_at"] is None
    assert builds["build_token"] is False and builds["next_poll_at"] is None
    assert private_quay.authorization[repo] is None  # anonymous: the registry's credentials are not sent

    for token, works in ((f"{secret}-wrong", False), (secret, True)):
        resp = await api.patch(f"/api/v1/image/{name}/", json={"build_token": token}, headers=user.headers)
        assert resp.status == 200 and token not in await resp.text()
        assert await sync.sync_image(rt, iid) == sync.SYNCED
        builds = (await sync_status(api, user, name))["builds"]
        assert builds["build_token"] is True
        assert (builds["error"] is None) == works, builds
    assert private_quay.authorization[repo] == f"Bearer {secret}"
    assert await states(pool, iid) == {"latest": "Building"}
    assert [b["id"] for b in builds["recent"]] == ["p1"]
    stored = bytes(await pool.fetchval("SELECT build_token FROM images WHERE id = $1", iid))
    assert secret.encode() not in stored, "sealed at rest"
    for path in (f"/api/v1/image/{name}/", f"/api/v1/image/{name}/sync/", "/api/v1/image/"):
        assert secret not in await (await api.get(path, headers=user.headers)).text()
    resp = await api.patch(f"/api/v1/image/{name}/", json={"build_token": None}, headers=user.headers)
    assert resp.status == 200
    assert (await sync_status(api, user, name))["builds"]["build_token"] is False


async def test_the_build_api_passes_the_address_guard_on_every_hop(
    api: TestClient, make_user: MakeUser, quay: QuayStandIn, runtime: OpenRuntime, pool: asyncpg.Pool,
    jail: list[str],
) -> None:
    user, repo = await make_user(), f"{unique('qs')}/app"
    await apush_image(quay.registry.url, repo, "latest", CONFIG)
    quay.redirect(repo, "http://169.254.169.254/latest/meta-data/")
    name = f"{quay.host}/{repo}"
    iid = await register(api, user, name)
    rt = await open_runtime(runtime, quay)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await states(pool, iid) == {"latest": "Success"}
    error = (await sync_status(api, user, name))["builds"]["error"]
    assert "ForbiddenTargetError" in error and "refused to contact" in error
    assert jail == [], "refused before any connection"


async def test_register_with_a_build_token_and_bad_tokens_are_400(
    api: TestClient, make_user: MakeUser, quay: QuayStandIn,
) -> None:
    user, repo = await make_user(), f"{unique('qt')}/app"
    name = f"{quay.host}/{repo}"
    for bad, says in ((42, "must be a string"), ("", "must not be empty"), ("x" * 5000, "too long")):
        resp = await api.post("/api/v1/image/", json={"name": name, "build_token": bad}, headers=user.headers)
        body = await resp.json()
        assert resp.status == 400 and body["field"] == "build_token" and says in body["error"], body
        assert "xxxx" not in body["error"]
    resp = await api.post("/api/v1/image/", json={"name": name, "build_token": "tok-at-start"}, headers=user.headers)
    assert resp.status == 201 and "tok-at-start" not in await resp.text()
    assert (await sync_status(api, user, name))["builds"]["build_token"] is True


def test_the_build_api_answer_is_read_defensively() -> None:
    body = (b'{"builds": [{"id": "a", "phase": "Building", "tags": ["ok", "bad tag", 3, "ok"],'
            b' "started": "Wed, 01 May 2024 12:00:00 -0000", "error": ""},'
            b' {"phase": "error"}, "junk", {"id": "b", "phase": "complete", "tags": null},'
            b' {"id": "c", "phase": "waiting"}]}')
    builds = parse_builds(body, limit=4)
    assert [(b.id, b.phase, b.tags, b.error) for b in builds] == [
        ("a", "building", ("ok",), None), ("b", "complete", (), None)]  # limit: the first 4 entries
    assert builds[0].started is not None and builds[0].started.isoformat() == "2024-05-01T12:00:00+00:00"
    assert parse_started("not a date") is None
    for garbage in (b"nope", b"[]", b'{"builds": {}}'):
        with pytest.raises(RegistryProtocolError):
            parse_builds(garbage, 5)
