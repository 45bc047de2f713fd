"""The sync service against the real CNCF registry (and the fake one for failures), checked
through the public API: tags, layer fields, last_build_date and the aggregate state."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core.crypto import CredentialBox, Credentials
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.support.fake_registry import FakeRegistry
from tests.support.registry import RegistryServer, apush_image, apush_index, delete_tag
from tests.worker.conftest import ALICE, BOB, OpenRuntime
from tests.worker.helpers import get, register
from worker import sync
from worker.runtime import Runtime
from worker.schedule import PollPolicy

FULL_CONFIG: dict[str, Any] = {
    "created": "2013-11-08T00:22:26.123456789Z",
    "author": "Tutum <info@tutum.co>",
    "config": {
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello=world"],
        "Labels": {"org.example.b": "2", "org.example.a": "1"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8080": {}},
        "Volumes": {"/data": {}, "/cache": {}},
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo", "hello world"],
    },
}

async def test_first_sync_fills_tags_layers_dates_and_state(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime
) -> None:
    user = await make_user()
    repo = f"{unique('team')}/app"
    pushed = await apush_image(registry.url, repo, "latest", FULL_CONFIG)
    await apush_image(registry.url, repo, "oci", {"created": "2020-01-02T03:04:05Z"}, media="oci")
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    assert (await get(client, user, f"/api/v1/image/{name}/"))["state"] == "Empty"

    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED

    image = await get(client, user, f"/api/v1/image/{name}/")
    assert image["state"] == "Success"
    assert image["tags"] == [f"/api/v1/image/{name}/tag/latest/", f"/api/v1/image/{name}/tag/oci/"]
    assert image["last_build_date"] == "Thu, 2 Jan 2020 03:04:05 +0000"
    tag = await get(client, user, f"/api/v1/image/{name}/tag/latest/")
    docker_id = pushed.config_digest.removeprefix("sha256:")
    assert tag == {
        "resource_uri": f"/api/v1/image/{name}/tag/latest/",
        "name": "latest",
        "full_name": f"{name}:latest",
        "image": f"/api/v1/image/{name}/",
        "state": "Success",
        "buildable": False,
        "layer": {
            "author": "Tutum <info@tutum.co>",
            "creation": "Fri, 8 Nov 2013 00:22:26 +0000",
            "docker_id": docker_id,
            "entrypoint": "/bin/sh -c",
            "run_command": "echo 'hello world'",
            "envvars": [{"key": "PATH", "value": "/usr/bin:/bin"}, {"key": "GREETING", "value": "hello=world"}],
            "labels": [{"key": "org.example.a", "value": "1"}, {"key": "org.example.b", "value": "2"}],
            "ports": [{"port": 53, "protocol": "udp"}, {"port": 80, "protocol": "tcp"},
                      {"port": 8080, "protocol": "tcp"}],
            "volumes": [{"container_path": "/cache"}, {"container_path": "/data"}],
            "resource_uri": f"/api/v1/layer/{docker_id}/",
        },
    }
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["error"] is None and status["last_synced_at"] is not None


async def test_multi_arch_index_is_one_tag_with_the_amd64_config(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime
) -> None:
    user = await make_user()
    repo = f"{unique('multi')}/app"
    index = await apush_index(registry.url, repo, "v1", [("linux", "arm64"), ("linux", "amd64")])
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    image = await get(client, user, f"/api/v1/image/{name}/")
    assert image["tags"] == [f"/api/v1/image/{name}/tag/v1/"]
    tag = await get(client, user, f"/api/v1/image/{name}/tag/v1/")
    amd64 = index.manifests["linux/amd64"]
    assert tag["layer"]["docker_id"] == amd64.config_digest.removeprefix("sha256:")
    assert {"key": "platform", "value": "linux/amd64"} in tag["layer"]["labels"]


async def test_resync_of_unchanged_image_sends_only_tag_list_and_heads(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime
) -> None:
    user = await make_user()
    repo = f"{unique('same')}/app"
    configs = {(await apush_image(registry.url, repo, t, FULL_CONFIG)).config_digest for t in "abc"}
    configs.add((await apush_index(registry.url, repo, "multi")).manifests["linux/amd64"].config_digest)
    iid = await register(client, user, f"{registry.host}/{repo}")
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    before = rt.client.requests.copy()
    # a fresh process knows nothing but what Postgres has: the same must hold there
    rt2 = await runtime(registry.host)
    for r in (rt, rt2):
        start = r.client.requests.copy()
        assert await sync.sync_image(r, iid) == sync.SYNCED
        sent = r.client.requests - start
        sent.pop(("GET", "ping"), None)
        assert sent == {("GET", "tags"): 1, ("HEAD", "manifest"): 4}, sent
    assert before[("GET", "blob")] == len(configs) == 4  # each config once, arm64's never


async def test_pushed_and_deleted_tags_show_on_the_next_sync(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    repo = f"{unique('churn')}/app"
    await apush_image(registry.url, repo, "old", {"created": "2021-01-01T00:00:00Z"})
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    await sync.sync_image(rt, iid)
    await apush_image(registry.url, repo, "new", {"created": "2022-06-01T10:00:00Z"})
    await asyncio.to_thread(delete_tag, registry.url, repo, "old")
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    image = await get(client, user, f"/api/v1/image/{name}/")
    assert image["tags"] == [f"/api/v1/image/{name}/tag/new/"]
    assert image["last_build_date"] == "Wed, 1 Jun 2022 10:00:00 +0000"
    # and the next poll is scheduled: the first sync set the interval to SYNC_INTERVAL_SECONDS
    # (300 s), this one changed the image, which halves it (worker/schedule.py), with jitter
    due = await pool.fetchval("SELECT next_sync_at - now() FROM images WHERE id = $1", iid)
    assert timedelta(seconds=130) < due < timedelta(seconds=170)


async def test_basic_auth_registry_with_credentials(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    repo = f"{unique('private')}/app"
    await apush_image(auth_registry.url, repo, "v1", FULL_CONFIG, auth=ALICE)
    name = f"{auth_registry.host}/{repo}"
    iid = await register(client, user, name, username=ALICE[0], password=ALICE[1])
    rt = await runtime(auth_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert (await get(client, user, f"/api/v1/image/{name}/"))["state"] == "Success"


async def test_bearer_token_registry_with_credentials(
    client: TestClient, make_user: MakeUser, token_registry: RegistryServer, runtime: OpenRuntime,
) -> None:
    user = await make_user()
    repo = f"{unique('tok')}/app"
    await apush_image(token_registry.url, repo, "v1", FULL_CONFIG, auth=BOB)
    await apush_image(token_registry.url, repo, "v2", FULL_CONFIG, auth=BOB)
    name = f"{token_registry.host}/{repo}"
    iid = await register(client, user, name, username=BOB[0], password=BOB[1])
    rt = await runtime(token_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert len((await get(client, user, f"/api/v1/image/{name}/"))["tags"]) == 2
    tokens = rt.client.requests[("GET", "token")]
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert rt.client.requests[("GET", "token")] == tokens  # cached across syncs


async def test_wrong_credentials_are_a_permanent_error_without_hammering(
    client: TestClient, make_user: MakeUser, auth_registry: RegistryServer, runtime: OpenRuntime,
    pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    repo = f"{unique('denied')}/app"
    await apush_image(auth_registry.url, repo, "v1", FULL_CONFIG, auth=ALICE)
    name = f"{auth_registry.host}/{repo}"
    iid = await register(client, user, name, username=ALICE[0], password="wrong")
    rt = await runtime(auth_registry.host)
    assert await sync.sync_image(rt, iid) == sync.FAILED
    tag_requests = rt.client.requests[("GET", "tags")]
    assert tag_requests == 1  # no retry of bad credentials
    status = await get(client, user, f"/api/v1/image/{name}/sync/")
    assert status["error"].startswith("RegistryAuthError")
    assert "wrong" not in status["error"]
    due = await pool.fetchval("SELECT next_sync_at - now() FROM images WHERE id = $1", iid)
    assert due > timedelta(minutes=50)  # the backoff cap, not a quick retry
    assert (await get(client, user, f"/api/v1/image/{name}/"))["state"] == "Empty"


# The fake's repository prefix picks the failure (tests/support/fake_registry.py).
@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        ("down", "RegistryUnavailableError"),
        ("garbage", "RegistryProtocolError"),
        ("slow", "RegistryUnavailableError"),
    ],
)
async def test_failing_sync_keeps_last_good_state_and_backs_off(
    prefix: str, error: str, make_user: MakeUser, fake_registry: FakeRegistry,
    runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    good = datetime(2023, 5, 6, tzinfo=UTC)
    iid = await insert_image(
        pool, name=f"{fake_registry.host}/{prefix}/{unique('r')}", owner_id=user.account.id,
        tags=[{"name": "kept", "build_date": good}],
    )
    rt = await runtime(fake_registry.host)
    delays = []
    for attempt in (1, 2):
        assert await sync.sync_image(rt, iid) == sync.FAILED
        row = await pool.fetchrow(
            "SELECT state, last_build_date, sync_error, sync_failures, next_sync_at - now() AS due,"
            " (SELECT array_agg(name) FROM tags WHERE image_id = $1) AS tags FROM images WHERE id = $1",
            iid,
        )
        assert (row["state"], row["last_build_date"], row["tags"]) == ("Success", good, ["kept"])
        assert row["sync_error"].startswith(error)
        assert row["sync_failures"] == attempt
        delays.append(row["due"].total_seconds())
    # base 10 s doubling, with jitter in [0.5, 1]: 5-10 s, then 10-20 s
    assert 4.5 <= delays[0] <= 10.5 and 9.5 <= delays[1] <= 20.5


async def test_retry_after_beyond_the_client_wait_defers_the_next_sync(
    make_user: MakeUser, settings: Settings, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    fake = FakeRegistry(retry_after="600").start()
    try:
        iid = await insert_image(pool, name=f"{fake.host}/limited/{unique('r')}", owner_id=user.account.id)
        s = dataclasses.replace(settings, insecure_registries=frozenset({fake.host}))
        rt = await Runtime(s, name="test", backoff_base=0.01, max_retry_wait=2.0).open()
        try:
            assert await sync.sync_image(rt, iid) == sync.FAILED
        finally:
            await rt.aclose()
        row = await pool.fetchrow("SELECT sync_error, next_sync_at - now() AS due FROM images WHERE id = $1", iid)
        assert row["sync_error"].startswith("RateLimitedError")
        assert row["due"] >= timedelta(seconds=590)
    finally:
        fake.stop()


async def test_transient_500s_are_retried_within_the_sync(
    make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/flaky/{unique('r')}", owner_id=user.account.id)
    rt = await runtime(fake_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    assert await pool.fetchval("SELECT state FROM images WHERE id = $1", iid) == "Success"


async def test_two_syncs_of_one_image_never_run_at_once(
    make_user: MakeUser, fake_registry: FakeRegistry, settings: Settings, pool: asyncpg.Pool,
) -> None:
    """The fake's slow/ repositories answer after 1 s, so the first sync still holds the lease
    when the second one starts."""
    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/slow/{unique('r')}", owner_id=user.account.id)
    s = dataclasses.replace(settings, insecure_registries=frozenset({fake_registry.host}),
                            registry_timeout_seconds=10.0)
    rts = [await Runtime(s, name=f"w{i}", backoff_base=0.01).open() for i in (1, 2)]
    try:
        outcomes = await asyncio.gather(*(sync.sync_image(rt, iid) for rt in rts))
    finally:
        for rt in rts:
            await rt.aclose()
    assert sorted(outcomes) == [sync.SKIPPED, sync.SYNCED]
    assert await pool.fetchval("SELECT lease_owner FROM images WHERE id = $1", iid) is None


async def test_an_image_leased_elsewhere_is_skipped_untouched(
    make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    from worker import store

    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/ok/{unique('r')}", owner_id=user.account.id)
    assert await store.acquire(pool, iid, "run:elsewhere", None, 60) is not None
    rt = await runtime(fake_registry.host)
    assert await sync.sync_image(rt, iid) == sync.SKIPPED
    row = await pool.fetchrow(
        "SELECT lease_owner, last_synced_at, (SELECT count(*) FROM tags WHERE image_id = $1) AS n"
        " FROM images WHERE id = $1", iid)
    assert tuple(row) == ("run:elsewhere", None, 0)


async def test_a_run_whose_lease_was_taken_over_writes_nothing(
    make_user: MakeUser, fake_registry: FakeRegistry, runtime: OpenRuntime, pool: asyncpg.Pool,
) -> None:
    from worker import store

    user = await make_user()
    iid = await insert_image(pool, name=f"{fake_registry.host}/ok/{unique('r')}", owner_id=user.account.id)
    image = await store.acquire(pool, iid, "run:old", None, 60)
    assert image is not None
    await pool.execute("UPDATE images SET lease_until = now() - interval '1 second' WHERE id = $1", iid)
    assert await store.acquire(pool, iid, "run:new", None, 60) is not None
    result = store.SyncResult(present=["x"], tags=[store.TagWrite("x", "sha256:" + "a" * 64, None, None, None)])
    with pytest.raises(store.LeaseLostError):
        await store.write_success(pool, image, "run:old", result, poll=PollPolicy.from_settings(Settings()))
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", iid) == 0


def test_credentials_at_rest_are_not_clear_text() -> None:
    k1, k2 = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    box = CredentialBox(k1)
    sealed = box.seal(Credentials("alice", "s3cret-pw"))
    assert b"s3cret-pw" not in sealed and b"alice" not in sealed
    assert box.open(sealed) == Credentials("alice", "s3cret-pw")
    assert "s3cret" not in repr(box.open(sealed))
    with pytest.raises(ValueError, match="SECRET_KEY"):
        CredentialBox(k2).open(sealed)
    assert CredentialBox(k2, old_keys=(k1,)).open(sealed).password == "s3cret-pw"


async def test_artifact_tag_is_kept_without_a_layer(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime
) -> None:
    """A tag whose config is not an image config (a Helm chart, say) is a tag with layer null."""
    from tests.support.registry import OCI_MANIFEST, _Http, _push_blob, _put_manifest

    user = await make_user()
    repo = f"{unique('chart')}/app"
    http = _Http(registry.url, None)
    config = b'{"name": "chart", "version": "1.0.0"}'
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "size": len(config),
                   "digest": await asyncio.to_thread(_push_blob, http, repo, config)},
        "layers": [],
    }
    await asyncio.to_thread(_put_manifest, http, repo, "1.0.0", manifest, OCI_MANIFEST)
    await apush_image(registry.url, repo, "img", FULL_CONFIG)
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    chart = await get(client, user, f"/api/v1/image/{name}/tag/1.0.0/")
    assert chart["layer"] is None and chart["state"] == "Success"
    assert (await get(client, user, f"/api/v1/image/{name}/tag/img/"))["layer"] is not None


async def test_tags_without_a_layer_are_not_fetched_again(
    client: TestClient, make_user: MakeUser, registry: RegistryServer, runtime: OpenRuntime
) -> None:
    """An index with no manifest for the configured platform is a tag without a layer, with a
    note saying why; like any resolved tag, a re-sync only HEADs it."""
    user = await make_user()
    repo = f"{unique('armonly')}/app"
    await apush_index(registry.url, repo, "arm", [("linux", "arm64")], attestation=False)
    name = f"{registry.host}/{repo}"
    iid = await register(client, user, name)
    rt = await runtime(registry.host)
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    tag = await get(client, user, f"/api/v1/image/{name}/tag/arm/")
    assert tag["layer"] is None and tag["state"] == "Success"
    start = rt.client.requests.copy()
    assert await sync.sync_image(rt, iid) == sync.SYNCED
    sent = rt.client.requests - start
    assert sent == {("GET", "tags"): 1, ("HEAD", "manifest"): 1}, sent
