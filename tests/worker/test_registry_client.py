"""The registry client against the real docker-registry (anonymous, htpasswd, token) and,
for failures it cannot produce, against the fake registry."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

import pytest

from core.crypto import Credentials
from tests.support.fake_registry import (
    CONFIG_DIGEST,
    MANIFEST_DIGEST,
    SCHEMA1_DIGEST,
    FakeRegistry,
)
from tests.support.registry import RegistryServer, apush_image, apush_index, delete_tag
from tests.support.token_server import TokenServer
from tests.worker.conftest import ALICE, BOB, ClientFactory
from worker.registry import (
    Layer,
    ManifestNotFoundError,
    RateLimitedError,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailableError,
    RepositoryNotFoundError,
    Target,
)
from worker.registry.resolve import ConfigCache

_n = itertools.count()


def repo(prefix: str = "team") -> str:
    """A repository name no other test uses."""
    return f"{prefix}/app{next(_n)}"


CONFIG = {
    "created": "2024-05-06T07:08:09Z",
    "author": "ci",
    "config": {
        "Env": ["A=1"],
        "Entrypoint": ["/entry"],
        "Cmd": ["run", "it now"],
        "ExposedPorts": {"80/tcp": {}},
        "Labels": {"b": "2", "a": "1"},
        "Volumes": {"/data": {}},
    },
}


# ------------------------------------------------------------------ real registry


async def test_anonymous_tags_and_resolve(registry: RegistryServer, registry_client: ClientFactory):
    name = repo()
    pushed = await apush_image(registry.url, name, "1.0", CONFIG, media="oci")
    await apush_image(registry.url, name, "latest", CONFIG)
    client = registry_client()
    target = Target(registry.host, name)
    assert sorted(await client.list_tags(target)) == ["1.0", "latest"]
    res = await client.resolve_tag(target, "1.0")
    assert res.digest == pushed.digest and not res.unchanged
    assert res.platform_digest is None and res.config_digest == pushed.config_digest
    layer = res.layer
    assert layer is not None
    assert layer.created == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert (layer.author, layer.entrypoint, layer.run_command) == ("ci", "/entry", "run 'it now'")
    assert layer.envvars == [("A", "1")] and layer.labels == [("a", "1"), ("b", "2")]
    assert layer.ports == [(80, "tcp")] and layer.volumes == ["/data"]
    assert client.requests[("GET", "ping")] == 1


async def test_unchanged_tag_sends_one_head(registry: RegistryServer, registry_client):
    name = repo()
    pushed = await apush_image(registry.url, name, "v1", CONFIG)
    client = registry_client()
    res = await client.resolve_tag(
        Target(registry.host, name),
        "v1",
        known_digest=pushed.digest,
        known_platform_digest="sha256:" + "0" * 64,
    )
    assert res.unchanged and res.digest == pushed.digest and res.layer is None
    assert res.platform_digest == "sha256:" + "0" * 64 and res.config_digest is None
    sent = {k: v for k, v in client.requests.items() if k[1] != "ping"}
    assert sent == {("HEAD", "manifest"): 1}


async def test_config_fetched_once_per_digest(registry: RegistryServer, registry_client):
    name = repo()
    # no layers: identical configs and manifests under three tags
    for tag in ("a", "b", "c"):
        await apush_image(registry.url, name, tag, CONFIG, layers=0)
    client = registry_client()
    target = Target(registry.host, name)
    results = await asyncio.gather(*(client.resolve_tag(target, t) for t in ("a", "b", "c")))
    assert len({r.config_digest for r in results}) == 1
    assert all(r.layer == results[0].layer for r in results)
    await client.resolve_tag(target, "a")
    assert client.requests[("GET", "blob")] == 1
    # a config the caller already has is not fetched, even by a new client
    other = registry_client()
    res = await other.resolve_tag(target, "a", known_configs={results[0].config_digest})
    assert res.layer is None and res.config_digest == results[0].config_digest
    assert other.requests[("GET", "blob")] == 0


@pytest.mark.parametrize("media", ["oci", "docker"])
async def test_multi_arch_platform_choice(registry: RegistryServer, registry_client, media):
    name = repo()
    idx = await apush_index(
        registry.url,
        name,
        "multi",
        [("linux", "amd64"), ("linux", "arm64"), ("linux", "arm", "v7")],
        media=media,
    )
    target = Target(registry.host, name)
    amd = await registry_client().resolve_tag(target, "multi")
    assert amd.digest == idx.digest
    assert amd.platform_digest == idx.manifests["linux/amd64"].digest
    assert amd.config_digest == idx.manifests["linux/amd64"].config_digest
    assert ("platform", "linux/amd64") in amd.layer.labels
    arm = await registry_client(platform="linux/arm/v7").resolve_tag(target, "multi")
    assert arm.platform_digest == idx.manifests["linux/arm/v7"].digest
    none = await registry_client(platform="linux/s390x").resolve_tag(target, "multi")
    assert none.config_digest is None and none.layer is None and not none.unchanged
    assert none.note == (
        "no manifest for linux/s390x in the index; it has linux/amd64, linux/arm64, linux/arm/v7"
    )


async def test_missing_tag_and_repository(registry: RegistryServer, registry_client):
    name = repo()
    pushed = await apush_image(registry.url, name, "gone", CONFIG)
    client = registry_client()
    target = Target(registry.host, name)
    await asyncio.to_thread(delete_tag, registry.url, name, "gone")
    with pytest.raises(ManifestNotFoundError) as err:
        await client.resolve_tag(target, "gone", known_digest=pushed.digest)
    assert not err.value.transient
    assert await client.list_tags(target) == []
    with pytest.raises(RepositoryNotFoundError):
        await client.list_tags(Target(registry.host, "no/such-repo"))
    assert client.requests[("GET", "tags")] == 2  # permanent errors are not retried


async def test_htpasswd_basic_auth(auth_registry: RegistryServer, registry_client):
    name = repo()
    pushed = await apush_image(auth_registry.url, name, "v1", CONFIG, auth=ALICE)
    client = registry_client()
    target = Target(auth_registry.host, name, Credentials(*ALICE))
    assert await client.list_tags(target) == ["v1"]
    res = await client.resolve_tag(target, "v1")
    assert res.digest == pushed.digest and res.layer is not None
    assert client.requests[("GET", "token")] == 0

    wrong = Target(auth_registry.host, name, Credentials("alice", "not-the-password"))
    with pytest.raises(RegistryAuthError) as err:
        await client.list_tags(wrong)
    assert "not-the-password" not in str(err.value) and not err.value.transient
    assert client.requests[("GET", "tags")] == 2  # one for each target: no retry
    with pytest.raises(RegistryAuthError):
        await client.list_tags(Target(auth_registry.host, name))


async def test_bearer_token_auth_and_cache(
    token_registry: RegistryServer, token_server: TokenServer, registry_client
):
    name = repo()
    pushed = await apush_image(token_registry.url, name, "v1", CONFIG, auth=BOB)
    client = registry_client()
    target = Target(token_registry.host, name, Credentials(*BOB))
    before = len(token_server.requests)
    assert await client.list_tags(target) == ["v1"]
    first = await client.resolve_tag(target, "v1")
    second = await client.resolve_tag(target, "v1", known_digest=pushed.digest)
    assert first.digest == pushed.digest and first.layer is not None and second.unchanged
    assert client.requests[("GET", "token")] == 1
    assert token_server.requests[before:] == [("bob", f"repository:{name}:pull")]


async def test_bearer_anonymous_and_denied(
    token_registry: RegistryServer, token_server: TokenServer, registry_client
):
    await apush_image(token_registry.url, "public/app", "v1", CONFIG, auth=BOB)
    client = registry_client()
    assert await client.list_tags(Target(token_registry.host, "public/app")) == ["v1"]
    private = repo()
    await apush_image(token_registry.url, private, "v1", CONFIG, auth=BOB)
    before = client.requests[("GET", "token")]
    with pytest.raises(RegistryAuthError):
        await client.list_tags(Target(token_registry.host, private))
    assert client.requests[("GET", "token")] - before == 2  # re-token once, then fail
    wrong = Target(token_registry.host, private, Credentials("bob", "wrong"))
    with pytest.raises(RegistryAuthError) as err:
        await client.resolve_tag(wrong, "v1")
    assert "wrong" not in str(err.value)
    assert client.requests[("GET", "token")] - before == 3  # no retry of bad credentials


# ------------------------------------------------------------------ failure injection


def fake_target(fake: FakeRegistry, kind: str, credentials: Credentials | None = None) -> Target:
    return Target(fake.host, repo(kind), credentials)


async def test_5xx_retried_then_succeeds(fake_registry: FakeRegistry, registry_client):
    client = registry_client()
    res = await client.resolve_tag(fake_target(fake_registry, "flaky"), "a")
    assert res.digest == MANIFEST_DIGEST and res.config_digest == CONFIG_DIGEST
    # a tag with no known digest is fetched by tag at once: no HEAD
    assert client.requests[("GET", "manifest")] == 3  # 500, 500, 200
    assert client.requests[("HEAD", "manifest")] == 0


async def test_5xx_gives_up_as_unavailable(fake_registry: FakeRegistry, registry_client):
    client = registry_client(max_attempts=3)
    with pytest.raises(RegistryUnavailableError) as err:
        await client.list_tags(fake_target(fake_registry, "down"))
    assert err.value.transient and "UNAVAILABLE" in str(err.value)
    assert client.requests[("GET", "tags")] == 3


async def test_429_retry_after_honoured(fake_registry: FakeRegistry, registry_client):
    client = registry_client()
    started = time.monotonic()
    assert await client.list_tags(fake_target(fake_registry, "limited")) == ["a", "b"]
    assert time.monotonic() - started >= 0.9  # Retry-After: 1
    assert client.requests[("GET", "tags")] == 2


async def test_429_beyond_max_wait_raises_at_once(fake_registry: FakeRegistry, registry_client):
    client = registry_client(max_retry_wait=0.5)
    with pytest.raises(RateLimitedError) as err:
        await client.list_tags(fake_target(fake_registry, "limited"))
    assert err.value.retry_after == 1.0 and err.value.transient
    assert client.requests[("GET", "tags")] == 1


async def test_timeout(fake_registry: FakeRegistry, registry_client):
    client = registry_client(timeout=0.2, max_attempts=2)
    with pytest.raises(RegistryUnavailableError) as err:
        await client.list_tags(fake_target(fake_registry, "slow"))
    assert "no answer within 0.2s" in str(err.value)
    assert client.requests[("GET", "tags")] == 2


async def test_garbage_json(fake_registry: FakeRegistry, registry_client):
    client = registry_client(max_attempts=2)
    with pytest.raises(RegistryProtocolError):
        await client.list_tags(fake_target(fake_registry, "garbage"))
    # transient for the caller's next sync, but a 200 with garbage is not asked again at once
    assert client.requests[("GET", "tags")] == 1
    # a tag whose manifest is garbage is a problem of that tag, not an error of the image
    res = await client.resolve_tag(fake_target(fake_registry, "garbage"), "a")
    assert res.problem is not None and "manifest" in res.problem and "not valid JSON" in res.problem
    assert res.digest is not None and res.config_digest is None and res.layer is None


async def test_link_pagination(fake_registry: FakeRegistry, registry_client):
    client = registry_client()
    assert await client.list_tags(fake_target(fake_registry, "paged")) == [
        "t0",
        "t1",
        "t2",
        "t3",
        "t4",
    ]
    assert client.requests[("GET", "tags")] == 3
    with pytest.raises(RegistryProtocolError, match="more than 2 pages"):
        await registry_client(max_tag_pages=2).list_tags(fake_target(fake_registry, "paged"))
    # beyond the cap, the first names in name order are kept, and the list says it was cut
    cut = await registry_client(max_tags=3).list_tags(fake_target(fake_registry, "paged"))
    assert cut == ["t0", "t1", "t2"] and cut.truncated
    assert not (await client.list_tags(fake_target(fake_registry, "paged"))).truncated
    with pytest.raises(RegistryProtocolError, match="another host"):
        await client.list_tags(fake_target(fake_registry, "offhost"))


async def test_missing_digest_header_hashes_body(fake_registry: FakeRegistry, registry_client):
    client = registry_client()
    target = fake_target(fake_registry, "noheader")
    res = await client.resolve_tag(target, "a")
    assert res.digest == MANIFEST_DIGEST and res.layer is not None
    again = await client.resolve_tag(target, "a", known_digest=MANIFEST_DIGEST)
    assert again.unchanged
    assert client.requests[("GET", "manifest")] == 2 and client.requests[("GET", "blob")] == 1


@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_redirect_strips_authorization(
    fake_bearer_registry: FakeRegistry, fake_basic_registry: FakeRegistry, registry_client, auth
):
    fake = fake_bearer_registry if auth == "bearer" else fake_basic_registry
    creds = Credentials(*(BOB if auth == "bearer" else ALICE))
    fake.reset()
    res = await registry_client().resolve_tag(fake_target(fake, "redirect", creds), "a")
    assert res.layer is not None and res.layer.author == "fake"
    assert fake.cdn_authorization == [None]


async def test_insufficient_scope_retokens_once(
    fake_bearer_registry: FakeRegistry, registry_client
):
    fake_bearer_registry.reset()
    client = registry_client()
    res = await client.resolve_tag(fake_target(fake_bearer_registry, "scope"), "a")
    assert res.digest == MANIFEST_DIGEST
    assert len(fake_bearer_registry.token_requests) == 2


async def test_expired_token_retokens_once_then_fails(
    fake_bearer_registry: FakeRegistry, registry_client
):
    fake_bearer_registry.reset()
    client = registry_client()
    with pytest.raises(RegistryAuthError):
        await client.list_tags(fake_target(fake_bearer_registry, "expired", Credentials(*BOB)))
    assert len(fake_bearer_registry.token_requests) == 2
    assert client.requests[("GET", "tags")] == 2


async def test_wrong_credentials_not_retried(
    fake_bearer_registry: FakeRegistry, fake_basic_registry: FakeRegistry, registry_client
):
    fake_bearer_registry.reset()
    client = registry_client()
    secret = "hunter2-secret"
    with pytest.raises(RegistryAuthError) as err:
        await client.list_tags(fake_target(fake_bearer_registry, "ok", Credentials("bob", secret)))
    assert secret not in str(err.value) and len(fake_bearer_registry.token_requests) == 1
    with pytest.raises(RegistryAuthError):
        await client.list_tags(fake_target(fake_basic_registry, "ok", Credentials("al", secret)))
    assert client.requests[("GET", "tags")] == 1


async def test_ratelimit_remaining_slows_down(fake_registry: FakeRegistry, registry_client):
    client = registry_client()
    client.transport.ratelimit_pause = 0.3
    target = fake_target(fake_registry, "hub")
    await client.list_tags(target)
    assert client.ratelimit_remaining[fake_registry.host] == 3
    started = time.monotonic()
    await client.list_tags(target)
    assert time.monotonic() - started >= 0.25


async def test_schema1_manifest(fake_registry: FakeRegistry, registry_client):
    client = registry_client()
    res = await client.resolve_tag(fake_target(fake_registry, "schema1"), "latest")
    assert res.digest == SCHEMA1_DIGEST and res.platform_digest is None
    assert res.config_digest.startswith("sha256:") and res.layer is not None
    assert res.layer.author == "Old Timer <old@example.com>" and res.layer.run_command == "/hello"
    assert client.requests[("GET", "blob")] == 0
    known = await client.resolve_tag(
        fake_target(fake_registry, "schema1"), "latest", known_configs={res.config_digest}
    )
    assert known.layer is None and known.config_digest == res.config_digest


async def test_per_host_concurrency_limit(fake_registry: FakeRegistry, registry_client):
    client = registry_client(per_host_limit=2)
    fake_registry.slow_seconds = 0.2
    try:
        started = time.monotonic()
        targets = [fake_target(fake_registry, "slow") for _ in range(4)]
        await asyncio.gather(*(client.list_tags(t) for t in targets))
        assert time.monotonic() - started >= 0.4  # two waves of two
    finally:
        fake_registry.slow_seconds = 1.0


async def test_token_cache_is_per_password(
    token_registry: RegistryServer, token_server: TokenServer, registry_client
):
    name = repo()
    await apush_image(token_registry.url, name, "v1", CONFIG, auth=BOB)
    client = registry_client()
    assert await client.list_tags(Target(token_registry.host, name, Credentials(*BOB))) == ["v1"]
    # same user name, wrong password: must not borrow the cached token
    with pytest.raises(RegistryAuthError):
        await client.list_tags(Target(token_registry.host, name, Credentials("bob", "guess")))


def test_the_config_caches_are_bounded() -> None:
    cache = ConfigCache(max_bytes=100, max_confirmed=2)
    for i in range(5):
        cache.put(f"sha256:{i}", Layer(author=str(i)), 40)
    assert cache.size[:2] == (2, 80)  # the two most recent, within 100 bytes
    assert cache.layer("sha256:0") is None and cache.layer("sha256:4") == Layer(author="4")
    for key in [("h", "r", "a"), ("h", "r", "b"), ("h", "r", "c")]:
        cache.confirm(key)
    assert not cache.is_confirmed(("h", "r", "a")) and cache.is_confirmed(("h", "r", "c"))
    assert cache.size[2] == 2
