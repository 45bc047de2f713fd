"""Config blobs are shared only with proof by content (SPEC §1): a manifest that names another
repository's config digest reveals nothing unless its own registry serves that blob, bytes
that hash to the digest. A `HEAD` answered 200 is a claim (tests/support/hostile_registry.py
answers 200 to any HEAD), and records written when it counted prove nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser, User, unique
from tests.support import content
from tests.support.fake_registry import FakeRegistry
from tests.support.hostile_registry import HostileRegistry
from tests.support.registry import PushedImage, RegistryServer, push_image
from tests.worker.conftest import ALICE, OpenRuntime
from tests.worker.helpers import get, register
from worker import enrich, sync
from worker.runtime import Runtime

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
    # the cached config needed B's own bytes: a GET (404), never a HEAD
    assert rt.client.requests[("HEAD", "blob")] == 0 and rt.client.requests[("GET", "blob")] == 2
    # A still reads its layer, through its own tag
    assert (await get(client, alice, f"/api/v1/layer/{docker_id}/"))["docker_id"] == docker_id
    assert (await get(client, alice, f"/api/v1/image/{name_a}/tag/v1/"))["layer"]["docker_id"] == docker_id
    rows = await pool.fetch(
        "SELECT s.repository FROM layer_sources AS s WHERE s.config_digest = $1", secret.config_digest)
    assert [r["repository"] for r in rows] == [repo_a]


async def test_a_mirror_proves_the_cached_config_with_its_own_bytes(
    client: TestClient, make_user: MakeUser, registry: RegistryServer,
    other_registry: RegistryServer, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    """The same image pushed to two repositories (a mirror): the second serves the cached
    config's bytes itself (one GET), and later syncs need nothing."""
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
    assert sent[("HEAD", "blob")] == 0 and sent[("GET", "blob")] == 1
    tag = await get(client, user, f"/api/v1/image/{other_registry.host}/{repo}/tag/v1/")
    assert tag["layer"]["docker_id"] == first.config_digest[7:]
    assert await pool.fetchval(
        "SELECT count(*) FROM layer_sources WHERE config_digest = $1 AND proven_by_content",
        first.config_digest) == 2
    # a new tag of the mirror naming the same config: proven already, no blob request
    await asyncio.to_thread(
        content.push_manifest_naming, other_registry.url, repo, "v2", config, keep_blob=True)
    fresh = await runtime(registry.host, other_registry.host)
    assert await sync.sync_image(fresh, mirror) == sync.SYNCED
    assert fresh.client.requests[("HEAD", "blob")] == 0 and fresh.client.requests[("GET", "blob")] == 0
    # and the re-sync of the unchanged image sends no GET at all: a HEAD per tag
    again = await runtime(registry.host, other_registry.host)
    assert await sync.sync_image(again, mirror) == sync.SYNCED
    assert _content_gets(again) == 0
    assert again.client.requests[("HEAD", "manifest")] == 2


def _content_gets(rt: Runtime) -> int:
    """Manifest and blob GETs the runtime's client sent (the ping and the tag list aside)."""
    return rt.client.requests[("GET", "manifest")] + rt.client.requests[("GET", "blob")]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    reg = HostileRegistry().start()
    try:
        yield reg
    finally:
        reg.stop()


async def _alice_secret(client: TestClient, alice: User, auth_registry: RegistryServer,
                        rt: Runtime) -> tuple[str, PushedImage]:
    """Account A's private image on the real registry, synced: its name and pushed image."""
    repo_a = f"{unique('private')}/app"
    secret = await asyncio.to_thread(push_image, auth_registry.url, repo_a, "v1", SECRET_CONFIG, auth=ALICE)
    name_a = f"{auth_registry.host}/{repo_a}"
    iid_a = await register(client, alice, name_a, username=ALICE[0], password=ALICE[1])
    assert await sync.sync_image(rt, iid_a) == sync.SYNCED
    docker_id = secret.config_digest.removeprefix("sha256:")
    assert (await get(client, alice, f"/api/v1/layer/{docker_id}/"))["envvars"][0]["value"] == "s3cr3t-of-account-a"
    return name_a, secret


async def _leaks_nothing(client: TestClient, bob: User, name_b: str, config_digest: str, error: str) -> None:
    tag = await get(client, bob, f"/api/v1/image/{name_b}/tag/latest/")
    assert tag["layer"] is None
    status = await get(client, bob, f"/api/v1/image/{name_b}/sync/")
    assert status["error"] is None
    assert status["tag_issues"] == [{"tag": "latest", "note": None, "error": error}]
    resp = await client.get(f"/api/v1/layer/{config_digest.split(':', 1)[1]}/", headers=bob.headers)
    assert resp.status == 404
    assert "s3cr3t" not in await resp.text()


async def test_a_registry_that_claims_anothers_config_with_a_head_gets_no_layer(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer, hostile: HostileRegistry,
    runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    """The attack: B's registry answers 200 to any HEAD and names A's config digest in its
    manifest, without ever serving the blob. Neither the worker that holds A's config in its
    cache nor a fresh one (only Postgres) gives B the layer."""
    alice, bob = await make_user(), await make_user()
    rt = await runtime(auth_registry.host, hostile.host)
    _, secret = await _alice_secret(client, alice, auth_registry, rt)
    repo_b = f"claims/{unique('copycat')}"
    hostile.claim(repo_b, secret.config_digest)
    name_b = f"{hostile.host}/{repo_b}"
    iid_b = await register(client, bob, name_b)
    blob_path = f"/v2/{repo_b}/blobs/{secret.config_digest}"
    for worker in (rt, await runtime(auth_registry.host, hostile.host)):
        assert await sync.sync_image(worker, iid_b) == sync.SYNCED
        await _leaks_nothing(client, bob, name_b, secret.config_digest,
                             f"config blob {secret.config_digest} is not in this repository (404)")
        await pool.execute("UPDATE tags SET sync_error = NULL WHERE image_id = $1", iid_b)
    assert hostile.hits[("HEAD", blob_path)] == 0 and hostile.hits[("GET", blob_path)] == 2
    assert await pool.fetchval("SELECT count(*) FROM layer_sources WHERE repository = $1", repo_b) == 0

    # the webhook path: a push of B's tag, enriched by the worker that has A's config cached
    digest_b = hostile.claims[repo_b].manifest_digest
    await pool.execute("UPDATE tags SET sync_error = NULL, manifest_digest = $2 WHERE image_id = $1", iid_b, digest_b)
    pushed = enrich.Pushed((iid_b,), "latest", digest_b)
    assert await enrich.enrich_pushes(rt, [pushed]) == enrich.Enriched(problems=1)
    await _leaks_nothing(client, bob, name_b, secret.config_digest,
                         f"config blob {secret.config_digest} is not in this repository (404)")

    # serving other bytes under A's digest proves nothing either
    hostile.claim(repo_b, secret.config_digest, blob=b'{"config": {"Env": ["A=b"]}}')
    assert await sync.sync_image(rt, iid_b) == sync.SYNCED
    await _leaks_nothing(client, bob, name_b, secret.config_digest,
                         f"config blob {secret.config_digest}: the content served does not hash to its digest")


async def test_a_head_claim_on_record_is_proven_again_or_dropped(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer, hostile: HostileRegistry,
    runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    """What the previous release left behind (migrations/0009): B's tag pointing at A's config
    through a `layer_sources` row that a HEAD claim wrote, and A's own rows, none marked
    proven. B's next sync, with no cache, takes the config off the tag; A's re-proves its
    config with one blob GET and no manifest GET, and the next one sends no GET at all."""
    alice, bob = await make_user(), await make_user()
    rt = await runtime(auth_registry.host, hostile.host)
    name_a, secret = await _alice_secret(client, alice, auth_registry, rt)
    repo_b = f"claims/{unique('leaked')}"
    claim = hostile.claim(repo_b, secret.config_digest)
    name_b = f"{hostile.host}/{repo_b}"
    iid_b = await register(client, bob, name_b)
    iid_a = await pool.fetchval("SELECT id FROM images WHERE name = $1", name_a)
    registry_b = await pool.fetchval("SELECT registry_id FROM images WHERE id = $1", iid_b)
    await pool.execute(
        "INSERT INTO tags (image_id, name, state, manifest_digest, config_digest)"
        " VALUES ($1, 'latest', 'Success', $2, $3)", iid_b, claim.manifest_digest, secret.config_digest)
    await pool.execute("INSERT INTO layer_sources (registry_id, repository, config_digest) VALUES ($1, $2, $3)",
                       registry_b, repo_b, secret.config_digest)
    await pool.execute("UPDATE layer_sources SET proven_by_content = false WHERE config_digest = $1",
                       secret.config_digest)
    docker_id = secret.config_digest.removeprefix("sha256:")
    assert (await get(client, bob, f"/api/v1/layer/{docker_id}/"))["docker_id"] == docker_id  # the old leak

    fresh = await runtime(auth_registry.host, hostile.host)
    assert await sync.sync_image(fresh, iid_b) == sync.SYNCED
    await _leaks_nothing(client, bob, name_b, secret.config_digest,
                         f"config blob {secret.config_digest} is not in this repository (404)")
    # the blob (404), then the manifest, in case it is schema 1 and carries the config itself
    assert fresh.client.requests[("GET", "manifest")] == 1

    assert await sync.sync_image(fresh, iid_a) == sync.SYNCED
    assert fresh.client.requests[("GET", "manifest")] == 1  # A's: the blob alone proves it
    assert fresh.client.requests[("GET", "blob")] == 2  # B's (404) and A's
    assert await pool.fetchval(
        "SELECT proven_by_content FROM layer_sources AS s JOIN images AS i"
        " ON i.registry_id = s.registry_id AND i.repository = s.repository"
        " WHERE i.id = $1 AND s.config_digest = $2", iid_a, secret.config_digest) is True
    assert (await get(client, alice, f"/api/v1/image/{name_a}/tag/v1/"))["layer"]["docker_id"] == docker_id
    again = await runtime(auth_registry.host, hostile.host)
    assert await sync.sync_image(again, iid_a) == sync.SYNCED
    assert _content_gets(again) == 0


async def test_sha512_is_proof_and_other_algorithms_are_not(
    client: TestClient, make_user: MakeUser, hostile: HostileRegistry, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    rt = await runtime(hostile.host)
    config = orjson.dumps({"created": "2024-05-06T07:08:09Z", "config": {"Env": ["SHA=512"]}})
    cases = {
        # manifest and config in sha512, both checked
        "good": (dict(config_digest="sha512:" + hashlib.sha512(config).hexdigest(), blob=config,
                      manifest_algorithm="sha512"), None),
        "badmanifest": (dict(config_digest="sha512:" + hashlib.sha512(config).hexdigest(), blob=config,
                             manifest_algorithm="sha512", wrong_manifest_digest=True),
                        "manifest {manifest}: the content served does not hash to its digest"),
        "badconfig": (dict(config_digest="sha512:" + "0" * 128, blob=config),
                      "config blob {config}: the content served does not hash to its digest"),
        "md5": (dict(config_digest="md5:" + hashlib.md5(config).hexdigest(), blob=config),  # noqa: S324
                "config blob {config}: its digest algorithm 'md5' is not one this service verifies"
                " (sha256, sha512), so no content can prove it"),
    }
    for case, (claim_kw, error) in cases.items():
        repo = f"claims/{unique(case)}"
        claim = hostile.claim(repo, **claim_kw)  # type: ignore[arg-type]
        name = f"{hostile.host}/{repo}"
        iid = await register(client, user, name)
        assert await sync.sync_image(rt, iid) == sync.SYNCED
        tag = await get(client, user, f"/api/v1/image/{name}/tag/latest/")
        status = await get(client, user, f"/api/v1/image/{name}/sync/")
        if error is None:
            assert tag["layer"]["envvars"] == [{"key": "SHA", "value": "512"}]
            assert status["tag_issues"] == []
            layer = await get(client, user, tag["layer"]["resource_uri"])
            assert layer["docker_id"] == claim.config_digest.split(":", 1)[1]
        else:
            assert tag["layer"] is None
            expected = error.format(manifest=claim.manifest_digest, config=claim.config_digest)
            assert status["tag_issues"] == [{"tag": "latest", "note": None, "error": expected}]
    assert hostile.hits[("GET", f"/v2/{repo}/blobs/{claim.config_digest}")] == 0  # md5: nothing to ask


async def test_a_schema1_config_on_record_is_proven_by_its_manifest(
    client: TestClient, make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    """A schema 1 manifest carries its config (its digest is the hash of those bytes): no blob
    proves it, the manifest read again does, and the tag keeps its layer."""
    user = await make_user()
    name = f"{fake_registry.host}/schema1/{unique('old')}"
    iid = await register(client, user, name)
    assert await sync.sync_image(await runtime(fake_registry.host), iid) == sync.SYNCED
    await pool.execute("UPDATE layer_sources SET proven_by_content = false WHERE repository = $1",
                       name.split("/", 1)[1])
    fresh = await runtime(fake_registry.host)
    assert await sync.sync_image(fresh, iid) == sync.SYNCED
    for tag in ("a", "b"):
        assert (await get(client, user, f"/api/v1/image/{name}/tag/{tag}/"))["layer"] is not None
    assert (await get(client, user, f"/api/v1/image/{name}/sync/"))["tag_issues"] == []
    assert await pool.fetchval("SELECT bool_and(proven_by_content) FROM layer_sources WHERE repository = $1",
                               name.split("/", 1)[1]) is True
