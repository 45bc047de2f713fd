"""The aiohttp application factory. `create_app` does no I/O: everything with a lifetime is
an async generator in `cleanup_ctx`."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web

from api import events, health, images, metrics, openapi, read_marks, resources, webhooks
from api.auth import AUTH_CACHE, AuthCache, auth_middleware
from api.errors import Handler, error_middleware
from api.etag import etag_middleware
from api.keys import CELERY, CREDENTIAL_BOX, MAX_BODY, POOL, PUBLISHER, SETTINGS
from core.crypto import CredentialBox
from core.db import create_pool
from core.queue import make_celery
from core.settings import Settings

log = structlog.get_logger("api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of this request and log one line when it ends."""
    rid = request.headers.get("X-Request-ID", "")
    if not _REQUEST_ID.fullmatch(rid):
        rid = uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    response = await handler(request)
    response.headers["X-Request-ID"] = rid
    log.info(
        "request.done", method=request.method, path=request.path, status=response.status,
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


async def _database(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    app[POOL] = await create_pool(
        s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max, stateless=True
    )
    yield
    await app[POOL].close()


async def _broker(app: web.Application) -> AsyncIterator[None]:
    app[CELERY] = make_celery(app[SETTINGS], name="registry-sync-api")
    app[CELERY].conf.broker_connection_timeout = 2.0
    # Celery's producer is blocking; one thread keeps publishes off the event loop and ordered.
    app[PUBLISHER] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")
    yield
    app[PUBLISHER].shutdown(wait=True)
    app[CELERY].close()


def create_app(settings: Settings) -> web.Application:
    settings.require("database_url", "redis_url", "secret_key")
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[metrics.metrics_middleware, request_context, error_middleware, auth_middleware, etag_middleware],
    )
    app[SETTINGS] = settings
    app[MAX_BODY] = settings.max_body_bytes
    app[CREDENTIAL_BOX] = CredentialBox(settings.secret_key, settings.secret_keys_old)
    app[AUTH_CACHE] = AuthCache(ttl=settings.auth_cache_seconds)
    app.cleanup_ctx.extend([_database, _broker, events.listen, health.redis_client, read_marks.keep])
    # Open event streams must end before the server waits for its handlers to finish.
    app.on_shutdown.append(events.close_streams)

    slash = "{slash:/?}"
    app.router.add_get("/healthz", resources.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", metrics.metrics_endpoint)
    app.router.add_get("/api/v1/openapi.json", openapi.openapi_json)
    app.router.add_get("/docs", openapi.docs_page)
    app.router.add_get(f"/api/v1/auth{slash}", resources.auth_info)
    app.router.add_get(f"/api/v1/registry{slash}", resources.list_registries)
    app.router.add_get("/api/v1/registry/{host:[^/]+}" + slash, resources.get_registry)
    app.router.add_get("/api/v1/layer/{docker_id:[^/]+}" + slash, resources.get_layer)
    app.router.add_get(f"/api/v1/events{slash}", events.stream, allow_head=False)
    app.router.add_route("*", "/api/v1/image", images.image_resource)
    app.router.add_route("*", "/api/v1/image/{tail:.*}", images.image_resource)
    webhooks.add_routes(app)
    return app
