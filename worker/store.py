"""SQL of the sync service and the scheduler: leases, reads and the one-transaction write.

Leases (SPEC §4): `lease_owner` is `claim:<token>` while a claimed image waits in the
routine queue, and `run:<token>` while a worker syncs it. A lapsed lease (lease_until in the
past) is free. Every write of a sync is fenced by its run token, so a worker whose lease
lapsed and was taken over cannot overwrite the newer worker's result.

Times that order writes come from the database: a sync's start is `now()` of the statement
that took its lease, never the worker's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from worker import history, layers
from worker.layers import LayerWrite
from worker.schedule import PollPolicy

CLAIM_PREFIX = "claim:"
RUN_PREFIX = "run:"


@dataclass(frozen=True)
class ImageToSync:
    id: int
    name: str
    host: str
    registry_id: int
    repository: str
    credentials: bytes | None
    sync_failures: int
    started_at: datetime  # the database's now() when the lease was taken
    owner_id: int | None = None  # None: the shared catalog
    missing_since: datetime | None = None  # its repository has answered "not found" since then


@dataclass(frozen=True)
class KnownTag:
    manifest_digest: str | None
    platform_digest: str | None
    config_digest: str | None
    note: str | None  # why a resolved tag has no config (no manifest for the platform, an artifact)
    problem: str | None = None  # why the last sync could not read it

    @property
    def resolved(self) -> bool:
        """Fully read by a sync: a later sync only needs to compare its digest. A tag written
        by a push webhook has a digest but neither a config nor a note yet; a tag with a
        problem is read again in full."""
        return (
            self.manifest_digest is not None and self.problem is None
            and (self.config_digest is not None or self.note is not None)
        )


# A queued claim of the routine scheduler may be taken over by a priority sync (claim token
# NULL): the routine message, when it arrives, no longer owns the lease and skips the image.
ACQUIRE_SQL = """
UPDATE images AS i
   SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
  FROM registries AS r
 WHERE i.id = $1 AND r.id = i.registry_id
   AND (i.lease_until IS NULL OR i.lease_until < now() OR i.lease_owner = $4
        OR ($4::text IS NULL AND i.lease_owner LIKE 'claim:%'))
RETURNING i.id, i.name, r.host, i.registry_id, i.repository, i.credentials, i.sync_failures,
          now() AS started_at, i.owner_id, i.missing_since
"""


async def acquire(
    conn: asyncpg.Pool | asyncpg.Connection, image_id: int, run_token: str, claim: str | None,
    lease_seconds: float,
) -> ImageToSync | None:
    """Take the image's lease for this run; None if another worker holds it or it is gone."""
    row = await conn.fetchrow(ACQUIRE_SQL, image_id, run_token, lease_seconds, claim)
    return ImageToSync(**dict(row)) if row else None


EXTEND_SQL = """
UPDATE images SET lease_until = now() + make_interval(secs => $3)
 WHERE id = $1 AND lease_owner = $2
"""


async def extend(conn: asyncpg.Pool, image_id: int, run_token: str, lease_seconds: float) -> bool:
    """Keep a long sync's lease alive; False when it was lost (lapsed and taken over)."""
    return (await conn.execute(EXTEND_SQL, image_id, run_token, lease_seconds)) == "UPDATE 1"


KNOWN_TAGS_SQL = """
SELECT name, manifest_digest, platform_digest, config_digest, sync_note, sync_error
  FROM tags WHERE image_id = $1
"""


async def known_tags(conn: asyncpg.Pool, image_id: int) -> dict[str, KnownTag]:
    rows = await conn.fetch(KNOWN_TAGS_SQL, image_id)
    return {
        r["name"]: KnownTag(r["manifest_digest"], r["platform_digest"], r["config_digest"],
                            r["sync_note"], r["sync_error"])
        for r in rows
    }


@dataclass(frozen=True)
class TagWrite:
    name: str
    manifest_digest: str
    platform_digest: str | None
    config_digest: str | None  # proven for the image's repository (worker/layers.py)
    note: str | None
    created: datetime | None = None  # the manifest's created annotation: the date of an artifact


@dataclass
class SyncResult:
    """What one sync found: written in one transaction by write_success."""

    present: list[str] = field(default_factory=list)  # every tag the registry still has
    tags: list[TagWrite] = field(default_factory=list)  # new or changed
    problems: dict[str, str] = field(default_factory=dict)  # tag → why it cannot be read
    layers: list[LayerWrite] = field(default_factory=list)
    # configs of unchanged tags that the repository has just proved holding by content
    reproven: list[str] = field(default_factory=list)
    # (tag, manifest digest, config digest) of unchanged tags whose config failed that proof
    unproven: list[tuple[str, str, str]] = field(default_factory=list)
    cut_at: int | None = None  # the tag list was cut to this many names


# Also what the adaptive schedule needs (worker/schedule.py): the image's interval, whether
# it is a catalog image and when it was last read, when its repository last sent a webhook.
LOCK_FOR_WRITE_SQL = """
SELECT now() AS now, i.sync_interval, i.owner_id IS NULL AS catalog,
       COALESCE(i.read_at, i.created_at) AS read_at,
       (SELECT max(e.received_at) FROM webhook_events AS e
         WHERE e.host = r.host AND e.repository = i.repository AND e.status = 'done') AS webhook_at
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id
 WHERE i.id = $1 AND i.lease_owner = $2
   FOR UPDATE OF i
"""

# A tag whose digest changed was pushed again: Success, dated by its config's `created` (an
# artifact: its manifest's created annotation), or by the push time a webhook reported for
# this same digest, whichever is later (SPEC §2). All of a sync's tags in one statement, so
# the statement-level state trigger runs once per sync rather than once per tag.
UPSERT_TAGS_SQL = """
INSERT INTO tags AS t (image_id, name, state, manifest_digest, platform_digest, config_digest,
                       build_date, state_at, sync_note)
SELECT $1, u.name, 'Success', u.manifest_digest, u.platform_digest, u.config_digest,
       COALESCE(l.created, u.created), now(), u.note
  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
           AS u (name, manifest_digest, platform_digest, config_digest, note, created)
  LEFT JOIN layers AS l ON l.config_digest = u.config_digest
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET state = CASE WHEN t.manifest_digest IS DISTINCT FROM EXCLUDED.manifest_digest
                    THEN 'Success' ELSE t.state END,
       state_at = CASE WHEN t.manifest_digest IS DISTINCT FROM EXCLUDED.manifest_digest
                       THEN now() ELSE t.state_at END,
       pushed_at = CASE WHEN t.manifest_digest IS DISTINCT FROM EXCLUDED.manifest_digest
                        THEN NULL ELSE t.pushed_at END,
       build_date = CASE
           WHEN t.manifest_digest IS DISTINCT FROM EXCLUDED.manifest_digest THEN EXCLUDED.build_date
           ELSE GREATEST(EXCLUDED.build_date, t.pushed_at) END,
       manifest_digest = EXCLUDED.manifest_digest,
       platform_digest = EXCLUDED.platform_digest,
       config_digest = EXCLUDED.config_digest,
       sync_note = EXCLUDED.sync_note,
       sync_error = NULL,
       updated_at = now()
"""

# One bad tag does not fail its image (SPEC §2): its problem is recorded and its last good
# data kept. A tag first seen with a problem is listed as not built (Empty, no digest), so
# that the sync that can read it makes it Success.
# A config the tag's repository could not prove holding (the blob not served, or bytes that do
# not hash to its digest) is not the tag's: it loses it, if it still points at the same
# manifest and config. Its build date stays; `problem` (recorded next) says why.
DROP_UNPROVEN_SQL = """
UPDATE tags AS t SET config_digest = NULL, updated_at = now()
  FROM unnest($2::text[], $3::text[], $4::text[]) AS u (name, manifest_digest, config_digest)
 WHERE t.image_id = $1 AND t.name = u.name AND t.manifest_digest = u.manifest_digest
   AND t.config_digest = u.config_digest
"""

RECORD_PROBLEMS_SQL = """
INSERT INTO tags AS t (image_id, name, state, sync_error)
SELECT $1, u.name, 'Empty', u.problem FROM unnest($2::text[], $3::text[]) AS u (name, problem)
ON CONFLICT ON CONSTRAINT tags_image_name_key DO UPDATE
   SET sync_error = EXCLUDED.sync_error
 WHERE t.sync_error IS DISTINCT FROM EXCLUDED.sync_error
"""

# Only tags not touched since the sync began (both times from the database): a webhook may
# have added one meanwhile. A tag that a CI build event created (no digest yet: building, or
# its build failed) is not in the registry by nature; it is kept for a day so the build can
# finish and push it.
DELETE_GONE_TAGS_SQL = """
DELETE FROM tags
 WHERE image_id = $1 AND NOT (name = ANY ($2::text[])) AND updated_at < $3
   AND NOT (manifest_digest IS NULL AND state IN ('Building', 'Failed')
            AND state_at > now() - interval '1 day')
"""

# A sync requested (credentials changed, a webhook, a user) after this one began runs again
# at once. Access is proven for the credentials this sync used, only if they are still the
# image's (a PATCH meanwhile asks for its own proof).
FINISH_OK_SQL = """
UPDATE images
   SET lease_owner = NULL, lease_until = NULL, last_synced_at = now(),
       sync_error = NULL, sync_error_at = NULL, sync_failures = 0, missing_since = NULL,
       access_proven = access_proven OR credentials IS NOT DISTINCT FROM $5,
       tags_cut_at = $6, sync_interval = $7,
       next_sync_at = CASE WHEN sync_requested_at > $3 THEN now()
                           ELSE now() + make_interval(secs => $4) END
 WHERE id = $1 AND lease_owner = $2
"""


class LeaseLostError(Exception):
    """The run's lease lapsed and another worker took the image: this run writes nothing."""


async def write_success(
    pool: asyncpg.Pool, image: ImageToSync, run_token: str, result: SyncResult, *, poll: PollPolicy,
) -> None:
    """Write one sync's result in one transaction (the state trigger fires within it); the
    next sync is due as `poll` says from whether this one changed anything."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_FOR_WRITE_SQL, image.id, run_token)
        if row is None:
            raise LeaseLostError(f"lease on image {image.id} lost")
        await history.mark_observed(conn, history.POLL)
        proven = [t.config_digest for t in result.tags if t.config_digest] + result.reproven
        await layers.record(conn, image.registry_id, image.repository, result.layers, proven)
        tags = result.tags
        if tags:
            await conn.execute(
                UPSERT_TAGS_SQL, image.id, [t.name for t in tags], [t.manifest_digest for t in tags],
                [t.platform_digest for t in tags], [t.config_digest for t in tags],
                [t.note for t in tags], [t.created for t in tags],
            )
        if result.unproven:
            await conn.execute(DROP_UNPROVEN_SQL, image.id, *(list(c) for c in zip(*result.unproven, strict=True)))
        if result.problems:
            names = sorted(result.problems)
            await conn.execute(RECORD_PROBLEMS_SQL, image.id, names, [result.problems[n] for n in names])
        deleted = await conn.execute(DELETE_GONE_TAGS_SQL, image.id, result.present, image.started_at)
        interval, next_in = poll.next(
            row["sync_interval"], changed=bool(tags) or deleted != "DELETE 0", now=row["now"],
            catalog=row["catalog"], read_at=row["read_at"], webhook_at=row["webhook_at"],
        )
        await conn.execute(
            FINISH_OK_SQL, image.id, run_token, image.started_at, next_in, image.credentials,
            result.cut_at, interval,
        )


# `$5` proven: NULL leaves access_proven alone, false clears it (credentials rejected), true
# sets it for the credentials this sync used if they are still the image's. `$8` missing: the
# repository was not found; missing_since keeps the start of the streak (a success ends it).
FINISH_FAILED_SQL = """
UPDATE images
   SET lease_owner = NULL, lease_until = NULL,
       sync_error = $3, sync_error_at = now(), sync_failures = sync_failures + 1,
       missing_since = CASE WHEN $8 THEN COALESCE(missing_since, $7) ELSE missing_since END,
       access_proven = CASE WHEN $5::boolean IS NULL THEN access_proven
                            WHEN NOT $5::boolean THEN false
                            ELSE access_proven OR credentials IS NOT DISTINCT FROM $6 END,
       next_sync_at = CASE WHEN sync_requested_at > $7 THEN now()
                           ELSE now() + make_interval(secs => $4) END
 WHERE id = $1 AND lease_owner = $2
"""


async def write_failure(
    pool: asyncpg.Pool, image: ImageToSync, run_token: str, error: str, retry_in: float, *,
    proven: bool | None, missing: bool = False,
) -> None:
    """Record a failed sync: no tag and no state changes, only the error, the backoff (or
    at once, when a sync was requested after this one began), the proof of access and, when
    `missing` (the repository was not found), since when it has been missing."""
    await pool.execute(
        FINISH_FAILED_SQL, image.id, run_token, error[:1000], retry_in, proven, image.credentials,
        image.started_at, missing,
    )


RELEASE_SQL = "UPDATE images SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2"


async def release(pool: asyncpg.Pool, image_id: int, token: str) -> None:
    await pool.execute(RELEASE_SQL, image_id, token)


HAND_BACK_SQL = """
UPDATE images SET lease_owner = NULL, lease_until = NULL,
                  next_sync_at = now() + make_interval(secs => $3)
 WHERE id = $1 AND lease_owner = $2
"""


async def hand_back(pool: asyncpg.Pool, image_id: int, token: str, retry_in: float) -> None:
    """Give the image back, due in `retry_in` s, as if this run never happened (its registry
    host was busy): no error, no failure counted."""
    await pool.execute(HAND_BACK_SQL, image_id, token, retry_in)


def proven_of(known: dict[str, KnownTag]) -> Sequence[str]:
    """The config digests the image's tags point at (whether their repository proved holding
    them by content is for worker/layers.py to say)."""
    return [k.config_digest for k in known.values() if k.config_digest]
