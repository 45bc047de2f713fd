"""Outgoing notifications end to end: a real registry, syncs and webhook events changing
tags, the outbox written by the triggers, the deliverer sending to loopback receivers; every
delivery verified with the Standard Webhooks project's own library."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import standardwebhooks
from aiohttp.test_utils import TestClient

from api.webhooks import store_events
from core import webhooks as wh
from core.names import parse_image_name
from tests.conftest import MakeUser, insert_image, unique
from tests.notify.conftest import Receiver, eventually, subscribe
from tests.support.registry import RegistryServer, apush_image
from worker import inbox, sync
from worker.runtime import Runtime


def verified(secret: str, r: Any) -> dict[str, Any]:
    """The body of a received delivery, after standardwebhooks verified its signature."""
    body: dict[str, Any] = standardwebhooks.Webhook(secret).verify(r.body, r.headers)
    return body


async def _image(pool: asyncpg.Pool, reg: RegistryServer, owner_id: int | None) -> tuple[str, int]:
    name = f"{reg.host}/{unique('nt')}/app"
    return name, await insert_image(pool, name=name, owner_id=owner_id, access_proven=True)


async def test_a_repushed_tag_gives_one_signed_tag_moved_with_both_digests(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, image_id = await _image(pool, nt_registry, user.account.id)
    repo = parse_image_name(name).repository
    first = await apush_image(nt_registry.url, repo, "latest", {"created": "2024-01-01T00:00:00Z"})
    sub = await subscribe(nt_client, user, receiver.url(), ["tag.pushed", "tag.moved"])
    assert sub["secret"].startswith("whsec_")
    assert await sync.sync_image(nt_runtime, image_id) == sync.SYNCED
    second = await apush_image(nt_registry.url, repo, "latest", {"created": "2024-02-01T00:00:00Z"})
    assert await sync.sync_image(nt_runtime, image_id) == sync.SYNCED
    await sync.sync_image(nt_runtime, image_id)  # nothing changed: nothing more is sent

    got = await eventually(lambda: _async(len(receiver.got) >= 2 and receiver.got))
    bodies = [verified(sub["secret"], r) for r in got]
    assert [b["type"] for b in bodies] == ["tag.pushed", "tag.moved"]
    moved = bodies[1]
    assert moved["data"]["digest"] == second.digest
    assert moved["data"]["previous_digest"] == first.digest
    assert moved["data"]["image"] == name and moved["data"]["tag"] == "latest"
    assert moved["data"]["observed_via"] == "poll" and moved["data"]["expected_immutable"] is False
    assert moved["timestamp"].endswith("Z")
    # webhook-ids are distinct per delivery, the timestamp header is the attempt's
    assert len({r.headers["webhook-id"] for r in got}) == 2
    resp = await nt_client.get(f"{sub['resource_uri']}delivery/", headers=user.headers)
    log = await resp.json()
    assert [d["status"] for d in log["objects"]] == ["delivered", "delivered"]
    assert log["objects"][0]["attempts"][0]["status"] == 200


async def _async(value: Any) -> Any:
    return value


async def _push_event(rt: Runtime, name: str, tag: str, digest: str) -> None:
    n = parse_image_name(name)
    ev = wh.WebhookEvent(wh.REGISTRY, unique("nt-ev"), wh.PUSH, n.host, n.repository, tag, digest,
                         payload={"test": True})
    [event_id] = await store_events(rt.pool, [ev])
    assert await inbox.process_event(rt, event_id) == inbox.DONE


async def test_a_receiver_that_fails_then_answers_gets_the_same_webhook_id_again(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, _ = await _image(pool, nt_registry, user.account.id)
    pushed = await apush_image(nt_registry.url, parse_image_name(name).repository, "v1", {})
    receiver.answers["/flaky"] = [(500, {}), (200, {})]
    sub = await subscribe(nt_client, user, receiver.url("/flaky"), ["tag.pushed"])
    await _push_event(nt_runtime, name, "v1", pushed.digest)

    got = await eventually(lambda: _async(len(receiver.got) >= 2 and receiver.got))
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    for r in got:
        assert verified(sub["secret"], r)["data"]["observed_via"] == "webhook"
    assert got[0].body == got[1].body  # the same body, signed again with the attempt's time

    async def delivered() -> dict[str, Any] | None:
        # the deliverer records the answer after the receiver has it
        log = await (await nt_client.get(f"{sub['resource_uri']}delivery/", headers=user.headers)).json()
        [one] = log["objects"]
        return one if one["status"] != "pending" else None

    delivery = await eventually(delivered)
    assert delivery["status"] == "delivered" and delivery["webhook_id"] == got[0].headers["webhook-id"]
    assert [a["status"] for a in delivery["attempts"]] == [500, 200]
    assert delivery["attempts"][0]["response"] == "answer 500"


async def test_410_disables_the_subscription_and_nothing_more_is_sent(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, _ = await _image(pool, nt_registry, user.account.id)
    repo = parse_image_name(name).repository
    a = await apush_image(nt_registry.url, repo, "a", {})
    receiver.answers["/gone"] = [(410, {})]
    sub = await subscribe(nt_client, user, receiver.url("/gone"), ["tag.pushed"])
    await _push_event(nt_runtime, name, "a", a.digest)

    async def disabled() -> Any:
        body = await (await nt_client.get(sub["resource_uri"], headers=user.headers)).json()
        return not body["enabled"] and body

    body = await eventually(disabled)
    assert "410" in body["disabled_reason"]
    b = await apush_image(nt_registry.url, repo, "b", {})
    await _push_event(nt_runtime, name, "b", b.digest)
    pending = "SELECT count(*) FROM notification_deliveries WHERE subscription_id = $1 AND status = 'pending'"
    await eventually(lambda: _count_is(pool, pending, sub["id"], 1))  # the 410'd one waits; b was not fanned out
    await eventually(lambda: _count_is(pool, "SELECT count(*) FROM notification_events WHERE NOT fanned_out", 0))
    assert len(receiver.to("/gone")) == 1


async def _count_is(pool: asyncpg.Pool, sql: str, arg: Any, want: int | None = None) -> bool:
    if want is None:
        return int(await pool.fetchval(sql)) == arg
    return int(await pool.fetchval(sql, arg)) == want


async def test_a_redirect_is_not_followed(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, _ = await _image(pool, nt_registry, user.account.id)
    pushed = await apush_image(nt_registry.url, parse_image_name(name).repository, "x", {})
    receiver.answers["/moved"] = [(302, {"Location": receiver.url("/target")})]
    sub = await subscribe(nt_client, user, receiver.url("/moved"), ["tag.pushed"])
    await _push_event(nt_runtime, name, "x", pushed.digest)

    async def attempts() -> Any:
        log = await (await nt_client.get(f"{sub['resource_uri']}delivery/", headers=user.headers)).json()
        return log["objects"] and len(log["objects"][0]["attempts"]) >= 2 and log["objects"][0]

    delivery = await eventually(attempts)
    assert {a["status"] for a in delivery["attempts"]} == {302}
    assert receiver.to("/target") == []
    assert len(receiver.to("/moved")) >= 2


async def test_429_retry_after_is_honoured(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, _ = await _image(pool, nt_registry, user.account.id)
    pushed = await apush_image(nt_registry.url, parse_image_name(name).repository, "x", {})
    receiver.answers["/busy"] = [(429, {"Retry-After": "1"}), (200, {})]
    await subscribe(nt_client, user, receiver.url("/busy"), ["tag.pushed"])
    await _push_event(nt_runtime, name, "x", pushed.digest)
    got = await eventually(lambda: _async(len(receiver.got) >= 2 and receiver.got))
    # the schedule alone would retry after 0.2 s
    assert got[1].at - got[0].at >= 1.0


async def test_another_account_hears_nothing_of_a_private_image(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    owner, other = await make_user(), await make_user()
    private, _ = await _image(pool, nt_registry, owner.account.id)
    catalog, _ = await _image(pool, nt_registry, None)
    # naming the other's private image is refused like a name that does not exist
    resp = await nt_client.post("/api/v1/subscription/", headers=other.headers, json={
        "url": receiver.url("/other"), "events": ["tag.pushed"], "image": private})
    assert resp.status == 400 and "no image" in (await resp.json())["error"]
    await subscribe(nt_client, other, receiver.url("/other"), ["tag.pushed", "tag.moved", "image.state"])
    await subscribe(nt_client, other, receiver.url("/other-catalog"), ["tag.pushed"], image=catalog)
    mine = await subscribe(nt_client, owner, receiver.url("/owner"), ["tag.pushed"])
    for name in (private, catalog):
        pushed = await apush_image(nt_registry.url, parse_image_name(name).repository, "v1", {})
        await _push_event(nt_runtime, name, "v1", pushed.digest)

    await eventually(lambda: _async(receiver.to("/owner") and receiver.to("/other-catalog")))
    await eventually(lambda: _count_is(pool, "SELECT count(*) FROM notification_events WHERE NOT fanned_out", 0))
    assert receiver.to("/other") == []
    assert verified(mine["secret"], receiver.to("/owner")[0])["data"]["image"] == private
    resp = await nt_client.get(mine["resource_uri"], headers=other.headers)
    assert resp.status == 404
    resp = await nt_client.get(f"{mine['resource_uri']}delivery/", headers=other.headers)
    assert resp.status == 404


async def test_a_moved_immutable_tag_is_flagged_in_the_event_and_at_sync(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, _ = await _image(pool, nt_registry, user.account.id)
    resp = await nt_client.patch(f"/api/v1/image/{name}/", headers=user.headers,
                                 json={"immutable_tags": ["v*.*.*"]})
    assert resp.status == 200, await resp.text()
    sub = await subscribe(nt_client, user, receiver.url(), ["tag.moved"], tag_pattern="v*")
    repo = parse_image_name(name).repository
    for _ in range(2):
        pushed = await apush_image(nt_registry.url, repo, "v1.2.3", {})
        await _push_event(nt_runtime, name, "v1.2.3", pushed.digest)
    [r] = await eventually(lambda: _async(receiver.got))
    assert verified(sub["secret"], r)["data"]["expected_immutable"] is True
    status = await (await nt_client.get(f"/api/v1/image/{name}/sync/", headers=user.headers)).json()
    assert status["immutable_tags"] == ["v*.*.*"]
    [warning] = status["warnings"]
    assert warning["tag"] == "v1.2.3" and warning["digest"] == pushed.digest


async def test_a_rotated_secret_signs_alongside_the_old_one(
    pool: asyncpg.Pool, nt_client: TestClient, nt_runtime: Runtime, nt_registry: RegistryServer,
    make_user: MakeUser, receiver: Receiver, deliverer: None,
) -> None:
    user = await make_user()
    name, _ = await _image(pool, nt_registry, user.account.id)
    sub = await subscribe(nt_client, user, receiver.url(), ["tag.pushed"])
    rotated = await (await nt_client.post(f"{sub['resource_uri']}rotate/", headers=user.headers)).json()
    assert rotated["secret"] != sub["secret"]
    assert "secret" not in await (await nt_client.get(sub["resource_uri"], headers=user.headers)).json()
    pushed = await apush_image(nt_registry.url, parse_image_name(name).repository, "v1", {})
    await _push_event(nt_runtime, name, "v1", pushed.digest)
    [r] = await eventually(lambda: _async(receiver.got))
    assert len(r.headers["webhook-signature"].split(" ")) == 2
    assert verified(rotated["secret"], r) == verified(sub["secret"], r)
    # redelivery: the same webhook-id again
    [d] = (await (await nt_client.get(f"{sub['resource_uri']}delivery/", headers=user.headers)).json())["objects"]
    resp = await nt_client.post(d["redeliver"], headers=user.headers)
    assert resp.status == 202
    got = await eventually(lambda: _async(len(receiver.got) >= 2 and receiver.got))
    assert got[1].headers["webhook-id"] == got[0].headers["webhook-id"]
    assert orjson.loads(got[1].body) == orjson.loads(got[0].body)
