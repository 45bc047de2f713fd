"""Real-world content on the polling path: content pushed to the real CNCF registry
(tests/support/content.py), synced, and read back through the API as a client sees it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, unique
from tests.support import content
from tests.support.registry import RegistryServer, push_image, push_index
from tests.worker.conftest import OpenRuntime
from tests.worker.helpers import get, register, tag_names
from worker import sync

V1_CONFIG: dict[str, Any] = {"created": "2024-01-01T00:00:00Z", "config": {"Cmd": ["serve"]}}


async def pushed(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_signatures_attestations_sboms_and_bundles_are_not_tags(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    repo = f"{unique('signed')}/app"
    img = await pushed(push_image, registry.url, repo, "v1", V1_CONFIG)
    await pushed(content.push_cosign_signature, registry.url, repo, img.digest)
    await pushed(content.push_cosign_attestation, registry.url, repo, img.digest)
    await pushed(content.push_cosign_sbom, registry.url, repo, img.digest)
    bundle = await pushed(content.push_sigstore_bundle, registry.url, repo, img.digest)
    await pushed(content.push_referrers_index, registry.url, repo, img.digest, [bundle])
    # a sigstore bundle under an ordinary tag name: only its content says what it is
    await pushed(content.push_sigstore_bundle, registry.url, repo, img.digest, tag="bundle")
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    # as a webhook of release 1 wrote it: the bundle tag listed, with a later build date
    await pool.execute(
        "INSERT INTO tags (image_id, name, state, build_date, updated_at)"
        " VALUES ($1, 'bundle', 'Success', '2024-07-01', now() - interval '1 minute')", iid)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    image = await get(client, user, f"/api/v1/image/{name}/")
    assert tag_names(image) == ["v1"]
    assert image["state"] == "Success"
    assert image["last_build_date"] == "Mon, 1 Jan 2024 00:00:00 +0000"
    # the name rule kept cosign's tags and the referrers tag from being fetched at all
    assert rt.client.requests[("GET", "manifest")] == 2  # v1 and bundle
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["error"] is None and status["tag_issues"] == [] and status["tag_issue_count"] == 0


async def test_helm_chart_is_a_tag_without_layer_dated_by_its_annotation(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    repo = f"{unique('charts')}/app"
    await pushed(content.push_helm_chart, registry.url, repo, "0.1.0", created="2024-06-01T10:00:00Z")
    await pushed(content.push_helm_chart, registry.url, repo, "undated", created=None, version="0.0.1")
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    image = await get(client, user, f"/api/v1/image/{name}/")
    assert tag_names(image) == ["0.1.0", "undated"]
    assert image["state"] == "Success"
    assert image["last_build_date"] == "Sat, 1 Jun 2024 10:00:00 +0000"
    chart = await get(client, user, f"/api/v1/image/{name}/tag/0.1.0/")
    assert chart["layer"] is None and chart["state"] == "Success"
    assert rt.client.requests[("GET", "blob")] == 0  # a chart's config is not an image config
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    note = "not a container image (application/vnd.cncf.helm.config.v1+json)"
    assert status["tag_issues"] == [
        {"tag": "0.1.0", "error": None, "note": note}, {"tag": "undated", "error": None, "note": note},
    ]


async def test_index_without_the_platform_names_the_platforms_it_has(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    repo = f"{unique('arm')}/app"
    await pushed(content.push_platform_index, registry.url, repo, "arm", [("linux", "arm64"), ("linux", "arm", "v7")])
    await pushed(push_image, registry.url, repo, "amd", V1_CONFIG)
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    arm = await get(client, user, f"/api/v1/image/{name}/tag/arm/")
    assert arm["state"] == "Success" and arm["layer"] is None
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["tag_issues"] == [{
        "tag": "arm", "error": None,
        "note": "no manifest for linux/amd64 in the index; it has linux/arm64, linux/arm/v7",
    }]
    assert status["tag_issue_count"] == 1


async def test_index_missing_its_child_keeps_the_tag_and_its_last_good_data(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    repo = f"{unique('orphan')}/app"
    good = await pushed(push_index, registry.url, repo, "multi", attestation=False)
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    before = await get(client, user, f"/api/v1/image/{name}/tag/multi/")
    assert before["layer"]["docker_id"] == good.manifests["linux/amd64"].config_digest[7:]

    # the tag moves to an index whose amd64 child the registry does not have; another tag
    # is such an index from the start
    broken = await pushed(content.push_index_missing_child, registry.url, repo, "multi")
    await pushed(content.push_index_missing_child, registry.url, repo, "fresh")
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    image = await get(client, user, f"/api/v1/image/{name}/")
    assert tag_names(image) == ["fresh", "multi"]
    assert await get(client, user, f"/api/v1/image/{name}/tag/multi/") == before
    fresh = await get(client, user, f"/api/v1/image/{name}/tag/fresh/")
    assert fresh["layer"] is None and fresh["state"] == "Empty"
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["error"] is None and status["tag_issue_count"] == 2
    multi = next(i for i in status["tag_issues"] if i["tag"] == "multi")
    missing = broken.manifests["linux/amd64"].digest
    assert multi["error"] == (
        f"the index names {missing} for linux/amd64, which the registry does not have"
    )


async def test_broken_configs_fail_only_their_own_tags(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    repo = f"{unique('broken')}/app"
    await pushed(push_image, registry.url, repo, "good", V1_CONFIG)
    kept = await pushed(push_image, registry.url, repo, "kept", {"created": "2023-03-03T00:00:00Z"})
    await pushed(content.push_broken_config, registry.url, repo, "nojson", how="not-json")
    missing = await pushed(content.push_broken_config, registry.url, repo, "noblob", how="missing")
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    kept_before = await get(client, user, f"/api/v1/image/{name}/tag/kept/")
    assert kept_before["layer"]["docker_id"] == kept.config_digest[7:]

    # "kept" moves to a manifest whose config blob is gone: it keeps its last good data
    await pushed(content.push_broken_config, registry.url, repo, "kept", how="missing")
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    image = await get(client, user, f"/api/v1/image/{name}/")
    assert tag_names(image) == ["good", "kept", "noblob", "nojson"]
    assert image["state"] == "Success"
    assert image["last_build_date"] == "Mon, 1 Jan 2024 00:00:00 +0000"
    assert (await get(client, user, f"/api/v1/image/{name}/tag/good/"))["layer"] is not None
    assert await get(client, user, f"/api/v1/image/{name}/tag/kept/") == kept_before
    for tag in ("noblob", "nojson"):
        body = await get(client, user, f"/api/v1/image/{name}/tag/{tag}/")
        assert body["layer"] is None and body["state"] == "Empty"
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["error"] is None and status["consecutive_failures"] == 0
    errors = {i["tag"]: i["error"] for i in status["tag_issues"]}
    assert set(errors) == {"kept", "noblob", "nojson"}
    assert errors["noblob"] == f"config blob {missing.config_digest} is not in this repository (404)"
    assert "is not valid JSON" in errors["nojson"]

    # a tag with a problem is read in full again by the next sync; the others only HEADed
    start = rt.client.requests.copy()
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    sent = rt.client.requests - start
    assert sent[("HEAD", "manifest")] == 1 and sent[("GET", "manifest")] == 3
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1 AND sync_error IS NOT NULL", iid) == 3
