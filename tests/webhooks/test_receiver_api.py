"""`/api/v1/receiver/`: each account's own receivers (GET, rotate), their tenancy, their
secrets (sealed at rest, never in logs or metric labels) and their authentication."""

from __future__ import annotations

import asyncpg
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient, make_mocked_request

from api.request_log import logged_path
from core import webhook_auth as whauth
from core import webhooks as wh
from core.crypto import CredentialBox
from core.settings import Settings
from tests.conftest import MakeUser, User, unique
from tests.ops.test_openapi import check
from tests.webhooks.conftest import ACCOUNT, fixture_text, make_sender

SENDERS = ["registry", "dockerhub", "harbor", "quay", "github", "build"]


async def listed(client: TestClient, user: User) -> list[dict[str, str | None]]:
    resp = await client.get("/api/v1/receiver/", headers=user.headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store" and "ETag" not in resp.headers
    return list((await check(resp, "/api/v1/receiver/"))["objects"])


async def test_each_account_has_its_own_receivers_and_sees_only_them(
    wh_client: TestClient, make_user: MakeUser, pool: asyncpg.Pool, wh_settings: Settings,
) -> None:
    alice, bob = await make_user(), await make_user()
    mine = await listed(wh_client, alice)
    assert [r["sender"] for r in mine] == SENDERS
    assert await listed(wh_client, alice) == mine  # created once, the same on every look
    for r in mine:
        url = str(r["url"])
        assert url.startswith(f"/api/v1/webhooks/{r['sender']}/rcv_")
        if r["sender"] in ("dockerhub", "quay"):  # the URL carries the secret
            assert r["secret"] is None and len(url.rstrip("/").rsplit("/", 1)[1]) >= 43
        else:
            assert r["secret"] and len(str(r["secret"])) >= 43 and str(r["secret"]) not in url
    theirs = await listed(wh_client, bob)
    texts = orjson.dumps(mine).decode()
    assert not any(str(r["url"]) in texts or (r["secret"] and str(r["secret"]) in texts) for r in theirs)
    # sealed at rest with SECRET_KEY: no secret in the table as it is
    stored = await pool.fetch("SELECT secret FROM receivers WHERE account_id = $1", alice.account.id)
    box = CredentialBox(wh_settings.secret_key)
    secrets = {box.open_text(r["secret"]) for r in stored}
    assert {str(r["secret"]) for r in mine if r["secret"]} < secrets
    assert not any(s.encode() in bytes(r["secret"]) for r in stored for s in secrets)
    unauthenticated = await wh_client.get("/api/v1/receiver/")
    assert unauthenticated.status == 401


async def test_rotation_renews_every_receiver_and_the_old_ones_stop_at_once(
    wh_client: TestClient, make_user: MakeUser, pool: asyncpg.Pool,
) -> None:
    alice, bob = await make_user(), await make_user()
    old = await make_sender(wh_client, ACCOUNT, alice)
    bobs = await listed(wh_client, bob)
    ns = unique("rot")
    body = fixture_text("registry_push.json", ns)
    assert (await old.post(wh_client, wh.REGISTRY, body)).status == 202
    resp = await wh_client.post("/api/v1/receiver/rotate/", headers=alice.headers)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    new = (await check(resp, "/api/v1/receiver/rotate/", "POST"))["objects"]
    assert new == await listed(wh_client, alice)
    assert not {str(r["url"]) for r in new} & {str(r["url"]) for r in old.receivers.values()}
    assert await listed(wh_client, bob) == bobs  # another account's are untouched
    for sender in SENDERS:  # every old URL and secret is refused now
        resp = await old.post(wh_client, sender, fixture_text("registry_push.json", unique("rot")))
        assert resp.status == 401, (sender, await resp.text())
    fresh = await make_sender(wh_client, ACCOUNT, alice)
    assert (await fresh.post(wh_client, wh.REGISTRY, fixture_text("registry_push.json", unique("rot")))).status == 202


@pytest.mark.parametrize("sender", SENDERS)
async def test_an_account_receiver_takes_only_its_own_secret(
    wh_client: TestClient, make_user: MakeUser, pool: asyncpg.Pool, sender: str,
) -> None:
    alice, bob = await make_user(), await make_user()
    mine, theirs = await make_sender(wh_client, ACCOUNT, alice), await make_sender(wh_client, ACCOUNT, bob)
    ns = unique("wrong")
    body = fixture_text("registry_push.json", ns).encode()
    url = mine.path(sender)
    rid = url.split("/")[5]
    unknown = url.replace(rid, "rcv_" + "x" * 22)
    attempts: list[tuple[str, dict[str, str]]]
    if sender in ("dockerhub", "quay"):  # the secret is the URL's last component
        base = url.rsplit("/", 2)[0]
        bobs = theirs.path(sender).rstrip("/").rsplit("/", 1)[1]
        attempts = [(f"{base}/wrong/", {}), (f"{base}/{bobs}/", {}), (unknown, {})]
    else:
        wrong = {"Authorization": "Bearer wrong", "X-Signature-256": whauth.sign(body, "wrong"),
                 "X-Hub-Signature-256": whauth.sign(body, "wrong")}
        attempts = [(url, {}), (url, wrong), (url, theirs.headers(sender, body)), (unknown, mine.headers(sender, body))]
    for path, headers in attempts:
        resp = await wh_client.post(path, data=body, headers={"Content-Type": "application/json", **headers})
        assert resp.status == 401, (path, await resp.text())
        assert "secret" in (await resp.json())["error"]
    assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE repository LIKE $1 || '/%'", ns) == 0


async def test_account_receiver_urls_stay_out_of_logs_and_metric_labels(
    wh_client: TestClient, make_user: MakeUser,
) -> None:
    user = await make_user()
    mine = await make_sender(wh_client, ACCOUNT, user)
    with structlog.testing.capture_logs() as logs:
        for sender in SENDERS:
            await mine.post(wh_client, sender, fixture_text("registry_push.json", unique("leak")))
            await wh_client.post(mine.path(sender) + "extra/", data=b"{}")  # no such route
    scraped = await (await wh_client.get("/metrics")).text()
    paths = [logged_path(make_mocked_request("POST", mine.path(s) + extra)) for s in SENDERS for extra in ("", "x/")]
    assert all(p.endswith("/[redacted]/") for p in paths), paths
    text = orjson.dumps(logs, default=str).decode() + scraped + "".join(paths)
    for r in mine.receivers.values():
        parts = [p for p in str(r["url"]).split("/") if p.startswith("rcv_")]
        assert parts and parts[0] not in text
        assert not r["secret"] or str(r["secret"]) not in text
    assert "/api/v1/webhooks/dockerhub/{receiver}/{token}/" in scraped
