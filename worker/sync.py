"""The sync service: bring one image's tags, layers and state in line with its registry.

Plain async functions that tests call directly; Celery tasks are thin wrappers around them.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from core import metrics
from core.crypto import Credentials
from core.settings import Settings
from worker import store, tag_policy
from worker.registry import Layer, TagResolution, Target
from worker.registry.errors import (
    HostBusyError,
    ManifestNotFoundError,
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
)
from worker.runtime import Runtime

log = structlog.get_logger("worker.sync")

SYNCED, FAILED, SKIPPED = "synced", "failed", "skipped"
DEFERRED = "deferred"  # the registry host could not be asked now: handed back, no failure counted


def backoff_seconds(settings: Settings, failures: int, *, permanent: bool = False,
                    retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, capped; permanent errors wait the cap (no hammering)."""
    cap = settings.sync_backoff_max_seconds
    if permanent:
        return cap * random.uniform(0.9, 1.0)  # noqa: S311 - jitter, not security
    delay = min(cap, settings.sync_backoff_base_seconds * 2 ** max(failures, 0))
    delay *= random.uniform(0.5, 1.0)  # noqa: S311
    return max(delay, retry_after or 0.0)


def layer_write(digest: str, layer: Layer) -> store.LayerWrite:
    """The Tutum `layer` shape, stored ready to serve."""
    return store.LayerWrite(
        config_digest=digest,
        author=layer.author,
        created=layer.created,
        entrypoint=layer.entrypoint,
        run_command=layer.run_command,
        envvars=[{"key": k, "value": v} for k, v in layer.envvars],
        labels=[{"key": k, "value": v} for k, v in layer.labels],
        ports=[{"port": p, "protocol": proto} for p, proto in layer.ports],
        volumes=[{"container_path": v} for v in layer.volumes],
    )


@metrics.timed_sync  # registry_sync_syncs_total / _sync_duration_seconds by the outcome returned
async def sync_image(rt: Runtime, image_id: int, claim: str | None = None) -> str:
    """Sync one image. Returns SYNCED, FAILED (error recorded, backoff set), SKIPPED
    (another worker holds it, or it was deleted) or DEFERRED (its registry host may not be
    asked now: handed back for later). Never raises for registry errors."""
    s = rt.settings
    run_token = f"{store.RUN_PREFIX}{rt.name}:{uuid.uuid4().hex[:12]}"
    image = await store.acquire(rt.pool, image_id, run_token, claim, s.lease_seconds)
    if image is None:
        log.info("sync.skipped", image_id=image_id, reason="leased elsewhere or gone")
        return SKIPPED
    structlog.contextvars.bind_contextvars(image=image.name, image_id=image_id)
    started_wall = datetime.now(UTC)
    heartbeat = asyncio.create_task(_keep_lease(rt, image_id, run_token))
    try:
        creds = _credentials(rt, image.credentials) or rt.catalog_credentials(image.host, image.owner_id)
        target = Target(host=rt.network_host(image.host), repository=image.repository, credentials=creds)
        async with rt.host_slot(image.host):
            writes, layers, present = await _discover(rt, image_id, target)
        await store.write_success(
            rt.pool, image_id, run_token, started=started_wall, present=present, tags=writes,
            layers=layers, poll=rt.poll_policy,
        )
        rt.known_layers.update(la.config_digest for la in layers)
        finished = datetime.now(UTC)
        log.info("sync.done", tags=len(present), changed=len(writes),
                 ms=round((finished - started_wall).total_seconds() * 1000, 1),
                 started=started_wall.timestamp(), finished=finished.timestamp())
        return SYNCED
    except store.LeaseLostError:
        log.warning("sync.lease_lost")
        return SKIPPED
    except HostBusyError as exc:
        await store.hand_back(rt.pool, image_id, run_token, exc.retry_after)
        log.info("sync.deferred", reason=str(exc), retry_in=round(exc.retry_after, 1))
        return DEFERRED
    except RegistryError as exc:
        # bad credentials, unknown repository, a forbidden host: permanent
        permanent = not exc.transient
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        delay = backoff_seconds(s, image.sync_failures, permanent=permanent, retry_after=retry_after)
        message = f"{type(exc).__name__}: {exc}"
        await store.write_failure(rt.pool, image_id, run_token, message, delay)
        log.warning("sync.failed", error=message, permanent=permanent, retry_in=round(delay, 1))
        return FAILED
    except BaseException:
        # unexpected (a bug, cancellation): hand the image back at once rather than wait for the lease
        await asyncio.shield(store.release(rt.pool, image_id, run_token))
        raise
    finally:
        heartbeat.cancel()
        structlog.contextvars.unbind_contextvars("image", "image_id")


def _credentials(rt: Runtime, sealed: bytes | None) -> Credentials | None:
    if sealed is None:
        return None
    try:
        return rt.box.open(sealed)
    except ValueError as exc:  # SECRET_KEY changed without SECRET_KEY_OLD: needs an operator
        raise RegistryAuthError(f"stored credentials are unreadable: {exc}") from None


async def _keep_lease(rt: Runtime, image_id: int, run_token: str) -> None:
    lease = rt.settings.lease_seconds
    while True:
        await asyncio.sleep(lease / 3)
        if not await store.extend(rt.pool, image_id, run_token, lease):
            return


async def _discover(
    rt: Runtime, image_id: int, target: Target
) -> tuple[list[store.TagWrite], list[store.LayerWrite], list[str]]:
    """Ask the registry what changed: (tags to write, new layers, names of present tags)."""
    known = await store.known_tags(rt.pool, image_id)
    names = await tag_policy.select(rt, image_id, target, await rt.client.list_tags(target))
    # known_layers holds only digests read from or written to the layers table, whose rows
    # never change or go away: the client skips the blob GET for those.
    rt.known_layers.update(k.config_digest for k in known.values() if k.config_digest)

    async def resolve(tag: str) -> TagResolution | None:
        k = known.get(tag)
        resolved = k if k is not None and k.resolved else None
        try:
            return await rt.client.resolve_tag(
                target, tag,
                known_digest=resolved.manifest_digest if resolved else None,
                known_platform_digest=resolved.platform_digest if resolved else None,
                known_configs=rt.known_layers,
            )
        except ManifestNotFoundError:
            return None  # deleted between the tag list and the HEAD: gone

    results = await asyncio.gather(*(resolve(t) for t in names))
    writes: list[store.TagWrite] = []
    layers: dict[str, store.LayerWrite] = {}
    present: list[str] = []
    for res in results:
        if res is None:
            continue
        present.append(res.tag)
        if res.unchanged:
            continue
        config = res.config_digest
        if res.layer is not None and config:
            layers.setdefault(config, layer_write(config, res.layer))
        elif config not in rt.known_layers:
            config = None  # not an image config (an artifact): no layer to point at
        writes.append(store.TagWrite(res.tag, res.digest, res.platform_digest, config, res.note))
    return writes, list(layers.values()), present


async def sync_many(rt: Runtime, image_ids: Sequence[int], claim: str | None = None) -> dict[str, int]:
    """Sync a batch concurrently (per-registry limits live in the client); counts by outcome.

    An unexpected error in one image (its lease is already released) does not stop the others.
    """
    outcomes = await asyncio.gather(*(sync_image(rt, i, claim) for i in image_ids), return_exceptions=True)
    counts: dict[str, int] = {}
    for image_id, o in zip(image_ids, outcomes, strict=True):
        if isinstance(o, BaseException):
            log.error("sync.crashed", image_id=image_id, exc_info=o)
            o = "crashed"
        counts[o] = counts.get(o, 0) + 1
    return counts
