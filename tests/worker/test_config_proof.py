"""Config blobs are shared only with proof (SPEC §1): a manifest that names another
repository's config digest reveals nothing unless its own registry holds that blob."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, unique
from tests.support import content
from tests.support.registry import RegistryServer, push_image
from tests.worker.conftest import ALICE, OpenRuntime
from tests.worker.helpers import get, register
from worker import sync

SECRET_CONFIG = {
    "created": "2024-02-02T00:00:00Z",
    "config": {"Env": ["API_TOKEN=s3cr3t-of-account-a"], "Cmd": ["serve"]},
}


@pytest.fixture(scope="module")
def other_registry() -> Iterator[RegistryServer]:
    """A second real registry: account B's own, anonymous."""
    with RegistryServer() as reg:
        yield reg


async def test_a_manifest_naming_anothers_config_gets_no_layer(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer,
    other_registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    alice, bob = await make_user(), await make_user()
    repo_a = f"{unique('private')}/app"
    secret = await asyncio.to_thread(push_image, auth_registry.url, repo_a, "v1", SECRET_CONFIG, auth=ALICE)
    name_a = f"{auth_registry.host}/{repo_a}"
    iid_a = await register(client, alice, name_a, username=ALICE[0], password=ALICE[1])
    rt = await runtime(auth_registry.host, other_registry.host)
    assert await sync.sync_image(rt, iid_a) == sync.SYNCED
    docker_id = secret.config_digest.removeprefix("sha256:")
    assert (await get(client, alice, f"/api/v1/layer/{docker_id}/"))["envvars"][0]["value"] == "s3cr3t-of-account-a"

    # B's registry serves a manifest that names A's config digest, but not the blob
    config = await asyncio.to_thread(content.fetch_blob, auth_registry.url, repo_a, secret.config_digest, auth=ALICE)
    repo_b = f"{unique('copycat')}/app"
    await asyncio.to_thread(content.push_manifest_naming, other_registry.url, repo_b, "latest", config)
    name_b = f"{other_registry.host}/{repo_b}"
    iid_b = await register(client, bob, name_b)
    # the same worker process (A's config in its cache), and a fresh one (only Postgres)
    for worker in (rt, await runtime(auth_registry.host, other_registry.host)):
        assert await sync.sync_image(worker, iid_b) == sync.SYNCED
        tag = await get(client, bob, f"/api/v1/image/{name_b}/tag/latest/")
        assert tag["layer"] is None
        status = await get(client, bob, f"/api/v1/image/{name_b}/sync/")
        assert status["tag_issues"] == [{
            "tag": "latest", "note": None,
            "error": f"config blob {secret.config_digest} is not in this repository (404)",
        }]
        resp = await client.get(f"/api/v1/layer/{docker_id}/", headers=bob.headers)
        assert resp.status == 404
        await pool.execute("UPDATE tags SET sync_error = NULL WHERE image_id = $1", iid_b)
    assert rt.client.requests[("HEAD", "blob")] == 1  # the cached config needed B's confirmation
    # A still reads its layer, through its own tag
    assert (await get(client, alice, f"/api/v1/layer/{docker_id}/"))["docker_id"] == docker_id
    assert (await get(client, alice, f"/api/v1/image/{name_a}/tag/v1/"))["layer"]["docker_id"] == docker_id
    rows = await pool.fetch(
        "SELECT s.repository FROM layer_sources AS s WHERE s.config_digest = $1", secret.config_digest)
    assert [r["repository"] for r in rows] == [repo_a]


async def test_a_repository_holding_the_blob_confirms_it_with_one_head(
    client: TestClient, make_user: MakeUser, registry: RegistryServer,
    other_registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    """The same image pushed to two repositories (a mirror): the second confirms the cached
    config with a HEAD instead of fetching it, and later syncs need neither."""
    user = await make_user()
    repo = f"{unique('mirror')}/app"
    first = await asyncio.to_thread(push_image, registry.url, repo, "v1", SECRET_CONFIG)
    config = await asyncio.to_thread(content.fetch_blob, registry.url, repo, first.config_digest)
    rt = await runtime(registry.host, other_registry.host)
    iid = await register(client, user, f"{registry.host}/{repo}")
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    # the mirror holds the same config blob (a manifest of its own naming it)
    await asyncio.to_thread(content.push_manifest_naming, other_registry.url, repo, "v1", config, keep_blob=True)
    mirror = await register(client, user, f"{other_registry.host}/{repo}")
    start = rt.client.requests.copy()
    assert await sync.sync_image(rt, mirror) == sync.SYNCED
    sent = rt.client.requests - start
    assert sent[("HEAD", "blob")] == 1 and sent[("GET", "blob")] == 0
    tag = await get(client, user, f"/api/v1/image/{other_registry.host}/{repo}/tag/v1/")
    assert tag["layer"]["docker_id"] == first.config_digest[7:]
    assert await pool.fetchval(
        "SELECT count(*) FROM layer_sources WHERE config_digest = $1", first.config_digest) == 2
    # a new tag of the mirror naming the same config: proven already, not even a HEAD
    await asyncio.to_thread(
        content.push_manifest_naming, other_registry.url, repo, "v2", config, keep_blob=True)
    fresh = await runtime(registry.host, other_registry.host)
    assert await sync.sync_image(fresh, mirror) == sync.SYNCED
    assert fresh.client.requests[("HEAD", "blob")] == 0 and fresh.client.requests[("GET", "blob")] == 0
