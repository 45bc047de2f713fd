"""The receivers over HTTP: authentication, validation, storage before the answer, dedupe."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core import webhook_auth as whauth
from tests.conftest import unique
from tests.webhooks.conftest import QUAY_SECRET, SECRET, fixture_text

H = "/api/v1/webhooks"
BEARER = {"Authorization": f"Bearer {SECRET}"}
CNCF_TYPE = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}


async def stored(pool: asyncpg.Pool, ns: str) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE repository LIKE $1 || '/%'", ns))


def _build_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Signature-256": whauth.sign(body, secret), "Content-Type": "application/json"}


CASES = [
    # (fixture, path, headers, events stored)
    ("registry_push.json", f"{H}/registry/", {**BEARER, **CNCF_TYPE}, 1),
    ("registry_multiarch.json", f"{H}/registry", {**BEARER, **CNCF_TYPE}, 1),
    ("registry_delete.json", f"{H}/registry/", BEARER, 2),
    ("dockerhub_push.json", f"{H}/dockerhub/{SECRET}/", {}, 1),
    ("harbor_push.json", f"{H}/harbor/", {"Authorization": SECRET}, 1),
    ("harbor_push_by_digest.json", f"{H}/harbor/", BEARER, 0),
    ("harbor_cloudevents_push.json", f"{H}/harbor/",
     {**BEARER, "Content-Type": "application/cloudevents+json"}, 1),
    ("harbor_delete.json", f"{H}/harbor/", BEARER, 1),
    ("quay_repo_push.json", f"{H}/quay/{QUAY_SECRET}/", {}, 1),
    ("quay_repo_push_old.json", f"{H}/quay/{QUAY_SECRET}/", {}, 1),
    ("quay_build_start.json", f"{H}/quay/{QUAY_SECRET}/?event=build_start", {}, 2),
    ("quay_build_failure.json", f"{H}/quay/{QUAY_SECRET}/", {}, 2),
]


@pytest.mark.parametrize("name, path, headers, n", CASES, ids=[c[0] for c in CASES])
async def test_every_sender_format_is_stored_once(
    wh_client: TestClient, pool: asyncpg.Pool, name: str, path: str, headers: dict[str, str], n: int,
) -> None:
    ns = unique("hook")
    body = fixture_text(name, ns)
    resp = await wh_client.post(path, data=body, headers=headers)
    assert resp.status == (202 if n else 200), await resp.text()
    assert (await resp.json())["accepted"] == n
    assert await stored(pool, ns) == n
    again = await wh_client.post(path, data=body, headers=headers)  # a duplicate delivery
    assert again.status == 200 and (await again.json()) == {"accepted": 0, "duplicates": n}
    assert await stored(pool, ns) == n


async def test_generic_build_event_is_signed(wh_client: TestClient, pool: asyncpg.Pool) -> None:
    ns = unique("hook")
    body = fixture_text("build_success.json", ns).encode()
    resp = await wh_client.post(f"{H}/build/", data=body, headers=_build_headers(body))
    assert resp.status == 202, await resp.text()
    row = await pool.fetchrow(
        "SELECT kind, build_state, occurred_at, status FROM webhook_events WHERE repository = $1",
        f"{ns}/app")
    assert (row["kind"], row["build_state"], row["status"]) == ("build", "Success", "pending")


@pytest.mark.parametrize("name, path, headers", [
    ("registry_push.json", f"{H}/registry/", {}),
    ("registry_push.json", f"{H}/registry/", {"Authorization": "Bearer wrong"}),
    ("registry_push.json", f"{H}/registry/", {"Authorization": f"Basic {SECRET}"}),
    ("dockerhub_push.json", f"{H}/dockerhub/wrong/", {}),
    ("harbor_push.json", f"{H}/harbor/", {"Authorization": "nope"}),
    ("quay_repo_push.json", f"{H}/quay/{SECRET}/", {}),  # quay has its own secret
    ("build_success.json", f"{H}/build/", {}),
    ("build_success.json", f"{H}/build/", {"X-Signature-256": "sha256=" + "0" * 64}),
])
async def test_wrong_or_missing_secret_is_401_and_stores_nothing(
    wh_client: TestClient, pool: asyncpg.Pool, name: str, path: str, headers: dict[str, str],
) -> None:
    ns = unique("hook")
    resp = await wh_client.post(path, data=fixture_text(name, ns), headers=headers)
    assert resp.status == 401
    assert "secret" in (await resp.json())["error"]
    assert await stored(pool, ns) == 0


async def test_build_signature_of_another_body_is_refused(wh_client: TestClient) -> None:
    body = fixture_text("build_success.json", unique("hook")).encode()
    forged = body.replace(b"success", b"failed")
    resp = await wh_client.post(f"{H}/build/", data=forged, headers=_build_headers(body))
    assert resp.status == 401


@pytest.mark.parametrize("path, headers, body", [
    (f"{H}/registry/", BEARER, "not json"),
    (f"{H}/registry/", BEARER, ""),
    (f"{H}/registry/", BEARER, '{"events": {}}'),
    (f"{H}/dockerhub/{SECRET}/", {},
     '{"push_data": {"tag": "x", "pushed_at": 1}, "repository": {"repo_name": "NS/Bad"}}'),
    (f"{H}/harbor/", BEARER,
     '{"type": "PUSH_ARTIFACT", "occur_at": 1, "event_data": {"resources": [{}],'
     ' "repository": {"repo_full_name": "a/b"}}}'),
    (f"{H}/quay/{QUAY_SECRET}/", {}, '{"repository": "a/b", "updated_tags": "latest"}'),
])
async def test_malformed_body_is_400_with_a_sentence_and_stores_nothing(
    wh_client: TestClient, pool: asyncpg.Pool, path: str, headers: dict[str, str], body: str,
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM webhook_events")
    resp = await wh_client.post(path, data=body, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("malformed")
    assert await pool.fetchval("SELECT count(*) FROM webhook_events") == before


async def test_malformed_signed_build_event_is_400(wh_client: TestClient) -> None:
    body = b'{"image": "a/b", "tag": "v1", "status": "maybe", "timestamp": 1}'
    resp = await wh_client.post(f"{H}/build/", data=body, headers=_build_headers(body))
    assert resp.status == 400 and "status" in (await resp.json())["error"]


async def test_receivers_are_closed_without_a_configured_secret(client: TestClient) -> None:
    # the session app has no WEBHOOK_SECRET: an empty secret never matches
    resp = await client.post(f"{H}/registry/", data=fixture_text("registry_push.json"),
                             headers={"Authorization": "Bearer "})
    assert resp.status == 401
    assert "WEBHOOK_SECRET" in (await resp.json())["error"]
