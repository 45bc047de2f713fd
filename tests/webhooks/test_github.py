"""The GitHub receiver (ghcr.io) with GitHub's documented payloads (octokit/webhooks
payload-examples: registry_package/published.docker.payload.json, ping/payload.json)."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from core import webhook_auth as whauth
from core import webhooks as wh
from tests.conftest import insert_image, unique
from tests.webhooks.conftest import SECRET, fixture
from worker import inbox

URL = "/api/v1/webhooks/github/"
DIGEST = "sha256:" + "c" * 64


def signed(body: bytes, event: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": whauth.sign(body, secret), "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "Content-Type": "application/json",
    }


def tagged(owner: str, *, tag: str = "v1", digest: str = DIGEST, action: str = "published") -> dict[str, Any]:
    """GitHub's documented `published` example (its tag is empty: an untagged version) with a
    tag, a full digest and an owner of our own (tests share the database)."""
    doc = copy.deepcopy(fixture("github_registry_package_published.json"))
    doc["action"] = action
    doc["registry_package"]["owner"]["login"] = owner
    doc["registry_package"]["package_version"]["container_metadata"]["tag"] = {"name": tag, "digest": digest}
    return doc


def test_parser_maps_a_tagged_version_to_a_push_on_ghcr() -> None:
    [event] = wh.parse_github(tagged("Codertocat"))
    assert (event.source, event.kind, event.host, event.repository, event.tag, event.digest) == (
        "github", wh.PUSH, "ghcr.io", "codertocat/hello-world-npm", "v1", DIGEST)
    [updated] = wh.parse_github(tagged("Codertocat", action="updated"))
    assert updated.kind == wh.PUSH and updated.dedupe_key != event.dedupe_key


def test_parser_ignores_untagged_versions_other_packages_and_actions() -> None:
    documented = fixture("github_registry_package_published.json")
    assert wh.parse_github(documented) == []  # its container_metadata.tag.name is ""
    npm = tagged("x")
    del npm["registry_package"]["package_version"]["container_metadata"]
    assert wh.parse_github(npm) == []
    assert wh.parse_github({**tagged("x"), "action": "deleted"}) == []


def test_a_short_digest_asks_for_a_sync_of_the_tag() -> None:
    # the documented example's digest is 40 hex characters: not a digest to point a tag at
    short = fixture("github_registry_package_published.json")["registry_package"]["package_version"][
        "container_metadata"]["tag"]["digest"]
    [event] = wh.parse_github(tagged("x", digest=short))
    assert (event.kind, event.tag, event.digest) == (wh.SYNC, "v1", None)


async def test_registry_package_is_stored_once_as_a_push(wh_client: TestClient, pool: asyncpg.Pool) -> None:
    owner = unique("gh")
    body = orjson.dumps(tagged(owner))
    resp = await wh_client.post(URL, data=body, headers=signed(body, "registry_package"))
    assert resp.status == 202, await resp.text()
    row = await pool.fetchrow(
        "SELECT source, kind, host, tag, digest, status FROM webhook_events WHERE repository = $1",
        f"{owner}/hello-world-npm")
    assert tuple(row) == ("github", "push", "ghcr.io", "v1", DIGEST, "pending")
    again = await wh_client.post(URL, data=body, headers=signed(body, "registry_package"))
    assert again.status == 200 and await again.json() == {"accepted": 0, "duplicates": 1}


async def test_the_documented_untagged_version_is_acknowledged(wh_client: TestClient) -> None:
    body = orjson.dumps(fixture("github_registry_package_published.json"))
    resp = await wh_client.post(URL, data=body, headers=signed(body, "registry_package"))
    assert resp.status == 200 and await resp.json() == {"accepted": 0, "duplicates": 0}


@pytest.mark.parametrize("event, name", [("ping", "github_ping.json"), ("push", "github_ping.json")])
async def test_ping_and_other_events_are_200(wh_client: TestClient, pool: asyncpg.Pool, event: str,
                                             name: str) -> None:
    before = await pool.fetchval("SELECT count(*) FROM webhook_events")
    body = orjson.dumps(fixture(name))
    resp = await wh_client.post(URL, data=body, headers=signed(body, event))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["ignored"] == event
    assert await pool.fetchval("SELECT count(*) FROM webhook_events") == before


@pytest.mark.parametrize("headers", [
    {"X-GitHub-Event": "registry_package"},
    {"X-GitHub-Event": "ping", "X-Hub-Signature-256": "sha256=" + "0" * 64},
    {"X-GitHub-Event": "registry_package", "X-Hub-Signature": "sha1=" + "0" * 40},
])
async def test_unsigned_or_badly_signed_deliveries_are_401(
    wh_client: TestClient, pool: asyncpg.Pool, headers: dict[str, str],
) -> None:
    owner = unique("gh")
    resp = await wh_client.post(URL, data=orjson.dumps(tagged(owner)), headers=headers)
    assert resp.status == 401
    assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE repository LIKE $1 || '/%'",
                               owner) == 0


async def test_a_signature_of_another_body_is_refused(wh_client: TestClient) -> None:
    body = orjson.dumps(tagged(unique("gh")))
    forged = body.replace(b'"v1"', b'"v2"')
    resp = await wh_client.post(URL, data=forged, headers=signed(body, "registry_package"))
    assert resp.status == 401


async def test_the_push_moves_the_tag_of_a_registered_ghcr_image(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Any,
) -> None:
    owner = unique("gh")
    extra = {"access_proven": True} if await _has_access_proven(pool) else {}
    image_id = await insert_image(pool, name=f"ghcr.io/{owner}/hello-world-npm", **extra)
    body = orjson.dumps(tagged(owner))
    resp = await wh_client.post(URL, data=body, headers=signed(body, "registry_package"))
    assert resp.status == 202
    event_id = await pool.fetchval("SELECT id FROM webhook_events WHERE repository = $1",
                                   f"{owner}/hello-world-npm")
    batch = await inbox.apply_pending(pool, wh_settings, event_id)
    assert [a.status for a in batch.applied if a.event_id == event_id] == [inbox.DONE]
    row = await pool.fetchrow("SELECT state, manifest_digest FROM tags WHERE image_id = $1 AND name = 'v1'",
                              image_id)
    assert tuple(row) == ("Success", DIGEST)


async def _has_access_proven(pool: asyncpg.Pool) -> bool:
    # images.access_proven arrives with another branch; webhook pushes then need it set
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
        " WHERE table_name = 'images' AND column_name = 'access_proven')"))
