"""Readiness of the API process: `/readyz` answers 200 only while Postgres and Redis answer.

`/healthz` (resources.py) says the process is up and is the liveness probe; `/readyz` is the
readiness probe: a pod whose database or broker is unreachable is taken out of the load
balancer but not restarted (restarting would not bring the dependency back).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from api.errors import json_response
from api.keys import POOL, SETTINGS

log = structlog.get_logger("api.health")

REDIS = web.AppKey("redis", aioredis.Redis)
# A probe must answer well inside the probe's own timeout (deploy/ uses 3 s).
CHECK_TIMEOUT = 1.5


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one Redis client for readiness and the queue-depth metric (no I/O until used)."""
    app[REDIS] = aioredis.Redis.from_url(
        app[SETTINGS].redis_url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT
    )
    yield
    await app[REDIS].aclose()


async def check_postgres(app: web.Application) -> bool:
    try:
        return await app[POOL].fetchval("SELECT 1", timeout=CHECK_TIMEOUT) == 1
    except Exception as exc:  # any failure means "not ready"; the log says which
        log.warning("readyz.postgres_failed", error=type(exc).__name__)
        return False


async def check_redis(app: web.Application) -> bool:
    try:
        return bool(await asyncio.wait_for(app[REDIS].ping(), CHECK_TIMEOUT))
    except Exception as exc:
        log.warning("readyz.redis_failed", error=type(exc).__name__)
        return False


async def readyz(request: web.Request) -> web.Response:
    """200 `{"status": "ok", "checks": {...}}`, or 503 with an `error` naming each
    unreachable dependency and `unavailable: [...]`."""
    pg, rd = await asyncio.gather(check_postgres(request.app), check_redis(request.app))
    checks = {"postgres": "ok" if pg else "unreachable", "redis": "ok" if rd else "unreachable"}
    down = [name for name, state in checks.items() if state != "ok"]
    if not down:
        return json_response({"status": "ok", "checks": checks})
    return json_response(
        {"error": f"not ready: {' and '.join(down)} unreachable", "unavailable": down, "checks": checks},
        status=503,
    )
