"""`/ui/fleet/` (admins): how the fleet is doing, from what Postgres, Redis and the metrics
already hold — nothing here is kept for the page.

- queue depths and images due: the API's own live gauges (api/metrics.py live_families);
- per-host request budgets and pauses: the keys worker/registry/budget.py keeps in Redis per
  registry host (`rs:budget:{<host>}:hold|pulls|pause`: requests in flight, Docker Hub pull
  tokens left of their bucket, the pause a 429 set), read for the registries the service
  knows (tests/dashboard/test_fleet.py drives a real worker Budget to keep this in step);
- failing images with their errors: `images.sync_error`, newest first (images_failing_idx);
- worker processes seen: the owners of the sync leases held now (`run:<name>@<host>:<pid>:…`,
  worker/sync.py), and the images each holds (images_leased_idx).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from api.errors import NotFoundError
from api.health import CHECK_TIMEOUT, REDIS
from api.keys import POOL, SETTINGS
from api.metrics import live_families
from core.names import HUB_HOST
from dashboard.guard import Ctx, page, render

HOSTS_LISTED = 200
FAILING_LISTED = 50
RUN_PREFIX = "run:"

HOSTS_SQL = "SELECT host FROM registries ORDER BY host COLLATE \"C\" LIMIT $1"

FAILING_SQL = """
SELECT i.name, a.username AS owner, i.sync_error, i.sync_error_at, i.sync_failures, i.next_sync_at
  FROM images AS i LEFT JOIN accounts AS a ON a.id = i.owner_id
 WHERE i.sync_error IS NOT NULL
 ORDER BY i.sync_error_at DESC NULLS LAST
 LIMIT $1
"""
FAILING_COUNT_SQL = "SELECT count(*) FROM (SELECT 1 FROM images WHERE sync_error IS NOT NULL LIMIT $1) AS x"

# The part of a run lease's owner before its random suffix is the worker process's name.
LEASES_SQL = """
SELECT regexp_replace(substr(lease_owner, 5), ':[0-9a-f]+$', '') AS process,
       count(*) AS images, max(lease_until) AS until, bool_or(lease_until > now()) AS live
  FROM images
 WHERE lease_owner IS NOT NULL AND lease_owner LIKE 'run:%'
 GROUP BY 1 ORDER BY 1
 LIMIT 100
"""
CLAIMS_SQL = "SELECT count(*) FROM images WHERE lease_owner IS NOT NULL AND lease_owner LIKE 'claim:%'"


@dataclass(frozen=True)
class HostBudget:
    host: str
    in_flight: int
    paused_for: float  # seconds left, 0: not paused
    pulls_left: float | None
    pulls_cap: float | None


def budget_host(host: str, hub_registry_url: str) -> str:
    """The host as the worker reaches it (Docker Hub's registry API is not its catalog name)."""
    return urlsplit(hub_registry_url).netloc if host == HUB_HOST else host


async def host_budgets(app: web.Application, hosts: list[str]) -> list[HostBudget]:
    """The budget of each host that has any use or pause now (one pipelined round trip)."""
    now_ms = int(time.time() * 1000)
    async with app[REDIS].pipeline(transaction=False) as pipe:
        for host in hosts:
            base = f"rs:budget:{{{host}}}"
            pipe.zcount(f"{base}:hold", now_ms, "+inf")
            pipe.pttl(f"{base}:pause")
            pipe.hmget(f"{base}:pulls", "tokens", "cap")
        replies = await asyncio.wait_for(pipe.execute(), CHECK_TIMEOUT)
    out = []
    for i, host in enumerate(hosts):
        held, pause_ms, (tokens, cap) = replies[3 * i: 3 * i + 3]
        if held or pause_ms > 0 or tokens is not None:
            out.append(HostBudget(host, int(held), max(0, pause_ms) / 1000,
                                  float(tokens) if tokens is not None else None,
                                  float(cap) if cap is not None else None))
    return out


def _gauges(families: list[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"queues": {}, "due": None, "oldest_due": None, "redis": False, "postgres": False}
    for family in families:
        for sample in family.samples:
            if sample.name == "registry_sync_dependency_up":
                values[sample.labels["dependency"]] = bool(sample.value)
            elif sample.name == "registry_sync_queue_depth":
                values["queues"][sample.labels["queue"]] = int(sample.value)
            elif sample.name == "registry_sync_due_images":
                values["due"] = int(sample.value)
            elif sample.name == "registry_sync_oldest_due_seconds":
                values["oldest_due"] = float(sample.value)
    return values


async def _database(pool: asyncpg.Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return {
            "hosts": [r["host"] for r in await conn.fetch(HOSTS_SQL, HOSTS_LISTED)],
            "failing": await conn.fetch(FAILING_SQL, FAILING_LISTED),
            "failing_count": await conn.fetchval(FAILING_COUNT_SQL, 10_001),
            "processes": await conn.fetch(LEASES_SQL),
            "claimed": await conn.fetchval(CLAIMS_SQL),
        }


@page()
async def fleet_page(ctx: Ctx) -> web.StreamResponse:
    if not ctx.user.is_admin:
        raise NotFoundError("The fleet page is for administrators.")
    app = ctx.request.app
    gauges = _gauges(await live_families(app))
    db = await _database(app[POOL])
    hub_url = app[SETTINGS].docker_hub_registry_url
    budgets: list[HostBudget] | None
    try:
        budgets = await host_budgets(app, [budget_host(h, hub_url) for h in db["hosts"]])
    except Exception:  # Redis down: the page says so rather than fail
        budgets = None
    return render(ctx, "fleet.html", gauges=gauges, budgets=budgets, **db, failing_cap=10_000)
