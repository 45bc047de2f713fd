"""Enriching pushed digests: after a batch of push events is visible, confirm each pushed
digest with its registry and complete the tags that still point at it.

Runs after the events' commit, off the visibility path, for a whole batch at once: one
registry resolution per (repository, credentials, digest), through the same client call as
the sync (worker/registry/client.py resolve_tag: manifest → platform → config, with the
image's own credentials), then one transaction that locks the images in id order
(worker/locks.py) and writes every outcome:
- resolved: the tag's platform, config (layer) and exact build date (the later of the
  config's `created` and the push time);
- the registry does not have the digest (404 for it, or for the repository): a ghost; the
  tag is removed if it still points at that digest;
- any other failure (registry down, bad credentials): logged; the tag keeps its digest
  without a layer until the image's next sync, which the push made due within a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from worker import store, sync
from worker.locks import lock_images
from worker.registry import RegistryError, TagResolution, Target
from worker.registry.errors import ManifestNotFoundError, RepositoryNotFoundError
from worker.runtime import Runtime

log = structlog.get_logger("worker.enrich")


@dataclass(frozen=True)
class Pushed:
    image_ids: tuple[int, ...]
    tag: str | None
    digest: str | None


@dataclass(frozen=True)
class Enriched:
    completed: int = 0  # tags given their layer / note
    ghosts: int = 0  # tags removed: the registry does not have their digest
    failed: int = 0  # resolutions that failed otherwise (left to the next sync)


# Tags still at the pushed digest and not resolved yet, on images that may learn from events.
TARGETS_SQL = """
SELECT t.image_id, t.name, t.manifest_digest, r.host, i.repository, i.credentials
  FROM unnest($1::bigint[], $2::text[], $3::text[]) AS p (image_id, name, digest)
  JOIN tags AS t ON t.image_id = p.image_id AND t.name = p.name AND t.manifest_digest = p.digest
  JOIN images AS i ON i.id = t.image_id
  JOIN registries AS r ON r.id = i.registry_id
 WHERE t.config_digest IS NULL AND t.sync_note IS NULL AND i.access_proven
"""

COMPLETE_TAGS_SQL = """
UPDATE tags AS t
   SET platform_digest = u.platform_digest, config_digest = u.config_digest, sync_note = u.note,
       build_date = GREATEST((SELECT l.created FROM layers AS l WHERE l.config_digest = u.config_digest),
                             t.pushed_at),
       updated_at = now()
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
       AS u (image_id, name, digest, platform_digest, config_digest, note)
 WHERE t.image_id = u.image_id AND t.name = u.name AND t.manifest_digest = u.digest
"""

REMOVE_GHOSTS_SQL = """
DELETE FROM tags AS t
 USING unnest($1::bigint[], $2::text[], $3::text[]) AS g (image_id, name, digest)
 WHERE t.image_id = g.image_id AND t.name = g.name AND t.manifest_digest = g.digest
"""

Group = tuple[str, str, bytes | None, str]  # host, repository, sealed credentials, digest
GHOST = "ghost"


async def enrich_pushes(rt: Runtime, pushes: Sequence[Pushed]) -> Enriched:
    """Confirm and complete the pushed tags (see the module's docstring). Never raises for
    registry errors; a Postgres error propagates (the image's next sync is due anyway)."""
    keys = [(i, p.tag, p.digest) for p in pushes if p.tag and p.digest for i in p.image_ids]
    if not keys:
        return Enriched()
    rows = await rt.pool.fetch(TARGETS_SQL, *(list(col) for col in zip(*keys, strict=True)))
    groups: dict[Group, list[tuple[int, str]]] = {}
    for r in rows:
        key = (r["host"], r["repository"], r["credentials"], r["manifest_digest"])
        groups.setdefault(key, []).append((r["image_id"], r["name"]))
    outcomes = await asyncio.gather(*(_resolve(rt, g) for g in groups))
    complete: list[tuple[int, str, str, str | None, str | None, str | None]] = []
    ghosts: list[tuple[int, str, str]] = []
    layers: dict[str, store.LayerWrite] = {}
    failed = 0
    for group, outcome in zip(groups, outcomes, strict=True):
        digest = group[3]
        if outcome is None:
            failed += 1
        elif outcome == GHOST:
            ghosts += [(i, tag, digest) for i, tag in groups[group]]
        else:
            assert isinstance(outcome, TagResolution)
            config = outcome.config_digest
            if outcome.layer is not None and config:
                layers.setdefault(config, sync.layer_write(config, outcome.layer))
            elif config not in rt.known_layers:
                config = None  # not an image config (an artifact): no layer to point at
            complete += [(i, tag, digest, outcome.platform_digest, config, outcome.note) for i, tag in groups[group]]
    if complete or ghosts:
        await _write(rt, complete, ghosts, layers)
    if ghosts:
        log.info("webhook.ghosts_removed", tags=len(ghosts), digests=sorted({g[2] for g in ghosts}))
    return Enriched(len(complete), len(ghosts), failed)


async def _resolve(rt: Runtime, group: Group) -> TagResolution | str | None:
    """The digest's resolution, GHOST when the registry does not have it, None on failure."""
    host, repository, sealed, digest = group
    try:
        creds = rt.box.open(sealed) if sealed else None
        target = Target(host=rt.network_host(host), repository=repository, credentials=creds)
        return await rt.client.resolve_tag(target, digest, known_configs=rt.known_layers)
    except (ManifestNotFoundError, RepositoryNotFoundError):
        return GHOST
    except (RegistryError, ValueError) as exc:
        log.warning("webhook.enrich_failed", repository=repository, digest=digest,
                    error=f"{type(exc).__name__}: {exc}")
        return None


async def _write(
    rt: Runtime, complete: list[tuple[int, str, str, str | None, str | None, str | None]],
    ghosts: list[tuple[int, str, str]], layers: dict[str, store.LayerWrite],
) -> None:
    async with rt.pool.acquire() as conn, conn.transaction():
        await lock_images(conn, [c[0] for c in complete] + [g[0] for g in ghosts])
        if layers:
            await conn.executemany(store.INSERT_LAYERS_SQL, [
                (la.config_digest, la.author, la.created, la.entrypoint, la.run_command, la.envvars,
                 la.labels, la.ports, la.volumes)
                for _, la in sorted(layers.items())  # digest order: concurrent inserts never cross
            ])
        if complete:
            await conn.execute(COMPLETE_TAGS_SQL, *(list(col) for col in zip(*complete, strict=True)))
        if ghosts:
            await conn.execute(REMOVE_GHOSTS_SQL, *(list(col) for col in zip(*ghosts, strict=True)))
    rt.known_layers.update(c[4] for c in complete if c[4])
