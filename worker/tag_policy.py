"""Applying an image's tag policy (core/tag_policy.py) to the tag list its registry gave.

`max_tags` on Docker Hub keeps the most recently pushed tags, which only Docker Hub's tags
API knows: `GET <DOCKER_HUB_API_URL>/v2/repositories/<ns>/<repo>/tags?ordering=last_updated
&page_size=100` answers `{"count", "next", "previous", "results": [{"name", "last_updated",
…}]}`, newest first, `next` being the URL of the following page. If it does not answer (or
elsewhere than Docker Hub), the greatest tags in natural order are kept.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import orjson
import structlog

from core.names import HUB_HOST
from core.tag_policy import TagPolicy, effective, natural_key
from worker.registry import Target
from worker.runtime import Runtime

log = structlog.get_logger("worker.tag_policy")

HUB_PAGE_SIZE = 100
HUB_MAX_PAGES = 10
HUB_TIMEOUT = 10.0
MAX_HUB_PAGE_BYTES = 4 * 1024 * 1024

POLICY_SQL = """
SELECT i.tag_policy, r.host FROM images AS i JOIN registries AS r ON r.id = i.registry_id WHERE i.id = $1
"""


async def select(rt: Runtime, image_id: int, target: Target, names: list[str]) -> list[str]:
    """The tags of `names` (registry order) that the image's policy keeps."""
    row = await rt.pool.fetchrow(POLICY_SQL, image_id)
    if row is None:
        return names
    is_hub = row["host"] == HUB_HOST
    policy = effective(row["tag_policy"], is_hub=is_hub, hub_default_max_tags=rt.settings.hub_default_max_tags)
    return await apply(rt, policy, target.repository if is_hub else None, names)


async def apply(rt: Runtime, policy: TagPolicy, hub_repository: str | None, names: list[str]) -> list[str]:
    kept = [t for t in names if policy.allows(t)]
    n = policy.max_tags
    if n is None or len(kept) <= n:
        return kept
    chosen: set[str] | None = None
    if hub_repository is not None:
        chosen = await hub_recent_tags(rt.session, rt.settings.docker_hub_api_url, hub_repository, set(kept), n)
    if chosen is None:
        chosen = set(sorted(kept, key=natural_key, reverse=True)[:n])
    log.info("sync.tags_limited", listed=len(names), kept=len(chosen), max_tags=n)
    return [t for t in kept if t in chosen]


async def hub_recent_tags(
    session: aiohttp.ClientSession, api_url: str, repository: str, wanted: set[str], n: int
) -> set[str] | None:
    """The `n` most recently updated of `wanted` per Docker Hub's tags API (fewer when the
    API lists fewer), or None when the API did not answer usefully."""
    url: str | None = (
        f"{api_url.rstrip('/')}/v2/repositories/{quote(repository, safe='/')}/tags"
        f"?ordering=last_updated&page_size={HUB_PAGE_SIZE}"
    )
    found: list[str] = []
    pages = 0
    try:
        while url and len(found) < n and pages < HUB_MAX_PAGES:
            pages += 1
            async with session.get(
                url, timeout=aiohttp.ClientTimeout(total=HUB_TIMEOUT), allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    log.info("hub.tags_unavailable", status=resp.status)
                    return None
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_HUB_PAGE_BYTES:
                        return None
                page = orjson.loads(body)
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                return None
            found += [r["name"] for r in results if isinstance(r, dict) and r.get("name") in wanted]
            nxt = page.get("next")
            url = nxt if isinstance(nxt, str) and nxt.startswith(api_url.rstrip("/") + "/") else None
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        log.info("hub.tags_unavailable", error=type(exc).__name__)
        return None
    return set(list(dict.fromkeys(found))[:n]) if found else None
