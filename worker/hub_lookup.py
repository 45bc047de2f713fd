"""Look up a Docker Hub name that is not in the catalog yet (SPEC §1 Public images).

The API asks by sending `inspect_hub_image(name)` and waits for the outcome in Postgres
(`hub_inspections`, woken by NOTIFY `registry_sync_inspect`): api/inspect.py. Here: list
the repository's tags on the hub (DOCKER_HUB_REGISTRY_URL) within a bounded time, read its
description and star count from Docker Hub's repository API (DOCKER_HUB_API_URL, best
effort), and create the shared-catalog image with its tags (state Empty until synced) and
the outcome in one transaction. Then the full sync runs at once in the same task. The image
has proven access (SPEC §1): the hub listed its tags anonymously.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import structlog

from core.names import HUB_HOST, InvalidNameError, parse_image_name
from core.registries import ensure_registry
from core.tag_policy import effective
from worker import sync, tag_policy
from worker.registry import RegistryAuthError, RegistryError, RepositoryNotFoundError, Target
from worker.runtime import Runtime

log = structlog.get_logger("worker.hub_lookup")

FOUND, MISSING, FAILED = "found", "missing", "failed"
METADATA_TIMEOUT = 5.0
MAX_METADATA_BYTES = 1024 * 1024
# The scheduler syncs the new image itself after this long if this task dies before its sync.
FALLBACK_SECONDS = 30.0


@dataclass(frozen=True)
class HubMetadata:
    description: str = ""
    star_count: int = 0


async def hub_metadata(session: aiohttp.ClientSession, api_url: str, repository: str) -> HubMetadata:
    """`GET <api>/v2/repositories/<ns>/<repo>/` → description and star_count. Best effort: any
    failure (unknown, rate limited, down, garbage) gives the defaults, never an error."""
    url = f"{api_url.rstrip('/')}/v2/repositories/{repository}/"
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=METADATA_TIMEOUT), allow_redirects=False
        ) as resp:
            if resp.status != 200:
                log.info("inspect.metadata_unavailable", status=resp.status)
                return HubMetadata()
            data = orjson.loads(await resp.content.read(MAX_METADATA_BYTES))
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        log.info("inspect.metadata_unavailable", error=type(exc).__name__)
        return HubMetadata()
    if not isinstance(data, dict):
        return HubMetadata()
    description = data.get("description")
    stars = data.get("star_count")
    return HubMetadata(
        description=description[:10_000] if isinstance(description, str) else "",
        star_count=stars if isinstance(stars, int) and not isinstance(stars, bool) and stars >= 0 else 0,
    )


FINISH_SQL = """
WITH done AS (
    INSERT INTO hub_inspections AS h (name, finished_at, outcome, error)
    VALUES ($1, now(), $2, $3)
    ON CONFLICT (name) DO UPDATE
       SET finished_at = now(), outcome = EXCLUDED.outcome, error = EXCLUDED.error
    RETURNING h.name
)
SELECT pg_notify('registry_sync_inspect', name) FROM done
"""

INSERT_CATALOG_IMAGE_SQL = """
INSERT INTO images (name, owner_id, registry_id, repository, description, star_count,
                    is_private_image, public_url, next_sync_at, sync_requested_at, access_proven)
VALUES ($1, NULL, $2, $3, $4, $5, false, $6, now() + make_interval(secs => $7), now(), true)
ON CONFLICT ON CONSTRAINT images_owner_name_key DO NOTHING
RETURNING id
"""

# One statement: the state and events triggers run once for all the tags.
INSERT_TAGS_SQL = """
INSERT INTO tags (image_id, name) SELECT $1, unnest($2::text[])
ON CONFLICT ON CONSTRAINT tags_image_name_key DO NOTHING
"""


async def _finish(conn: asyncpg.Pool | asyncpg.Connection, name: str, outcome: str, error: str | None) -> None:
    await conn.execute(FINISH_SQL, name, outcome, error[:1000] if error else None)


async def inspect_hub_image(rt: Runtime, raw_name: str) -> tuple[str, int | None]:
    """Look `raw_name` up on Docker Hub and record the outcome (the API is waiting for it).

    Returns (FOUND, new image id) when this call created the image, (FOUND, None) when it
    was there already (a concurrent inspection), (MISSING, None) for a repository the hub
    does not have (Docker Hub answers an anonymous request for it with 401 insufficient_scope,
    so an auth error counts as missing), (FAILED, None) when the hub did not answer in time
    or failed. Never raises for hub errors."""
    try:
        name = parse_image_name(raw_name)
    except InvalidNameError as exc:
        await _finish(rt.pool, raw_name, MISSING, str(exc))
        return MISSING, None
    if not name.is_hub:
        await _finish(rt.pool, name.name, MISSING, "not a Docker Hub name")
        return MISSING, None
    try:
        target = Target(host=rt.network_host(HUB_HOST), repository=name.repository)
        async with asyncio.timeout(rt.settings.inspect_timeout_seconds):
            listed = await rt.client.list_tags(target)
    except (RepositoryNotFoundError, RegistryAuthError) as exc:
        await _finish(rt.pool, name.name, MISSING, str(exc))
        log.info("inspect.missing", image=name.name)
        return MISSING, None
    except (RegistryError, TimeoutError) as exc:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        await _finish(rt.pool, name.name, FAILED, message)
        log.warning("inspect.failed", image=name.name, error=message)
        return FAILED, None
    # A new catalog image has no policy of its own: Docker Hub's default (its most recent
    # tags) applies from the first listing, as it will at every sync.
    policy = effective(None, is_hub=True, hub_default_max_tags=rt.settings.hub_default_max_tags)
    meta, tags = await asyncio.gather(
        hub_metadata(rt.session, rt.settings.docker_hub_api_url, name.repository),
        tag_policy.apply(rt, policy, name.repository, listed),
    )
    async with rt.pool.acquire() as conn, conn.transaction():
        registry_id = await ensure_registry(conn, HUB_HOST, rt.settings)
        # Two inspections of one name may run at once: the unique (owner NULL, name)
        # constraint keeps one image, and the loser leaves it alone.
        image_id: int | None = await conn.fetchval(
            INSERT_CATALOG_IMAGE_SQL, name.name, registry_id, name.repository, meta.description,
            meta.star_count, name.public_url, FALLBACK_SECONDS,
        )
        if image_id is not None and tags:
            await conn.execute(INSERT_TAGS_SQL, image_id, tags)
        await _finish(conn, name.name, FOUND, None)
    log.info("inspect.found", image=name.name, tags=len(tags), created=image_id is not None)
    return FOUND, image_id


async def inspect_and_sync(rt: Runtime, raw_name: str) -> str:
    """The task body: inspect, then run the full sync of a newly created image right away."""
    outcome, image_id = await inspect_hub_image(rt, raw_name)
    if image_id is not None:
        await sync.sync_image(rt, image_id)
    return outcome
