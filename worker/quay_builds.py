"""Build states polled from Quay's build API (SPEC §3), for images on a QUAY_HOSTS host.

When: after every successful sync of such an image (worker/sync.py, so also the re-sync of
`POST …/tag/<tag>/build/`), and, while one of its builds is in a non-terminal phase, every
BUILD_POLL_SECONDS: `build_polls.due_at` is set, the scheduler claims due polls
(claim_due_polls) and a worker reads the builds alone — one request, not a sync. A build
non-terminal for longer than BUILD_TIMEOUT_SECONDS is no longer polled for (its tag falls
back to the registry, worker/builds.py). A lease like the sync's keeps two workers from
reading one image's builds at once.

One read (poll): `GET /api/v1/repository/<ns>/<repo>/build/?limit=QUAY_BUILD_LIMIT` with the
image's own build_token (anonymous without one: enough for a public repository), through the
registry client's transport (guard, budget). The builds are facts for this image only: its
own tags change, under its lock, through worker/builds.py, the one writer of build states
(the same rules and writes as Quay's build webhooks, whose `build_id` is the API's `id`).
Each tag a listed build names takes the state of the newest build naming it (PHASES); a
terminal phase is dated by its first sight (Quay has no end time), a running one by now. A
build that newly completed makes the image's sync due at once: it reads what the build
pushed. A 401/403 (a private repository without a build_token, or a refused one) is the
image's build problem, shown at `…/sync/` (`builds.error`): never a failed sync.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from core.artifacts import is_metadata_tag
from core.tag_policy import effective
from core.webhooks import BUILDING, ENDED, FAILED, SUCCESS
from worker import builds
from worker.locks import lock_images
from worker.registry import quay
from worker.registry.errors import HostBusyError, RegistryError

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = structlog.get_logger("worker.quay_builds")

# Quay's phases (data/database.py BUILD_PHASE, and `expired` / `cannot_load` from its API).
PHASES: dict[str, str] = {
    **dict.fromkeys(("waiting", "build-scheduled", "unpacking", "pulling", "building", "pushing"), BUILDING),
    "complete": SUCCESS,
    **dict.fromkeys(("error", "internalerror", "expired", "cannot_load"), FAILED),
    "cancelled": ENDED,
}
CLAIM_PREFIX, RUN_PREFIX = "claim:", "run:"
READ, FAILED, SKIPPED = "read", "failed", "skipped"


def is_terminal(phase: str) -> bool:
    return PHASES.get(phase, BUILDING) != BUILDING


@dataclass(frozen=True)
class Polled:
    outcome: str  # READ, FAILED or SKIPPED (leased elsewhere, gone, or the host was busy)
    completed: bool = False  # a build newly completed: its pushes are to be synced


# The sync's own read ($4 NULL) may take a poll's claim that still waits in the queue: the
# queued poll then finds the lease gone and skips.
TAKE_LEASE_SQL = """
INSERT INTO build_polls AS p (image_id, lease_owner, lease_until)
SELECT id, $2, now() + make_interval(secs => $3) FROM images WHERE id = $1
ON CONFLICT ON CONSTRAINT build_polls_pkey DO UPDATE
   SET lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until
 WHERE p.lease_until IS NULL OR p.lease_until < now() OR p.lease_owner = $4
    OR ($4::text IS NULL AND p.lease_owner LIKE 'claim:%')
RETURNING p.image_id
"""
IMAGE_SQL = """
SELECT r.host, i.repository, i.build_token, i.tag_policy, i.owner_id
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id WHERE i.id = $1
"""


async def after_sync(rt: Runtime, image_id: int, host: str) -> None:
    """Read the builds of an image just synced, if its host is a Quay host and no other
    worker reads them now. Never raises but for cancellation: the sync is done already."""
    if not rt.is_quay(host):
        return
    try:
        await poll(rt, image_id)
    except Exception:  # a database failure: the lease lapses, the next sync reads again
        log.exception("builds.poll_crashed", image_id=image_id)


async def poll(rt: Runtime, image_id: int, claim: str | None = None) -> Polled:
    """One read of the image's builds (see the module's docstring) under its build lease,
    taken from `claim` (the scheduler's) or free. Registry errors are recorded, not raised."""
    s = rt.settings
    token = f"{RUN_PREFIX}{rt.name}:{uuid.uuid4().hex[:12]}"
    if await rt.pool.fetchval(TAKE_LEASE_SQL, image_id, token, s.lease_seconds, claim) is None:
        return Polled(SKIPPED)
    row = await rt.pool.fetchrow(IMAGE_SQL, image_id)
    if row is None:
        return Polled(SKIPPED)
    if not rt.is_quay(row["host"]):  # QUAY_HOSTS changed since the poll was due
        await rt.pool.execute(STOP_SQL, image_id, token)
        return Polled(SKIPPED)
    try:
        build_token = rt.box.open_text(row["build_token"]) if row["build_token"] is not None else None
    except ValueError:
        await _failed(rt, image_id, token, "the stored build_token cannot be decrypted (SECRET_KEY changed):"
                                                 " set it again", transient=False)
        return Polled(FAILED)
    try:
        listing = await quay.list_builds(rt.client, row["host"], row["repository"], build_token, s.quay_build_limit)
    except HostBusyError as exc:
        await rt.pool.execute(HAND_BACK_SQL, image_id, token, exc.retry_after)
        return Polled(SKIPPED)
    except RegistryError as exc:
        await _failed(rt, image_id, token, f"{type(exc).__name__}: {exc}", transient=exc.transient)
        return Polled(FAILED)
    return await _apply(rt, image_id, token, row, listing)


HOLD_SQL = "SELECT 1 FROM build_polls WHERE image_id = $1 AND lease_owner = $2 FOR UPDATE"
FINISH_READ_SQL = """
UPDATE build_polls
   SET lease_owner = NULL, lease_until = NULL, read_at = now(), error = NULL, error_at = NULL,
       recent = $3::jsonb, due_at = CASE WHEN $4::boolean THEN now() + make_interval(secs => $5) END
 WHERE image_id = $1 AND lease_owner = $2
"""
# Its pushes are read by a sync (its tags were listed before this read, or not at all).
REQUEST_SYNC_SQL = """
UPDATE images SET sync_requested_at = now(), next_sync_at = LEAST(next_sync_at, now()) WHERE id = $1
"""


async def _apply(
    rt: Runtime, image_id: int, token: str, image: asyncpg.Record, listing: list[quay.QuayBuild],
) -> Polled:
    s = rt.settings
    host, repository = image["host"], image["repository"]
    policy = effective(image["tag_policy"], is_hub=False, hub_default_max_tags=0)
    newest: dict[str, quay.QuayBuild] = {}  # tag -> the newest build that names it
    for b in listing:
        if b.phase in PHASES:
            for tag in b.tags:
                if not is_metadata_tag(tag) and policy.allows(tag):
                    newest.setdefault(tag, b)
    completed, changed = False, 0
    async with rt.pool.acquire() as conn, conn.transaction():
        if not await lock_images(conn, [image_id]) or await conn.fetchval(HOLD_SQL, image_id, token) is None:
            return Polled(SKIPPED)  # deleted, or the lease lapsed and another worker took it
        seen = await builds.record_listing(conn, host, repository, [(b.id, is_terminal(b.phase)) for b in listing])
        for tag in sorted(newest):
            b = newest[tag]
            state = PHASES[b.phase]
            ended = seen.ended.get(b.id) if is_terminal(b.phase) else None
            # a fact for this image, read with its own token: ordered as its owner's builds
            written = (await builds.apply_build_state(
                conn, [image_id], tag=tag, state=state, at=ended or seen.now, build_id=b.id,
                received_at=seen.now, host=host, repository=repository, sender=image["owner_id"],
                max_tags=s.max_tags_per_image,
            )).changed
            changed += bool(written)
            completed |= bool(written) and state == SUCCESS
        since = seen.now - timedelta(seconds=s.build_timeout_seconds)
        running = any(
            PHASES.get(b.phase) == BUILDING and seen.first_seen.get(b.id, seen.now) > since for b in listing
        )
        await conn.execute(FINISH_READ_SQL, image_id, token, [_recent(b, seen) for b in listing], running,
                           s.build_poll_seconds)
        if completed:
            await conn.execute(REQUEST_SYNC_SQL, image_id)
    log.info("builds.read", image_id=image_id, builds=len(listing), changed=changed, running=running,
             completed=completed)
    return Polled(READ, completed)


def _recent(b: quay.QuayBuild, seen: builds.Seen) -> dict[str, Any]:
    """One build as `…/sync/` shows it (dates as ISO 8601: the API writes RFC 2822)."""
    ended = seen.ended.get(b.id)
    state = PHASES.get(b.phase)
    return {
        "id": b.id, "phase": b.phase, "state": state if state != ENDED else None, "tags": list(b.tags),
        "started": b.started.isoformat() if b.started else None,
        "ended_at": ended.isoformat() if ended and is_terminal(b.phase) else None, "error": b.error,
    }


# A transient failure keeps a running build's poll going; any other stops it until a sync.
FINISH_FAILED_SQL = """
UPDATE build_polls
   SET lease_owner = NULL, lease_until = NULL, error = $3, error_at = now(),
       due_at = CASE WHEN $4::boolean AND due_at IS NOT NULL THEN now() + make_interval(secs => $5) END
 WHERE image_id = $1 AND lease_owner = $2
"""
STOP_SQL = """
UPDATE build_polls SET lease_owner = NULL, lease_until = NULL, due_at = NULL WHERE image_id = $1 AND lease_owner = $2
"""
HAND_BACK_SQL = """
UPDATE build_polls
   SET lease_owner = NULL, lease_until = NULL,
       due_at = CASE WHEN due_at IS NOT NULL THEN now() + make_interval(secs => $3) END
 WHERE image_id = $1 AND lease_owner = $2
"""


async def _failed(rt: Runtime, image_id: int, token: str, error: str, *, transient: bool) -> None:
    log.warning("builds.read_failed", image_id=image_id, error=error, transient=transient)
    await rt.pool.execute(FINISH_FAILED_SQL, image_id, token, error[:1000], transient, rt.settings.build_poll_seconds)


CLAIM_DUE_SQL = """
WITH due AS (
    SELECT image_id FROM build_polls
     WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now())
     ORDER BY due_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE build_polls AS p SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
  FROM due WHERE p.image_id = due.image_id
RETURNING p.image_id
"""
RELEASE_CLAIM_SQL = "UPDATE build_polls SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1"


async def claim_due_polls(pool: asyncpg.Pool, limit: int, lease_seconds: float) -> tuple[str, list[int]]:
    """Claim up to `limit` images whose builds are due to be read: (claim token, ids)."""
    token = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    return token, [r["image_id"] for r in await pool.fetch(CLAIM_DUE_SQL, limit, token, lease_seconds)]


async def release_claim(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute(RELEASE_CLAIM_SQL, token)
