"""Enriching pushed digests: after a batch of push events is visible, confirm each pushed
digest with its registry and complete the tags that still point at it.

Runs after the events' commit, off the visibility path, for a whole batch at once: one
registry resolution per (repository, credentials, digest), through the sync's own call
(worker/registry/client.py resolve_tag: manifest → content rule → platform → config, with the
image's own credentials; a config counts only when this repository served the blob's bytes
and they hash to its digest), then one transaction that locks the images in id order (worker/locks.py) and writes
every outcome, each only on tags that still point at the pushed digest:
- an image: the tag's platform, config (layer) and build date (the later of the config's
  `created` and the push time); an artifact or an index without the platform: no layer, a
  note, and the manifest's `org.opencontainers.image.created` for the config's `created`;
- the content cannot be read (a broken config, an index child the registry lacks): the
  problem is recorded on the tag (`…/sync/`), which keeps its digest without a layer;
- a signature, attestation, SBOM or sigstore bundle (core/artifacts.py): not a tag, removed;
- the registry does not have the digest (404 for it, or for the repository): a ghost push,
  removed;
- any other failure (registry down, bad credentials): logged; the tag keeps its digest
  without a layer until the image's next sync, which the push made due within a minute.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from core.artifacts import METADATA
from worker import history, layers
from worker.locks import lock_images
from worker.registry import ManifestNotFoundError, RegistryError, RepositoryNotFoundError, TagResolution, Target
from worker.runtime import Runtime

log = structlog.get_logger("worker.enrich")


@dataclass(frozen=True)
class Pushed:
    image_ids: tuple[int, ...]
    tag: str | None
    digest: str | None


@dataclass(frozen=True)
class Enriched:
    completed: int = 0  # tags given their layer or note
    ghosts: int = 0  # tags removed: the registry does not have their digest
    metadata: int = 0  # tags removed: their content is a signature, attestation, SBOM or bundle
    problems: int = 0  # tags whose content cannot be read: the problem is recorded on them
    failed: int = 0  # resolutions that failed otherwise (left to the next sync)


# Tags still at the pushed digest and not resolved yet, on images that may learn from events.
TARGETS_SQL = """
SELECT t.image_id, t.name, t.manifest_digest, r.host, i.registry_id, i.repository, i.credentials
  FROM unnest($1::bigint[], $2::text[], $3::text[]) AS p (image_id, name, digest)
  JOIN tags AS t ON t.image_id = p.image_id AND t.name = p.name AND t.manifest_digest = p.digest
  JOIN images AS i ON i.id = t.image_id
  JOIN registries AS r ON r.id = i.registry_id
 WHERE t.config_digest IS NULL AND t.sync_note IS NULL AND i.access_proven
"""

COMPLETE_TAGS_SQL = """
UPDATE tags AS t
   SET platform_digest = u.platform_digest, config_digest = u.config_digest, sync_note = u.note,
       sync_error = NULL,
       build_date = GREATEST(COALESCE((SELECT l.created FROM layers AS l WHERE l.config_digest = u.config_digest),
                                      u.created),
                             t.pushed_at),
       updated_at = now()
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
       AS u (image_id, name, digest, platform_digest, config_digest, note, created)
 WHERE t.image_id = u.image_id AND t.name = u.name AND t.manifest_digest = u.digest
"""

RECORD_PROBLEMS_SQL = """
UPDATE tags AS t SET sync_error = u.problem
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u (image_id, name, digest, problem)
 WHERE t.image_id = u.image_id AND t.name = u.name AND t.manifest_digest = u.digest
   AND t.sync_error IS DISTINCT FROM u.problem
"""

REMOVE_TAGS_SQL = """
DELETE FROM tags AS t
 USING unnest($1::bigint[], $2::text[], $3::text[]) AS g (image_id, name, digest)
 WHERE t.image_id = g.image_id AND t.name = g.name AND t.manifest_digest = g.digest
"""

Group = tuple[str, int, str, bytes | None, str]  # host, registry id, repository, sealed credentials, digest
GHOST = "ghost"


@dataclass
class _Writes:
    complete: list[tuple[int, str, str, str | None, str | None, str | None, datetime | None]] = field(
        default_factory=list)
    problems: list[tuple[int, str, str, str]] = field(default_factory=list)
    ghosts: list[tuple[int, str, str]] = field(default_factory=list)
    metadata: list[tuple[int, str, str]] = field(default_factory=list)
    # per (registry id, repository): new layers, and the configs it proved to hold
    configs: dict[tuple[int, str], tuple[dict[str, layers.LayerWrite], set[str]]] = field(default_factory=dict)

    def image_ids(self) -> list[int]:
        return [w[0] for ws in (self.complete, self.problems, self.ghosts, self.metadata) for w in ws]


async def enrich_pushes(rt: Runtime, pushes: Sequence[Pushed]) -> Enriched:
    """Confirm and complete the pushed tags (see the module's docstring). Never raises for
    registry errors; a Postgres error propagates (the image's next sync is due anyway)."""
    keys = [(i, p.tag, p.digest) for p in pushes if p.tag and p.digest for i in p.image_ids]
    if not keys:
        return Enriched()
    rows = await rt.pool.fetch(TARGETS_SQL, *(list(col) for col in zip(*keys, strict=True)))
    groups: dict[Group, list[tuple[int, str]]] = {}
    for r in rows:
        key = (r["host"], r["registry_id"], r["repository"], r["credentials"], r["manifest_digest"])
        groups.setdefault(key, []).append((r["image_id"], r["name"]))
    outcomes = await asyncio.gather(*(_resolve(rt, g) for g in groups))
    w = _Writes()
    failed = 0
    for group, outcome in zip(groups, outcomes, strict=True):
        _, registry_id, repository, _, digest = group
        tags = groups[group]
        if outcome is None:
            failed += 1
        elif outcome == GHOST:
            w.ghosts += [(i, tag, digest) for i, tag in tags]
        else:
            assert isinstance(outcome, TagResolution)
            if outcome.kind == METADATA:
                w.metadata += [(i, tag, digest) for i, tag in tags]
            elif outcome.problem is not None:
                w.problems += [(i, tag, digest, outcome.problem[:1000]) for i, tag in tags]
            else:
                config = outcome.config_digest  # proven for this repository, or None
                if config:
                    new, proven = w.configs.setdefault((registry_id, repository), ({}, set()))
                    proven.add(config)
                    if outcome.layer is not None:
                        new.setdefault(config, layers.layer_write(config, outcome.layer))
                w.complete += [(i, tag, digest, outcome.platform_digest, config, outcome.note, outcome.created)
                               for i, tag in tags]
    if w.image_ids():
        await _write(rt, w)
    if w.ghosts or w.metadata:
        log.info("webhook.pushes_removed", ghosts=len(w.ghosts), metadata=len(w.metadata),
                 digests=sorted({g[2] for g in w.ghosts + w.metadata}))
    return Enriched(len(w.complete), len(w.ghosts), len(w.metadata), len(w.problems), failed)


class Deferred:
    """Pushes waiting for the inbox to go quiet, per worker process (one per Runtime).

    During a burst every enrichment (registry requests, a transaction) competes for the CPU
    with the receiver and the worker that make the burst's tags visible; so while more
    events are pending, a batch's pushes wait here, and they are enriched together with
    the batch that finds the inbox empty, or after MAX_WAIT_SECONDS at the latest. They are
    best effort like any enrichment: lost with the process, each image's next sync (due
    within ENRICH_FALLBACK_SECONDS of its push) completes them."""

    MAX_WAIT_SECONDS = 3.0

    def __init__(self) -> None:
        self.pushes: list[Pushed] = []
        self.timer: asyncio.Task[None] | None = None

    def take(self) -> list[Pushed]:
        taken, self.pushes = self.pushes, []
        if self.timer is not None and self.timer is not asyncio.current_task():
            self.timer.cancel()
        self.timer = None
        return taken


_DEFERRED: weakref.WeakKeyDictionary[Runtime, Deferred] = weakref.WeakKeyDictionary()


async def enrich_or_defer(rt: Runtime, pushes: Sequence[Pushed], *, inbox_busy: bool) -> Enriched:
    """Enrich `pushes` now with every deferred one when the inbox is quiet; keep them for
    later while it is busy (see Deferred). Returns what was enriched now."""
    deferred = _DEFERRED.setdefault(rt, Deferred())
    if inbox_busy:
        deferred.pushes.extend(pushes)
        if deferred.pushes and deferred.timer is None:
            deferred.timer = asyncio.create_task(_enrich_later(rt, deferred))
        return Enriched()
    return await enrich_pushes(rt, [*deferred.take(), *pushes])


async def _enrich_later(rt: Runtime, deferred: Deferred) -> None:
    await asyncio.sleep(Deferred.MAX_WAIT_SECONDS)
    try:
        await enrich_pushes(rt, deferred.take())
    except Exception:  # the images' next syncs complete them
        log.exception("webhook.enrich_failed")


async def _resolve(rt: Runtime, group: Group) -> TagResolution | str | None:
    """The digest's resolution, GHOST when the registry does not have it, None on failure."""
    host, _, repository, sealed, digest = group
    try:
        creds = rt.box.open(sealed) if sealed else None
        target = Target(host=rt.network_host(host), repository=repository, credentials=creds)
        return await rt.client.resolve_tag(target, digest)
    except (ManifestNotFoundError, RepositoryNotFoundError):
        return GHOST
    except (RegistryError, ValueError) as exc:
        log.warning("webhook.enrich_failed", repository=repository, digest=digest,
                    error=f"{type(exc).__name__}: {exc}")
        return None


def _columns(rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
    return [list(col) for col in zip(*rows, strict=True)]


async def _write(rt: Runtime, w: _Writes) -> None:
    async with rt.pool.acquire() as conn, conn.transaction():
        await lock_images(conn, w.image_ids())
        await history.mark_observed(conn, history.WEBHOOK)
        for (registry_id, repository), (new, proven) in sorted(w.configs.items(), key=lambda kv: kv[0]):
            await layers.record(conn, registry_id, repository, new.values(), proven)
        if w.complete:
            await conn.execute(COMPLETE_TAGS_SQL, *_columns(w.complete))
        if w.problems:
            await conn.execute(RECORD_PROBLEMS_SQL, *_columns(w.problems))
        if w.ghosts or w.metadata:
            await conn.execute(REMOVE_TAGS_SQL, *_columns(w.ghosts + w.metadata))
