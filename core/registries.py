"""Registries are created on first use from an image name's host."""

from __future__ import annotations

import asyncpg

from core.names import HUB_HOST
from core.settings import Settings

DOCKER_HUB_ICON = "/_static/assets/images/dockerimages/docker-64.png"

# DO UPDATE (a no-op write) rather than DO NOTHING so that RETURNING always yields the id,
# also when a concurrent transaction inserted the same host a moment before.
UPSERT_REGISTRY_SQL = """
INSERT INTO registries (host, name, icon_url, is_ssl, is_tutum_registry)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (host) DO UPDATE SET host = EXCLUDED.host
RETURNING id
"""


def registry_defaults(host: str, settings: Settings) -> tuple[str, str | None, bool, bool]:
    """(name, icon_url, is_ssl, is_tutum_registry) for a registry first seen at `host`."""
    if host == HUB_HOST:
        return "Docker Hub", DOCKER_HUB_ICON, True, False
    is_tutum = bool(settings.tutum_registry_host) and host == settings.tutum_registry_host
    return host, None, host not in settings.insecure_registries, is_tutum


async def ensure_registry(conn: asyncpg.Connection, host: str, settings: Settings) -> int:
    """The id of the registry for `host`, creating it if it is new (race-free upsert)."""
    name, icon, is_ssl, is_tutum = registry_defaults(host, settings)
    registry_id: int = await conn.fetchval(UPSERT_REGISTRY_SQL, host, name, icon, is_ssl, is_tutum)
    return registry_id
