"""Build events of each sender with build ids (Quay, the generic event), delivered out of order
and twice, through the receivers; the end of builds that never finish; Harbor's delete of an
artifact with several tags."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core import webhooks as wh
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.support.quay import QuayStandIn, quay_build
from tests.support.registry import RegistryServer, apush_image
from tests.webhooks.conftest import ACCOUNT, EXAMPLE, Sender, fixture, make_sender
from worker import builds, inbox, sync
from worker.runtime import Runtime

H = "/api/v1/webhooks"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "d" * 64


async def apply_all(pool: asyncpg.Pool, settings: Settings) -> None:
    """What the worker does with the messages: apply every pending event (in batches)."""
    while (await inbox.apply_pending(pool, settings, 0)).applied:
        pass


async def tag(pool: asyncpg.Pool, image_id: int, name: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM tags WHERE image_id = $1 AND name = $2", image_id, name)


async def image_state(pool: asyncpg.Pool, image_id: int) -> str:
    return str(await pool.fetchval("SELECT state FROM images WHERE id = $1", image_id))


class Quay:
    def __init__(self, client: TestClient, sender: Sender, ns: str, host: str = "quay.io") -> None:
        self.client, self.sender, self.ns, self.host = client, sender, ns, host

    @classmethod
    async def registered(cls, client: TestClient, pool: asyncpg.Pool, sender: Sender) -> tuple[Quay, int]:
        """A sender for a new quay.io repository, and the sender's proven image of it."""
        ns = unique("quay")
        image_id = await insert_image(pool, name=f"quay.io/{ns}/app", owner_id=sender.user.account.id,
                                      access_proven=True)
        return cls(client, sender, ns), image_id

    async def send(self, event: str, build_id: str, tags: list[str]) -> int:
        body = fixture("quay_build_start.json", self.ns) | {"build_id": build_id, "docker_tags": tags,
                                                            "docker_url": f"{self.host}/{self.ns}/app"}
        resp = await self.sender.post(self.client, wh.QUAY, body, f"?event={event}")
        assert resp.status in (200, 202), await resp.text()
        return int((await resp.json())["accepted"])


async def test_quay_build_delivered_out_of_order_and_twice_ends_in_its_terminal_state(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    (quay, image_id), build = await Quay.registered(wh_client, pool, sender), unique("build")
    assert await quay.send("build_queued", build, ["latest"]) == 1
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "latest"))["state"] == "Building"
    await quay.send("build_success", build, ["latest"])
    await apply_all(pool, wh_settings)
    # Quay retries a delivery that failed: its `build_start` arrives last
    assert await quay.send("build_start", build, ["latest"]) == 1
    await apply_all(pool, wh_settings)
    # and twice: the same deliveries again are duplicates
    assert await quay.send("build_start", build, ["latest"]) == 0
    assert await quay.send("build_success", build, ["latest"]) == 0
    await apply_all(pool, wh_settings)
    latest = await tag(pool, image_id, "latest")
    assert (latest["state"], latest["build_id"]) == ("Success", build)
    assert await image_state(pool, image_id) == "Success"
    # Quay's bodies have no time: the database's receipt time orders them, no process's clock
    assert await pool.fetchval(
        "SELECT bool_and(occurred_at = received_at) FROM webhook_events WHERE build_id = $1", build)
    note = await pool.fetchval(
        "SELECT note FROM webhook_events WHERE build_id = $1 AND dedupe_key LIKE '%build_start%'", build)
    assert "later phase" in note


async def test_quay_events_of_one_batch_in_any_order(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    (quay, image_id), build = await Quay.registered(wh_client, pool, sender), unique("build")
    for event in ("build_queued", "build_failure", "build_start"):  # stored, then applied at once
        await quay.send(event, build, ["1.0"])
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "1.0"))["state"] == "Failed"
    assert await image_state(pool, image_id) == "Failed"


async def test_quay_a_newer_build_wins_over_a_late_older_one(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    (quay, image_id), old, new = await Quay.registered(wh_client, pool, sender), unique("old"), unique("new")
    await quay.send("build_queued", old, ["latest"])
    await apply_all(pool, wh_settings)
    await quay.send("build_queued", new, ["latest"])  # first seen later: the newer build
    await apply_all(pool, wh_settings)
    await quay.send("build_success", old, ["latest"])  # the old build finishes late
    await apply_all(pool, wh_settings)
    latest = await tag(pool, image_id, "latest")
    assert (latest["state"], latest["build_id"]) == ("Building", new)
    await quay.send("build_failure", new, ["latest"])
    await quay.send("build_start", old, ["latest"])
    await apply_all(pool, wh_settings)
    latest = await tag(pool, image_id, "latest")
    assert (latest["state"], latest["build_id"]) == ("Failed", new)
    assert await image_state(pool, image_id) == "Failed"


async def test_quay_a_cancelled_build_leaves_what_the_registry_shows(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    """Quay's build_cancelled webhook, like its build API's `cancelled` phase: a tag the
    registry has (a digest) is `Success` again, a tag only the build named is gone."""
    (quay, image_id), build = await Quay.registered(wh_client, pool, sender), unique("cancelled")
    await pool.execute("INSERT INTO tags (image_id, name, state, manifest_digest) VALUES ($1, 'latest', 'Success', $2)",
                       image_id, DIGEST)
    await quay.send("build_queued", build, ["latest", "next"])
    await apply_all(pool, wh_settings)
    assert await image_state(pool, image_id) == "Building"
    await quay.send("build_cancelled", build, ["latest", "next"])
    await apply_all(pool, wh_settings)
    latest = await tag(pool, image_id, "latest")
    assert (latest["state"], latest["manifest_digest"]) == ("Success", DIGEST)
    assert await tag(pool, image_id, "next") is None
    assert await image_state(pool, image_id) == "Success"


class Generic:
    def __init__(self, client: TestClient, sender: Sender, name: str) -> None:
        self.client, self.sender, self.name = client, sender, name

    @classmethod
    async def registered(cls, client: TestClient, pool: asyncpg.Pool, sender: Sender) -> tuple[Generic, int]:
        """A CI sending for a new image, and the sender's proven image of it."""
        name = f"{EXAMPLE}/{unique('ci')}/app"
        image_id = await insert_image(pool, name=name, owner_id=sender.user.account.id, access_proven=True)
        return cls(client, sender, name), image_id

    async def send(self, status: str, at: datetime, build_id: Any = None, tag: str = "v1") -> int:
        doc: dict[str, Any] = {"image": self.name, "tag": tag, "status": status, "timestamp": at.isoformat()}
        if build_id is not None:
            doc["build_id"] = build_id
        resp = await self.sender.post(self.client, wh.BUILD, doc)
        assert resp.status in (200, 202), await resp.text()
        return int((await resp.json())["accepted"])


@pytest.fixture(scope="module")
def quay_host(wh_registry: RegistryServer) -> Iterator[QuayStandIn]:
    with QuayStandIn(wh_registry) as stand_in:
        yield stand_in


async def test_quay_webhooks_and_its_build_api_name_one_build(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, quay_host: QuayStandIn, make_user: MakeUser,
) -> None:
    """Quay's build webhooks (here through the owner's own receiver) and its build API (read by
    the sync) both name a build by its id: one place in the order of builds, forward-only
    across both channels."""
    ns, first, newer = unique("quayapi"), unique("first"), unique("newer")
    repo = f"{ns}/app"
    await apush_image(quay_host.registry.url, repo, "latest", {"created": "2024-01-01T00:00:00Z"})
    owner = await make_sender(wh_client, ACCOUNT, await make_user())
    image_id = await insert_image(pool, name=f"{quay_host.host}/{repo}", owner_id=owner.user.account.id,
                                  access_proven=True)
    quay = Quay(wh_client, owner, ns, host=quay_host.host)
    settings = dataclasses.replace(wh_settings, quay_hosts=frozenset({quay_host.host}),
                                   insecure_registries=frozenset({quay_host.host}))
    # the order as the owner knows it: its own sightings and the registry's (its build API)
    order = ("SELECT min(first_seen_at) AS first_seen_at, min(ended_at) AS ended_at FROM builds"
             " WHERE host = $1 AND repository = $2 AND build_id = $3")
    async with contextlib.aclosing(await Runtime(settings, name="test-quay-api", backoff_base=0.01).open()) as rt:
        assert await sync.sync_image(rt, image_id) == sync.SYNCED  # no builds yet
        # a build the webhook announced first keeps its first sight when the API lists it
        await quay.send("build_queued", first, ["latest"])
        await apply_all(pool, wh_settings)
        announced = await pool.fetchrow(order, quay_host.host, repo, first)
        quay_host.script(repo, [quay_build(first, "building", repository=repo)])
        assert await sync.sync_image(rt, image_id) == sync.SYNCED
        assert await pool.fetchrow(order, quay_host.host, repo, first) == announced
        assert (await tag(pool, image_id, "latest"))["state"] == "Building"

        # the API lists a newer build: it wins; the late webhook of the older one changes nothing
        quay_host.script(repo, [quay_build(newer, "building", repository=repo),
                                quay_build(first, "complete", repository=repo)])
        assert await sync.sync_image(rt, image_id) == sync.SYNCED
        await quay.send("build_success", first, ["latest"])
        await apply_all(pool, wh_settings)
        latest = await tag(pool, image_id, "latest")
        assert (latest["state"], latest["build_id"]) == ("Building", newer)
        assert "later build" in await pool.fetchval(
            "SELECT note FROM webhook_events WHERE build_id = $1 AND dedupe_key LIKE '%build_success%'", first)

        # a build the API lists below `newer` but shows for the first time counts as older
        unseen = unique("unseen")
        quay_host.script(repo, [quay_build(newer, "building", repository=repo),
                                quay_build(unseen, "complete", repository=repo),
                                quay_build(first, "complete", repository=repo)])
        assert await sync.sync_image(rt, image_id) == sync.SYNCED
        await quay.send("build_success", unseen, ["latest"])
        await apply_all(pool, wh_settings)
        assert (await tag(pool, image_id, "latest"))["build_id"] == newer

        # the webhook ends the build the API started; the API reading it over later agrees
        await quay.send("build_failure", newer, ["latest"])
        await apply_all(pool, wh_settings)
        ended = await pool.fetchrow(order, quay_host.host, repo, newer)
        quay_host.script(repo, [quay_build(newer, "error", error="boom", repository=repo),
                                quay_build(first, "complete", repository=repo)])
        assert await sync.sync_image(rt, image_id) == sync.SYNCED
        latest = await tag(pool, image_id, "latest")
        assert (latest["state"], latest["build_id"], latest["state_at"]) == ("Failed", newer, ended["ended_at"])
        assert await pool.fetchrow(order, quay_host.host, repo, newer) == ended


async def test_generic_build_ids_order_by_build_not_by_timestamp(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ci, image_id = await Generic.registered(wh_client, pool, sender)
    t = [T0 + timedelta(minutes=i) for i in range(5)]
    await ci.send("building", t[1], build_id=42)
    await ci.send("success", t[2], build_id=42)
    await apply_all(pool, wh_settings)
    # a retried "building" of the same build, even with a later timestamp, is history
    assert await ci.send("building", t[3], build_id=42) == 1
    assert await ci.send("success", t[2], build_id=42) == 0  # delivered twice
    await apply_all(pool, wh_settings)
    v1 = await tag(pool, image_id, "v1")
    assert (v1["state"], v1["build_id"], v1["build_date"]) == ("Success", "42", t[2])
    # a build first seen later wins, whatever its timestamp says
    await ci.send("building", t[0], build_id="43")
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "v1"))["state"] == "Building"
    await ci.send("failed", t[4], build_id=42)  # the older build again: ignored
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "v1"))["build_id"] == "43"
    assert await image_state(pool, image_id) == "Building"


async def test_generic_events_without_build_id_keep_newest_timestamp_wins(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ci, image_id = await Generic.registered(wh_client, pool, sender)
    await ci.send("success", T0 + timedelta(minutes=2))
    await ci.send("building", T0 + timedelta(minutes=1))  # older, delivered late
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "v1"))["state"] == "Success"
    await ci.send("building", T0 + timedelta(minutes=3))
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "v1"))["state"] == "Building"


async def test_builds_that_never_finish_fall_back_to_the_registry(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    name = f"{EXAMPLE}/{unique('ci')}/app"
    image_id = await insert_image(pool, name=name, owner_id=sender.user.account.id, access_proven=True,
                                  next_sync_at=T0 + timedelta(days=3650))
    await pool.execute(
        "INSERT INTO tags (image_id, name, state, manifest_digest, build_date) VALUES ($1, 'v1', 'Success', $2, $3)",
        image_id, DIGEST, T0)
    ci = Generic(wh_client, sender, name)
    now = datetime.now(UTC)
    await ci.send("building", now, build_id="7", tag="v1")  # a rebuild of a pushed tag
    await ci.send("building", now, build_id="7", tag="ci-only")  # a tag no registry has yet
    await apply_all(pool, wh_settings)
    assert await image_state(pool, image_id) == "Building"
    assert await builds.end_stale_builds(pool, 3600) == 0  # not stale yet
    # three hours later (the database's clock: move the events back)
    await pool.execute(
        "UPDATE tags SET build_event_at = build_event_at - interval '3 hours' WHERE image_id = $1", image_id)
    assert await builds.end_stale_builds(pool, 3600) == 2
    v1 = await tag(pool, image_id, "v1")
    assert (v1["state"], v1["manifest_digest"], v1["build_date"]) == ("Success", DIGEST, T0)
    assert await tag(pool, image_id, "ci-only") is None
    row = await pool.fetchrow("SELECT state, sync_requested_at, next_sync_at <= now() AS due FROM images"
                              " WHERE id = $1", image_id)
    assert row["state"] == "Success" and row["sync_requested_at"] is not None and row["due"]
    # the timed-out build is over: its late events change nothing
    await ci.send("failed", now + timedelta(seconds=1), build_id="7", tag="v1")
    await apply_all(pool, wh_settings)
    assert (await tag(pool, image_id, "v1"))["state"] == "Success"


async def test_harbor_artifact_delete_removes_every_tag_at_its_digest(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ns = unique("harbor")
    image_id = await insert_image(pool, name=f"harbor.example.com/{ns}/app", owner_id=sender.user.account.id,
                                  access_proven=True)
    for t in ("h3", "h4"):
        body = fixture("harbor_push.json", ns)
        body["occur_at"] = int(T0.timestamp())
        body["event_data"]["resources"] = [
            {"digest": DIGEST, "tag": t, "resource_url": f"harbor.example.com/{ns}/app:{t}"}]
        assert (await sender.post(wh_client, wh.HARBOR, body)).status == 202
    await apply_all(pool, wh_settings)
    assert await tag(pool, image_id, "h3") and await tag(pool, image_id, "h4")
    delete = fixture("harbor_delete.json", ns)  # Harbor names only the artifact's first tag
    delete["occur_at"] = int((T0 + timedelta(minutes=1)).timestamp())
    delete["event_data"]["resources"] = [
        {"digest": DIGEST, "tag": "h3", "resource_url": f"harbor.example.com/{ns}/app:h3"}]
    assert (await sender.post(wh_client, wh.HARBOR, delete)).status == 202
    await apply_all(pool, wh_settings)
    assert await tag(pool, image_id, "h3") is None and await tag(pool, image_id, "h4") is None
    assert await image_state(pool, image_id) == "Empty"
