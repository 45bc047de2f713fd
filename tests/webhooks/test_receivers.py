"""The receivers over HTTP: authentication, validation, storage before the answer, dedupe."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core import webhook_auth as whauth
from core import webhooks as wh
from tests.conftest import unique
from tests.webhooks.conftest import OPERATOR, SECRET, Sender, fixture_text

H = "/api/v1/webhooks"
CNCF_TYPE = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}


async def stored(pool: asyncpg.Pool, ns: str) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE repository LIKE $1 || '/%'", ns))


def _build_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Signature-256": whauth.sign(body, secret), "Content-Type": "application/json"}


CASES = [
    # (fixture, sender, query, extra headers, events stored)
    ("registry_push.json", wh.REGISTRY, "", CNCF_TYPE, 1),
    ("registry_multiarch.json", wh.REGISTRY, "", CNCF_TYPE, 1),
    ("registry_delete.json", wh.REGISTRY, "", {}, 2),
    ("dockerhub_push.json", wh.DOCKERHUB, "", {}, 1),
    ("harbor_push.json", wh.HARBOR, "", {}, 1),
    ("harbor_push_by_digest.json", wh.HARBOR, "", {}, 0),
    ("harbor_cloudevents_push.json", wh.HARBOR, "", {"Content-Type": "application/cloudevents+json"}, 1),
    ("harbor_delete.json", wh.HARBOR, "", {}, 1),
    ("quay_repo_push.json", wh.QUAY, "", {}, 1),
    ("quay_repo_push_old.json", wh.QUAY, "", {}, 1),
    ("quay_build_start.json", wh.QUAY, "?event=build_start", {}, 2),
    ("quay_build_failure.json", wh.QUAY, "", {}, 2),
]


@pytest.mark.parametrize("name, kind, query, headers, n", CASES, ids=[c[0] for c in CASES])
async def test_every_sender_format_is_stored_once(
    wh_client: TestClient, pool: asyncpg.Pool, sender: Sender, name: str, kind: str, query: str,
    headers: dict[str, str], n: int,
) -> None:
    ns = unique("hook")
    body = fixture_text(name, ns)
    resp = await sender.post(wh_client, kind, body, query, headers)
    assert resp.status == (202 if n else 200), await resp.text()
    assert (await resp.json())["accepted"] == n
    assert await stored(pool, ns) == n
    again = await sender.post(wh_client, kind, body, query, headers)  # a duplicate delivery
    assert again.status == 200 and (await again.json()) == {"accepted": 0, "duplicates": n}
    assert await stored(pool, ns) == n
    scope = await pool.fetch("SELECT DISTINCT account_id FROM webhook_events WHERE repository LIKE $1 || '/%'", ns)
    assert [r["account_id"] for r in scope] == ([] if not n else [None] if sender.kind == OPERATOR
                                                 else [sender.user.account.id])


async def test_generic_build_event_is_signed(wh_client: TestClient, pool: asyncpg.Pool, sender: Sender) -> None:
    ns = unique("hook")
    resp = await sender.post(wh_client, wh.BUILD, fixture_text("build_success.json", ns))
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


@pytest.mark.parametrize("kind, body", [
    (wh.REGISTRY, "not json"),
    (wh.REGISTRY, ""),
    (wh.REGISTRY, '{"events": {}}'),
    (wh.DOCKERHUB, '{"push_data": {"tag": "x", "pushed_at": 1}, "repository": {"repo_name": "NS/Bad"}}'),
    (wh.HARBOR, '{"type": "PUSH_ARTIFACT", "occur_at": 1, "event_data": {"resources": [{}],'
                ' "repository": {"repo_full_name": "a/b"}}}'),
    (wh.QUAY, '{"repository": "a/b", "updated_tags": "latest"}'),
])
async def test_malformed_body_is_400_with_a_sentence_and_stores_nothing(
    wh_client: TestClient, pool: asyncpg.Pool, sender: Sender, kind: str, body: str,
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM webhook_events")
    resp = await sender.post(wh_client, kind, body)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("malformed")
    assert await pool.fetchval("SELECT count(*) FROM webhook_events") == before


async def test_malformed_signed_build_event_is_400(wh_client: TestClient, sender: Sender) -> None:
    resp = await sender.post(wh_client, wh.BUILD, b'{"image": "a/b", "tag": "v1", "status": "maybe", "timestamp": 1}')
    assert resp.status == 400 and "status" in (await resp.json())["error"]


async def test_receivers_are_closed_without_a_configured_secret(client: TestClient) -> None:
    # the session app has no WEBHOOK_SECRET: an empty secret never matches
    resp = await client.post(f"{H}/registry/", data=fixture_text("registry_push.json"),
                             headers={"Authorization": "Bearer "})
    assert resp.status == 401
    assert "WEBHOOK_SECRET" in (await resp.json())["error"]
