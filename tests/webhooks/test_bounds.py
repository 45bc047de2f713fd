"""One request, bounded work (SPEC §3): at most WEBHOOK_MAX_EVENTS events per request, each
holding its own fields only; tags that build events create count against MAX_TAGS_PER_IMAGE."""

from __future__ import annotations

import dataclasses
import tracemalloc
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient

from core import webhooks as wh
from core.settings import Settings
from tests.conftest import insert_image, unique
from tests.ops.test_openapi import check
from tests.webhooks.conftest import ACCOUNT, Sender, fixture
from worker import inbox

ISSUE_TAGS = 9908  # the issue's 65 KB Quay body


def quay_failure(ns: str, tags: list[str], **extra: Any) -> dict[str, Any]:
    return fixture("quay_build_failure.json", ns) | {"build_id": unique("b"), "docker_tags": tags, **extra}


def base36(n: int) -> str:
    """Short tag names: 9,908 of them fit the body size limit, as in the issue."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = digits[n % 36]
    while n := n // 36:
        out = digits[n % 36] + out
    return out


async def rows(pool: asyncpg.Pool, ns: str) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT count(*) AS n, COALESCE(sum(pg_column_size(payload)), 0) AS bytes, max(pg_column_size(payload)) AS most"
        " FROM webhook_events WHERE repository LIKE $1 || '/%'", ns)


async def apply_all(pool: asyncpg.Pool, settings: Settings) -> None:
    while (await inbox.apply_pending(pool, settings, 0)).applied:
        pass


async def test_the_issues_quay_body_naming_9908_tags_is_refused_whole(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ns = unique("huge")
    body = orjson.dumps(quay_failure(ns, [base36(i) for i in range(ISSUE_TAGS)]))
    assert 55_000 < len(body) <= wh_settings.max_body_bytes
    tracemalloc.start()
    try:
        for _ in range(2):  # twice, as in the issue
            resp = await sender.post(wh_client, wh.QUAY, body)
            assert resp.status == 413, await resp.text()
            error = (await resp.json())["error"]
            assert f"names {ISSUE_TAGS} events" in error and "WEBHOOK_MAX_EVENTS" in error
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB for a 65 KB body"  # in this process, the receiver's work
    assert (await rows(pool, ns))["n"] == 0


async def test_at_most_the_limit_each_event_holding_its_own_fields(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ns = unique("bounded")
    limit = wh_settings.webhook_max_events
    padding = {"trigger_metadata": {"commit_info": {"message": "x" * 40_000}}}
    resp = await sender.post(wh_client, wh.QUAY, quay_failure(ns, [f"t{i}" for i in range(limit)], **padding))
    assert resp.status == 202 and (await resp.json())["accepted"] == limit
    stored = await rows(pool, ns)
    assert stored["n"] == limit
    assert stored["most"] < 1024, stored  # not the 40 KB body, nor any copy of it
    # one more than the limit: nothing stored, whatever the sender
    envelope = {"events": [{
        "id": unique("ev"), "timestamp": "2024-05-01T12:00:00Z", "action": "push",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "repository": f"{ns}/reg",
                   "tag": f"t{i}", "digest": "sha256:" + "a" * 64},
        "request": {"host": "registry.example.com"}} for i in range(limit + 1)]}
    resp = await sender.post(wh_client, wh.REGISTRY, envelope)
    assert resp.status == 413, await resp.text()
    template = "/api/v1/webhooks/registry/" + ("{receiver}/" if sender.kind == ACCOUNT else "")
    await check(resp, template, "POST")  # as the OpenAPI document says
    assert (await rows(pool, ns))["n"] == limit


async def test_tags_from_build_events_count_against_max_tags_per_image(
    wh_client: TestClient, pool: asyncpg.Pool, wh_settings: Settings, sender: Sender,
) -> None:
    ns = unique("cap")
    image_id = await insert_image(pool, name=f"quay.io/{ns}/app", owner_id=sender.user.account.id,
                                  access_proven=True, tags=["existing"])
    capped = dataclasses.replace(wh_settings, max_tags_per_image=150)
    for first in (0, 100):  # two requests of 100 new tags each
        tags = [f"t{i:03d}" for i in range(first, first + 100)]
        assert (await sender.post(wh_client, wh.QUAY, quay_failure(ns, tags))).status == 202
        await apply_all(pool, capped)
    assert await pool.fetchval("SELECT count(*) FROM tags WHERE image_id = $1", image_id) == 150
    # a tag the image has already still takes its new state
    assert (await sender.post(wh_client, wh.QUAY, quay_failure(ns, ["existing"]))).status == 202
    await apply_all(pool, capped)
    assert await pool.fetchval("SELECT state FROM tags WHERE image_id = $1 AND name = 'existing'",
                               image_id) == "Failed"
    name = await pool.fetchval("SELECT name FROM images WHERE id = $1", image_id)
    resp = await wh_client.get(f"/api/v1/image/{name}/sync/", headers=sender.user.headers)
    status = await resp.json()
    assert status["tags_truncated"] is True and "refused" in status["tags_note"]
    note = await pool.fetchval("SELECT note FROM webhook_events WHERE repository = $1 AND tag = 't199'",
                               f"{ns}/app")
    assert "MAX_TAGS_PER_IMAGE (150)" in note
