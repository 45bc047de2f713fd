"""`/metrics` of the API (Prometheus text format) and the middleware that counts requests.

Requests are labelled by the route's template (`/api/v1/image/{name}/tag/{tag}/`), never by
the raw path, so image names cannot blow up the number of time series.

Besides the counters of this process (or of all API processes on the host, in multiprocess
mode: core/metrics.py), a scrape reads a few gauges live: the depth of each Celery queue
(Redis LLEN) and how far polling is behind (the age of the oldest due image, from Postgres).
Every API replica reports the same live gauges: aggregate them with max(), not sum().
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import paths
from api.errors import Handler
from api.health import CHECK_TIMEOUT, REDIS
from api.keys import POOL
from core import metrics
from core.queue import QUEUES, queue_keys

log = structlog.get_logger("api.metrics")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the router found nothing (404/405): one series, whatever the path

# The image resource routes by suffix in one handler (api/paths.py); its templates by kind.
_IMAGE_TEMPLATES = {
    paths.COLLECTION: "/api/v1/image/",
    paths.IMAGE: "/api/v1/image/{name}/",
    paths.TAG_LIST: "/api/v1/image/{name}/tag/",
    paths.TAG: "/api/v1/image/{name}/tag/{tag}/",
    paths.BUILD: "/api/v1/image/{name}/tag/{tag}/build/",
    paths.SYNC: "/api/v1/image/{name}/sync/",
    paths.HISTORY: "/api/v1/image/{name}/tag/{tag}/history/",
}

# How far polling is behind: the oldest next_sync_at that has passed (images_due_idx).
DUE_SQL = """
SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(next_sync_at)), 0)::float8 AS oldest,
       count(*) AS due
  FROM images WHERE next_sync_at <= now()
"""


def route_template(request: web.Request) -> str:
    """The canonical template of the route that served `request` (bounded cardinality)."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    canonical = resource.canonical.replace("{slash}", "/")
    if canonical in ("/api/v1/image", "/api/v1/image/{tail}"):
        readings, _ = paths.candidates(request.match_info.get("tail", ""))
        # A path that reads both ways (`team/app/sync` is also a valid image name) is labelled
        # by its suffix reading, the common case: the handler's database look-up that settles
        # it is not worth repeating for a label.
        return _IMAGE_TEMPLATES[readings[-1].kind] if readings else _IMAGE_TEMPLATES[paths.IMAGE]
    return canonical


# The children of the two request metrics by (method, route, status), bounded like the labels:
# `labels()` validates and locks on every call, a dict look-up does not.
_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by method, route template and final status."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's code for it)
        raise
    finally:
        method = request.method if request.method in _METHODS else "other"
        key = (method, route_template(request), status)
        series = _SERIES.get(key)
        if series is None:
            labels = {"method": method, "route": key[1], "status": str(status)}
            series = _SERIES[key] = (metrics.HTTP_REQUESTS.labels(**labels), metrics.HTTP_LATENCY.labels(**labels))
        series[0].inc()
        series[1].observe(time.perf_counter() - started)


class _Live:
    """A one-scrape collector of values read just before rendering."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


async def _queue_depths(app: web.Application) -> dict[str, int]:
    """Messages waiting per queue, every lane of it (core/queue.py LANES) together."""
    async with app[REDIS].pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            for key in queue_keys(queue):
                pipe.llen(key)
        depths = iter(await asyncio.wait_for(pipe.execute(), CHECK_TIMEOUT))
    return {queue: sum(int(next(depths)) for _ in queue_keys(queue)) for queue in QUEUES}


async def live_families(app: web.Application) -> list[Metric]:
    """Gauges read at scrape time; a dependency that does not answer is reported as down
    and its gauges are left out (a scrape never fails because of it)."""
    up = GaugeMetricFamily(
        "registry_sync_dependency_up", "1 when the dependency answered this scrape", labels=["dependency"]
    )
    families: list[Metric] = [up]
    depths: dict[str, int] | BaseException
    due: asyncpg.Record | BaseException | None
    depths, due = await asyncio.gather(
        _queue_depths(app), app[POOL].fetchrow(DUE_SQL, timeout=CHECK_TIMEOUT), return_exceptions=True
    )
    if isinstance(depths, BaseException):
        log.warning("metrics.redis_failed", error=type(depths).__name__)
        up.add_metric(["redis"], 0)
    else:
        up.add_metric(["redis"], 1)
        depth = GaugeMetricFamily(
            "registry_sync_queue_depth", "Messages waiting in each Celery queue", labels=["queue"]
        )
        for queue, n in depths.items():
            depth.add_metric([queue], n)
        families.append(depth)
    if isinstance(due, BaseException) or due is None:
        log.warning("metrics.postgres_failed", error=type(due).__name__)
        up.add_metric(["postgres"], 0)
    else:
        up.add_metric(["postgres"], 1)
        families.append(GaugeMetricFamily(
            "registry_sync_oldest_due_seconds",
            "Age of the oldest due image: how far polling is behind (0 when nothing is due)",
            value=float(due["oldest"]),
        ))
        families.append(GaugeMetricFamily(
            "registry_sync_due_images", "Images whose next sync time has passed", value=float(due["due"])
        ))
    return families


async def metrics_endpoint(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format, no authentication (keep it off the public
    ingress; deploy/ exposes it on the pod only)."""
    live = CollectorRegistry(auto_describe=False)
    live.register(_Live(await live_families(request.app)))
    # Rendering the multiprocess files reads from disk: off the event loop.
    loop = asyncio.get_running_loop()
    counters = await loop.run_in_executor(None, generate_latest, metrics.scrape_registry())
    return web.Response(body=counters + generate_latest(live), headers={"Content-Type": CONTENT_TYPE_LATEST})
