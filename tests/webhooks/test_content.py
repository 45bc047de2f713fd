"""Real-world content on the webhook path: pushed to the real CNCF registry
(tests/support/content.py), whose notifications reach the API; the worker applies the events
and confirms each pushed digest through the same resolution as a sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core.settings import Settings
from tests.conftest import User, insert_image, unique
from tests.support import content
from tests.support.registry import RegistryServer, push_image
from tests.webhooks.conftest import KINDS, Sender, make_sender, new_user, notifying_registry, runtime_for
from worker import inbox
from worker.runtime import Runtime

V1_CONFIG: dict[str, Any] = {"created": "2024-01-01T00:00:00Z", "config": {"Cmd": ["serve"]}}


@pytest.fixture(scope="module", params=KINDS)
async def sender(request: pytest.FixtureRequest, wh_client: TestClient, pool: asyncpg.Pool) -> Sender:
    """Whose receiver the registry notifies (the tests register their images for its user)."""
    return await make_sender(wh_client, request.param, await new_user(pool))


@pytest.fixture(scope="module")
def notifying(wh_client: TestClient, sender: Sender, notifying_hosts: tuple[str, str]) -> Iterator[RegistryServer]:
    """Anonymous."""
    with notifying_registry(wh_client, sender, notifying_hosts[0]) as reg:
        yield reg


@pytest.fixture
async def rt(wh_settings: Settings, notifying: RegistryServer) -> AsyncIterator[Runtime]:
    async with runtime_for(wh_settings, notifying, "content") as runtime:
        yield runtime


async def pushed(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def apply_pushes(rt: Runtime, repository: str, tags: set[str]) -> None:
    """Wait until the registry notified the push of every tag, then run the worker's task for
    every pending event of the repository (apply, then enrich)."""
    deadline = time.monotonic() + 10
    sql = "SELECT array_agg(DISTINCT tag) FROM webhook_events WHERE repository = $1 AND kind = 'push'"
    while not tags <= set(await rt.pool.fetchval(sql, repository) or ()):
        assert time.monotonic() < deadline, f"the registry did not notify the pushes of {tags}"
        await asyncio.sleep(0.02)
    for row in await rt.pool.fetch(
        "SELECT id FROM webhook_events WHERE repository = $1 AND status = 'pending' ORDER BY id", repository
    ):
        assert await inbox.process_event(rt, row["id"]) in (inbox.DONE, inbox.IGNORED, inbox.SKIPPED)


async def tags(pool: asyncpg.Pool, image_id: int) -> dict[str, asyncpg.Record]:
    return {r["name"]: r for r in await pool.fetch("SELECT * FROM tags WHERE image_id = $1", image_id)}


async def register(pool: asyncpg.Pool, user: User, reg: RegistryServer, repo: str) -> tuple[str, int]:
    """The user's proven image of the repository."""
    name = f"{reg.host}/{repo}"
    return name, await insert_image(pool, name=name, owner_id=user.account.id, access_proven=True)


async def sync_status(client: TestClient, user: User, name: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/image/{name}/sync/", headers=user.headers)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_signatures_attestations_referrers_and_bundles_never_become_tags(
    rt: Runtime, notifying: RegistryServer, pool: asyncpg.Pool, sender: Sender,
) -> None:
    reg, repo = notifying, f"{unique('signed')}/app"
    _, image_id = await register(pool, sender.user, reg, repo)
    img = await pushed(push_image, reg.url, repo, "v1", V1_CONFIG)
    sig = await pushed(content.push_cosign_signature, reg.url, repo, img.digest)
    att = await pushed(content.push_cosign_attestation, reg.url, repo, img.digest)
    sbom = await pushed(content.push_cosign_sbom, reg.url, repo, img.digest)
    bundle = await pushed(content.push_sigstore_bundle, reg.url, repo, img.digest)  # by digest: no tag
    referrers = await pushed(content.push_referrers_index, reg.url, repo, img.digest, [bundle])
    # a sigstore bundle under an ordinary tag name: only its content says what it is
    await pushed(content.push_sigstore_bundle, reg.url, repo, img.digest, tag="bundle")
    by_name = {sig.tag, att.tag, sbom.tag, referrers.tag}
    await apply_pushes(rt, repo, {"v1", "bundle"} | by_name)

    assert set(await tags(pool, image_id)) == {"v1"}
    v1 = (await tags(pool, image_id))["v1"]
    row = await pool.fetchrow("SELECT state, last_build_date FROM images WHERE id = $1", image_id)
    assert (row["state"], row["last_build_date"]) == ("Success", v1["build_date"])
    ignored = await pool.fetch(
        "SELECT tag, note FROM webhook_events WHERE repository = $1 AND status = 'ignored'", repo)
    assert {r["tag"] for r in ignored} == by_name and all("signature" in r["note"] for r in ignored)


async def test_helm_charts_are_tags_without_layer_dated_by_their_annotation(
    rt: Runtime, notifying: RegistryServer, pool: asyncpg.Pool, sender: Sender, wh_client: TestClient,
) -> None:
    reg, repo, user = notifying, f"{unique('charts')}/app", sender.user
    name, image_id = await register(pool, user, reg, repo)
    await pushed(content.push_helm_chart, reg.url, repo, "0.1.0", created="2030-01-01T00:00:00Z")
    await pushed(content.push_helm_chart, reg.url, repo, "undated", created=None, version="0.0.1")
    await apply_pushes(rt, repo, {"0.1.0", "undated"})

    charts = await tags(pool, image_id)
    assert {t: (r["state"], r["config_digest"]) for t, r in charts.items()} == {
        "0.1.0": ("Success", None), "undated": ("Success", None)}
    # the later of the annotation and the push time, as for an image's config `created`
    assert charts["0.1.0"]["build_date"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert charts["undated"]["build_date"] == charts["undated"]["pushed_at"]
    status = await sync_status(wh_client, user, name)
    note = "not a container image (application/vnd.cncf.helm.config.v1+json)"
    assert sorted(status["tag_issues"], key=lambda i: i["tag"]) == [
        {"tag": "0.1.0", "error": None, "note": note}, {"tag": "undated", "error": None, "note": note}]


async def test_indexes_without_the_platform_or_missing_its_child(
    rt: Runtime, notifying: RegistryServer, pool: asyncpg.Pool, sender: Sender, wh_client: TestClient,
) -> None:
    reg, repo, user = notifying, f"{unique('multi')}/app", sender.user
    name, image_id = await register(pool, user, reg, repo)
    await pushed(content.push_platform_index, reg.url, repo, "arm", [("linux", "arm64")])
    broken = await pushed(content.push_index_missing_child, reg.url, repo, "multi")
    await apply_pushes(rt, repo, {"arm", "multi"})

    found = await tags(pool, image_id)
    assert {t: (r["state"], r["config_digest"]) for t, r in found.items()} == {
        "arm": ("Success", None), "multi": ("Success", None)}  # pushed; the index is there
    assert found["multi"]["manifest_digest"] == broken.digest
    issues = {i["tag"]: i for i in (await sync_status(wh_client, user, name))["tag_issues"]}
    assert issues["arm"]["note"] == "no manifest for linux/amd64 in the index; it has linux/arm64"
    missing = broken.manifests["linux/amd64"].digest
    assert issues["multi"]["error"] == f"the index names {missing} for linux/amd64, which the registry does not have"


async def test_a_broken_config_fails_only_its_own_tag(
    rt: Runtime, notifying: RegistryServer, pool: asyncpg.Pool, sender: Sender, wh_client: TestClient,
) -> None:
    reg, repo, user = notifying, f"{unique('broken')}/app", sender.user
    name, image_id = await register(pool, user, reg, repo)
    good = await pushed(push_image, reg.url, repo, "good", V1_CONFIG)
    await pushed(content.push_broken_config, reg.url, repo, "nojson", how="not-json")
    noblob = await pushed(content.push_broken_config, reg.url, repo, "noblob", how="missing")
    await apply_pushes(rt, repo, {"good", "nojson", "noblob"})

    found = await tags(pool, image_id)
    assert found["good"]["config_digest"] == good.config_digest
    assert {t: found[t]["config_digest"] for t in ("nojson", "noblob")} == {"nojson": None, "noblob": None}
    assert {r["state"] for r in found.values()} == {"Success"}
    errors = {i["tag"]: i["error"] for i in (await sync_status(wh_client, user, name))["tag_issues"]}
    assert set(errors) == {"nojson", "noblob"}
    assert errors["noblob"] == f"config blob {noblob.config_digest} is not in this repository (404)"
    assert "is not valid JSON" in errors["nojson"]
    assert await pool.fetchval("SELECT state FROM images WHERE id = $1", image_id) == "Success"
