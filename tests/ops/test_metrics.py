"""`/metrics` and `/readyz` of the API in this process: counters move after a sync, a
webhook and requests; live gauges read Redis and Postgres; readiness names what is down."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core import webhook_auth as whauth
from core.settings import Settings
from tests.conftest import insert_image, unique
from tests.support.registry import RegistryServer, apush_image
from worker import sync
from worker.runtime import Runtime

SECRET = "metrics-webhook-secret"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def ops_client(settings: Settings, registry: RegistryServer) -> AsyncIterator[test_utils.TestClient]:
    # the operator's build receiver speaks for the registry the build events name
    bound = f"build@{registry.host}={SECRET}"
    app = create_app(dataclasses.replace(settings, webhook_secret=SECRET, webhook_secrets=bound))
    c = test_utils.TestClient(test_utils.TestServer(app))
    await c.start_server()
    yield c
    await c.close()


async def scrape(client: test_utils.TestClient) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    return samples(await resp.text())


async def test_counters_move_after_a_sync_a_webhook_and_requests(
    ops_client: test_utils.TestClient, settings: Settings, registry: RegistryServer, pool: asyncpg.Pool
) -> None:
    before = await scrape(ops_client)
    repo = f"{unique('metrics')}/app"
    await apush_image(registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"})
    image_id = await insert_image(pool, name=f"{registry.host}/{repo}", settings=settings)
    rt_settings = dataclasses.replace(settings, insecure_registries=frozenset({registry.host}))
    rt = await Runtime(rt_settings, name="metrics-test").open()
    try:
        assert await sync.sync_image(rt, image_id) == sync.SYNCED
    finally:
        await rt.aclose()

    body = orjson.dumps({"image": f"{registry.host}/{repo}", "tag": "v1", "status": "building",
                         "timestamp": datetime.now(UTC).isoformat()})
    signed = {"X-Signature-256": whauth.sign(body, SECRET), "Content-Type": "application/json"}
    assert (await ops_client.post("/api/v1/webhooks/build/", data=body, headers=signed)).status == 202
    assert (await ops_client.post("/api/v1/webhooks/build/", data=body, headers=signed)).status == 200
    bad = {**signed, "X-Signature-256": "sha256=" + "0" * 64}
    assert (await ops_client.post("/api/v1/webhooks/build/", data=body, headers=bad)).status == 401
    for _ in range(3):
        await ops_client.get(f"/api/v1/image/{registry.host}/{repo}/tag/v1/")  # 401: no credentials

    after = await scrape(ops_client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("registry_sync_syncs_total", outcome="synced") == 1
    assert moved("registry_sync_sync_duration_seconds_count", outcome="synced") == 1
    assert moved("registry_sync_registry_requests_total", registry=registry.host, status="200") >= 2
    assert moved("registry_sync_webhook_events_total", source="build", outcome="accepted") == 1
    assert moved("registry_sync_webhook_events_total", source="build", outcome="duplicate") == 1
    assert moved("registry_sync_webhook_events_total", source="build", outcome="unauthorized") == 1
    tag_route = {"method": "GET", "route": "/api/v1/image/{name}/tag/{tag}/", "status": "401"}
    assert moved("registry_sync_http_requests_total", **tag_route) == 3
    assert moved("registry_sync_http_request_duration_seconds_count", **tag_route) == 3
    # bounded labels: no raw path of an image ever becomes a label value
    assert not any(repo in v for (_, labels) in after for _, v in labels)


async def test_live_gauges_read_the_queues_and_the_oldest_due_image(
    ops_client: test_utils.TestClient, settings: Settings, pool: asyncpg.Pool
) -> None:
    queues = aioredis.Redis.from_url(settings.redis_url)
    try:
        await queues.rpush("routine", *[b"x"] * 3)
        image_id = await insert_image(pool, name=f"example.com/{unique('due')}/app")
        await pool.execute("UPDATE images SET next_sync_at = now() - interval '1 hour' WHERE id = $1", image_id)
        scraped = await scrape(ops_client)
        assert value(scraped, "registry_sync_queue_depth", queue="routine") >= 3
        assert ("registry_sync_queue_depth", frozenset({("queue", "priority")})) in scraped
        assert value(scraped, "registry_sync_oldest_due_seconds") >= 3600
        assert value(scraped, "registry_sync_due_images") >= 1
        assert value(scraped, "registry_sync_dependency_up", dependency="postgres") == 1
        assert value(scraped, "registry_sync_dependency_up", dependency="redis") == 1
    finally:
        await pool.execute("DELETE FROM images WHERE id = $1", image_id)
        await queues.lrem("routine", 3, b"x")
        await queues.aclose()


async def test_readyz_names_the_dependency_that_is_down(settings: Settings) -> None:
    from tests.support.services import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(dataclasses.replace(settings, redis_url=dead))
    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        resp = await c.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["unavailable"] == ["redis"] and "redis" in body["error"]
        assert body["checks"] == {"postgres": "ok", "redis": "unreachable"}
        scraped = await scrape(c)  # a scrape still answers, saying what is down
        assert value(scraped, "registry_sync_dependency_up", dependency="redis") == 0
        assert (await c.get("/healthz")).status == 200  # liveness does not depend on it


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "registry-sync.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


async def test_the_grafana_dashboard_loads_and_uses_only_metrics_that_exist(
    ops_client: test_utils.TestClient,
) -> None:
    """Every series a panel queries is one the API or a worker exports (the worker's budget
    metrics are registered in this process by importing worker code; the API's live gauges
    come from a real scrape)."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert dashboard["uid"] and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    resp = await ops_client.get("/metrics")
    families = list(text_string_to_metric_families(await resp.text()))
    exported = {f"{f.name}{suffix}" for f in families for suffix in _SUFFIXES.get(f.type, ("",))}
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used |= set(re.findall(r"\bregistry_sync_[a-z_]+", target["expr"]))
    assert used - exported == set(), "the dashboard queries metrics nobody exports"
    # and it shows the budget, the queues, the sync rate and the errors by host
    for name in ("registry_sync_queue_depth", "registry_sync_syncs_total", "registry_sync_budget_in_flight",
                 "registry_sync_budget_busy_total", "registry_sync_registry_requests_total"):
        assert name in used
