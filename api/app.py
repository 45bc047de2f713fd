"""The aiohttp application factory. `create_app` does no I/O: everything with a lifetime is
an async generator in `cleanup_ctx`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api import (
    extensions,
    health,
    images,
    list_upkeep,
    metrics,
    openapi,
    outage,
    publish,
    read_marks,
    receivers,
    resources,
    stream_app,
    subscriptions,
    targets,
    throttle,
    webhooks,
)
from api.auth import AUTH_CACHE, AuthCache, auth_middleware
from api.errors import error_middleware
from api.etag import etag_middleware
from api.keys import CREDENTIAL_BOX, LOG_REQUESTS, MAX_BODY, POOL, SETTINGS
from api.request_log import request_context
from core.address_policy import AddressPolicy
from core.crypto import CredentialBox
from core.db import create_pool
from core.settings import Settings


async def _database(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    app[POOL] = await create_pool(
        s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max, stateless=True,
        # The API's statements are prepared once per connection and their plans do not depend
        # on the values: without this Postgres re-plans a list page (8 merged index ranges) on
        # every execution, which costs more than running it (api/pages.py).
        server_settings={"plan_cache_mode": "force_generic_plan"},
    )
    yield
    await app[POOL].close()


def create_app(settings: Settings) -> web.Application:
    settings.require("database_url", "redis_url", "secret_key")
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[metrics.metrics_middleware, request_context, error_middleware, auth_middleware, etag_middleware],
    )
    app[SETTINGS] = settings
    app[MAX_BODY] = settings.max_body_bytes
    level = logging.getLevelName(settings.log_level.upper())
    app[LOG_REQUESTS] = not isinstance(level, int) or level <= logging.INFO
    app[CREDENTIAL_BOX] = CredentialBox(settings.secret_key, settings.secret_keys_old)
    app[AUTH_CACHE] = AuthCache(ttl=settings.auth_cache_seconds)
    app[targets.ADDRESS_POLICY] = AddressPolicy.from_settings(settings)
    app[targets.RESOLVER] = targets.SystemResolver()
    app.cleanup_ctx.extend([_database, outage.watch_ctx, publish.broker, stream_app.listen, health.redis_client,
                           read_marks.keep, list_upkeep.bucket_upkeep])
    throttle.configure(app, settings)
    # Open event streams must end before the server waits for its handlers to finish.
    app.on_shutdown.append(stream_app.close_streams)

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
    app.router.add_get(f"/api/v1/events{slash}", stream_app.stream, allow_head=False)
    app.router.add_route("*", "/api/v1/image", images.image_resource)
    app.router.add_route("*", "/api/v1/image/{tail:.*}", images.image_resource)
    receivers.add_routes(app)
    webhooks.add_routes(app)
    subscriptions.add_routes(app)
    extensions.mount_all(app)
    return app
