"""Registries are created on first use from an image name's host; `is_ssl` and
`is_tutum_registry` follow the configuration (INSECURE_REGISTRIES, TUTUM_REGISTRY_HOST) of
the process that last wrote them."""

from __future__ import annotations

import asyncpg
import structlog

from core.address_policy import same_endpoint
from core.insecure import insecure_registries
from core.names import HUB_HOST, canonical_host
from core.settings import Settings

log = structlog.get_logger("core.registries")

DOCKER_HUB_ICON = "/_static/assets/images/dockerimages/docker-64.png"

# DO UPDATE rather than DO NOTHING so that RETURNING always yields the id, also when a
# concurrent transaction inserted the same host a moment before; the flags that come from the
# configuration are refreshed (the name and icon stay as first set).
UPSERT_REGISTRY_SQL = """
INSERT INTO registries AS r (host, name, icon_url, is_ssl, is_tutum_registry)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (host) DO UPDATE SET is_ssl = EXCLUDED.is_ssl, is_tutum_registry = EXCLUDED.is_tutum_registry
RETURNING id
"""


def registry_defaults(host: str, settings: Settings) -> tuple[str, str | None, bool, bool]:
    """(name, icon_url, is_ssl, is_tutum_registry) for a registry first seen at `host`."""
    if host == HUB_HOST:
        return "Docker Hub", DOCKER_HUB_ICON, True, False
    is_tutum = bool(settings.tutum_registry_host) and host == settings.tutum_registry_host
    return host, None, host not in insecure_registries(settings), is_tutum


async def ensure_registry(conn: asyncpg.Connection, host: str, settings: Settings) -> int:
    """The id of the registry for `host`, creating it if it is new (race-free upsert)."""
    name, icon, is_ssl, is_tutum = registry_defaults(host, settings)
    registry_id: int = await conn.fetchval(UPSERT_REGISTRY_SQL, host, name, icon, is_ssl, is_tutum)
    return registry_id


# Only rows whose flags differ are written, and the images of a registry whose scheme changed
# are due at once: their last syncs most likely failed on the old scheme (not catalog images
# nobody has read yet: they wait for their first read, core/catalog.py).
REFRESH_REGISTRIES_SQL = """
WITH wanted AS (
    SELECT r.id, r.is_ssl AS was_ssl,
           (r.host = $3 OR NOT (r.host = ANY ($1::text[]))) AS is_ssl,
           ($2 <> '' AND r.host = $2) AS is_tutum
      FROM registries AS r
), changed AS (
    UPDATE registries AS r SET is_ssl = w.is_ssl, is_tutum_registry = w.is_tutum
      FROM wanted AS w
     WHERE w.id = r.id AND (r.is_ssl, r.is_tutum_registry) IS DISTINCT FROM (w.is_ssl, w.is_tutum)
    RETURNING r.id, r.host, r.is_ssl, w.was_ssl
), due AS (
    UPDATE images AS i SET next_sync_at = now()
      FROM changed AS c
     WHERE i.registry_id = c.id AND c.is_ssl IS DISTINCT FROM c.was_ssl AND i.next_sync_at > now()
       AND i.next_sync_at < 'infinity'
)
SELECT host, is_ssl FROM changed WHERE is_ssl IS DISTINCT FROM was_ssl ORDER BY host
"""


async def refresh_registries(
    conn: asyncpg.Pool | asyncpg.Connection, settings: Settings
) -> list[tuple[str, bool]]:
    """Bring every known registry's is_ssl / is_tutum_registry in line with `settings` (at
    `dev` start, where INSECURE_REGISTRIES changes between runs, and when
    INSECURE_REGISTRIES_FILE changes: InsecureWatch). Returns (host, is_ssl) of the registries
    whose scheme changed; their images are made due now."""
    rows = await conn.fetch(
        REFRESH_REGISTRIES_SQL, sorted(insecure_registries(settings)), settings.tutum_registry_host, HUB_HOST
    )
    return [(r["host"], r["is_ssl"]) for r in rows]


def on_own_registry(host: str, settings: Settings) -> bool:
    """True when `host` (as image names write it) is the service's own registry
    (TUTUM_REGISTRY_HOST), under any spelling that reaches the same server and port:
    `registry.example` and `registry.example:443` are one registry."""
    own = settings.tutum_registry_host
    return bool(own) and same_endpoint(canonical_host(own), host)


def namespace_refusal(host: str, repository: str, username: str | None, is_admin: bool,
                      settings: Settings) -> str | None:
    """Why the account `username` may not have `<host>/<repository>`: on the service's own
    registry, the first path component of a repository is the user name of the account it
    belongs to (SPEC §1), and the service reads that registry with its own access, so that
    namespace is for that account alone (and admins). None when the account may.
    `username` None is the shared catalog, which the operator fills."""
    if username is None or is_admin or not on_own_registry(host, settings):
        return None
    owner = repository.split("/", 1)[0]
    if owner == username:
        return None
    return (f"'{host}/{owner}/' is the namespace of the account '{owner}' on this service's own "
            f"registry: only that account (or an admin) may have images there")


class InsecureWatch:
    """Beat's part (once a tick): when INSECURE_REGISTRIES_FILE changed since the last look,
    or at the first look, bring the registries in line (refresh_registries), so a registry
    added while the service runs is reached over plain HTTP and its images sync at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last: frozenset[str] | None = None

    async def __call__(self, conn: asyncpg.Pool | asyncpg.Connection) -> list[tuple[str, bool]]:
        if not self.settings.insecure_registries_file:
            return []
        hosts = insecure_registries(self.settings)
        if hosts is self._last:
            return []
        changed = await refresh_registries(conn, self.settings)
        self._last = hosts
        for host, is_ssl in changed:
            log.info("registry.scheme_changed", host=host, scheme="https" if is_ssl else "http")
        return changed
