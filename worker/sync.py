"""The sync service: bring one image's tags, layers and state in line with its registry.

Plain async functions that tests call directly; Celery tasks are thin wrappers around them.

Outcomes (SPEC §2): a whole-image failure (registry down, bad credentials, the deadline)
changes no tag and no state, records the error and backs off; one tag whose content cannot
be read is recorded on that tag and the others sync normally; a registry host that is busy
(fair sharing) hands the image back for later without counting a failure.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from core import accounts, metrics
from core.artifacts import METADATA
from core.crypto import Credentials
from core.registries import namespace_refusal, on_own_registry
from core.settings import Settings
from worker import layers, missing, quay_builds, store, tag_policy
from worker.registry import TagResolution, Target
from worker.registry.errors import (
    ForbiddenTargetError,
    HostBusyError,
    ManifestNotFoundError,
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RepositoryNotFoundError,
)
from worker.runtime import Runtime

T = TypeVar("T")
log = structlog.get_logger("worker.sync")

SYNCED, FAILED, SKIPPED = "synced", "failed", "skipped"
# Failures that say the image's credentials (or anonymous access) were refused for its
# repository: the image loses its proof of access.
_REFUSED = (RegistryAuthError, RepositoryNotFoundError, ForbiddenTargetError)


class SyncDeadlineError(RegistryError):
    """The sync did not finish within SYNC_DEADLINE_SECONDS: it gave up."""

    transient = True


def backoff_seconds(settings: Settings, failures: int, *, permanent: bool = False,
                    retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, capped; permanent errors wait the cap (no hammering)."""
    cap = settings.sync_backoff_max_seconds
    if permanent:
        return cap * random.uniform(0.9, 1.0)  # noqa: S311 - jitter, not security
    delay = min(cap, settings.sync_backoff_base_seconds * 2 ** max(failures, 0))
    delay *= random.uniform(0.5, 1.0)  # noqa: S311
    return max(delay, retry_after or 0.0)


@dataclass
class _Progress:
    listed: bool = False  # the tag list succeeded: access to the repository is proven


@metrics.timed_sync  # registry_sync_syncs_total / _sync_duration_seconds by the outcome returned
async def sync_image(rt: Runtime, image_id: int, claim: str | None = None) -> str:
    """Sync one image. Returns SYNCED, FAILED (error recorded, backoff set) or SKIPPED
    (another worker holds it, it was deleted, or its registry host is busy: handed back).
    Never raises for registry errors."""
    s = rt.settings
    run_token = f"{store.RUN_PREFIX}{rt.name}:{uuid.uuid4().hex[:12]}"
    image = await store.acquire(rt.pool, image_id, run_token, claim, s.lease_seconds)
    if image is None:
        log.info("sync.skipped", image_id=image_id, reason="leased elsewhere or gone")
        return SKIPPED
    structlog.contextvars.bind_contextvars(image=image.name, image_id=image_id)
    started_wall, started = datetime.now(UTC), time.monotonic()  # for the log line only
    heartbeat = asyncio.create_task(_keep_lease(rt, image_id, run_token))
    progress = _Progress()
    try:
        await _check_namespace(rt, image)
        creds = _credentials(rt, image.credentials) or rt.catalog_credentials(image.host, image.owner_id)
        target = Target(rt.network_host(image.host), image.repository, creds)
        async with rt.host_slot(image.host, account=image.owner_id, credentials=creds):
            deadline = asyncio.timeout(s.sync_deadline_seconds)
            try:
                async with deadline:
                    result = await _discover(rt, image, target, progress)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise SyncDeadlineError(
                    f"the sync did not finish within SYNC_DEADLINE_SECONDS={s.sync_deadline_seconds:g}s"
                    " and gave up (the registry is too slow or the repository too large)"
                ) from None
        await store.write_success(rt.pool, image, run_token, result, poll=rt.poll_policy)
        await quay_builds.after_sync(rt, image_id, image.host)  # build states, on a Quay host
        finished = datetime.now(UTC)
        log.info("sync.done", tags=len(result.present), changed=len(result.tags),
                 problems=len(result.problems), cut_at=result.cut_at,
                 ms=round((time.monotonic() - started) * 1000, 1),
                 started=started_wall.timestamp(), finished=finished.timestamp())
        return SYNCED
    except store.LeaseLostError:
        log.warning("sync.lease_lost")
        return SKIPPED
    except HostBusyError as exc:
        await store.hand_back(rt.pool, image_id, run_token, exc.retry_after)
        log.info("sync.host_busy", host=image.host, retry_in=round(exc.retry_after, 1))
        return SKIPPED
    except RegistryError as exc:
        # bad credentials, a forbidden host: permanent; an unknown repository only once it has
        # been missing for a while (registered before its first push: worker/missing.py)
        is_missing = isinstance(exc, RepositoryNotFoundError)
        permanent = not exc.transient and (
            not is_missing or missing.is_permanent(s, image.started_at, image.missing_since))
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        delay = backoff_seconds(s, image.sync_failures, permanent=permanent, retry_after=retry_after)
        message = (missing.message(exc, s, delay, permanent=permanent) if isinstance(exc, RepositoryNotFoundError)
                   else f"{type(exc).__name__}: {exc}")
        proven = False if isinstance(exc, _REFUSED) else (True if progress.listed else None)
        await store.write_failure(rt.pool, image, run_token, message, delay, proven=proven, missing=is_missing)
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


async def _check_namespace(rt: Runtime, image: store.ImageToSync) -> None:
    """Raise RegistryAuthError (the image loses its proof of access) for an image on the
    service's own registry in another account's namespace: the service reads that registry
    with its own access, which the image's owner must not borrow (an image registered before
    TUTUM_REGISTRY_HOST named the registry, or before the API refused such names)."""
    if image.owner_id is None or not on_own_registry(image.host, rt.settings):
        return
    owner = await accounts.account_by_id(rt.pool, image.owner_id)
    refusal = namespace_refusal(image.host, image.repository, owner.username if owner else "",
                                owner is not None and owner.is_admin, rt.settings)
    if refusal is not None:
        raise RegistryAuthError(refusal)


async def _keep_lease(rt: Runtime, image_id: int, run_token: str) -> None:
    lease = rt.settings.lease_seconds
    while True:
        await asyncio.sleep(lease / 3)
        if not await store.extend(rt.pool, image_id, run_token, lease):
            return


async def _discover(
    rt: Runtime, image: store.ImageToSync, target: Target, progress: _Progress
) -> store.SyncResult:
    """Ask the registry what changed since the tags stored for the image."""
    known = await store.known_tags(rt.pool, image.id)
    listed = await rt.client.list_tags(target)
    progress.listed = True
    names = await tag_policy.select(rt, image.id, target, listed)
    proven = await layers.proven_configs(
        rt.pool, image.registry_id, image.repository, rt.settings.max_tags_per_image,
        also=store.proven_of(known),
    )

    async def resolve(tag: str) -> TagResolution | None:
        k = known.get(tag)
        resolved = k if k is not None and k.resolved else None
        try:
            return await rt.client.resolve_tag(
                target, tag,
                known_digest=resolved.manifest_digest if resolved else None,
                known_platform_digest=resolved.platform_digest if resolved else None,
                known_configs=proven,
                known_config=resolved.config_digest if resolved else None,
            )
        except ManifestNotFoundError:
            return None  # deleted between the tag list and the HEAD: gone

    result = store.SyncResult(cut_at=rt.settings.max_tags_per_image if listed.truncated else None)

    def take(res: TagResolution | None) -> None:
        if res is None or res.kind == METADATA:
            return  # gone, or a signature/attestation/SBOM: not a tag
        result.present.append(res.tag)
        if res.unproven and res.digest is not None:
            config = known[res.tag].config_digest
            assert config is not None  # resolve_tag proves only a known config
            result.unproven.append((res.tag, res.digest, config))
        if res.problem is not None:
            result.problems[res.tag] = res.problem[:1000]
        elif res.unchanged and res.config_digest is not None:
            result.reproven.append(res.config_digest)
        elif not res.unchanged and res.digest is not None:
            if res.layer is not None and res.config_digest:
                result.layers.append(layers.layer_write(res.config_digest, res.layer))
            result.tags.append(store.TagWrite(
                res.tag, res.digest, res.platform_digest, res.config_digest, res.note, res.created))

    await bounded(resolve, names, rt.settings.sync_tag_concurrency, take)
    return result


async def bounded(
    work: Callable[[str], Awaitable[T]], items: Iterable[str], concurrency: int,
    each: Callable[[T], None],
) -> None:
    """Run `work(item)` for every item, at most `concurrency` at a time (not one coroutine
    per tag: a repository may have tens of thousands), and hand each result to `each` as it
    comes. The first error cancels the rest and is raised."""
    pending = iter(items)
    running: set[asyncio.Task[T]] = set()
    try:
        for item in pending:
            running.add(asyncio.ensure_future(work(item)))
            while len(running) >= concurrency:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                _hand_over(done, each)
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            _hand_over(done, each)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


def _hand_over(done: set[asyncio.Task[T]], each: Callable[[T], None]) -> None:
    errors = [t.exception() for t in done]  # retrieves every error, raises the first
    for task, error in zip(done, errors, strict=True):
        if error is not None:
            raise error
        each(task.result())


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
