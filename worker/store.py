"""SQL of the sync service and the scheduler: leases, reads and the one-transaction write.

Leases (SPEC §4): `lease_owner` is `claim:<token>` while a claimed image waits in the
routine queue, and `run:<token>` while a worker syncs it. A lapsed lease (lease_until in the
past) is free. Every write of a sync is fenced by its run token, so a worker whose lease
lapsed and was taken over cannot overwrite the newer worker's result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from worker.schedule import PollPolicy

CLAIM_PREFIX = "claim:"
RUN_PREFIX = "run:"


@dataclass(frozen=True)
class ImageToSync:
    id: int
    name: str
    host: str
    repository: str
    credentials: bytes | None
    sync_failures: int
    owner_id: int | None  # None: the shared catalog


@dataclass(frozen=True)
class KnownTag:
    manifest_digest: str | None
    platform_digest: str | None
    config_digest: str | None
    note: str | None  # why a resolved tag has no config (no manifest for the platform, an artifact)

    @property
    def resolved(self) -> bool:
        """Fully read by a sync: a later sync only needs to compare its digest. A tag written
        by a push webhook has a digest but neither a config nor a note yet."""
        return self.manifest_digest is not None and (self.config_digest is not None or self.note is not None)


# A queued claim of the routine scheduler may be taken over by a priority sync (claim token
# NULL): the routine message, when it arrives, no longer owns the lease and skips the image.
ACQUIRE_SQL = """
UPDATE images AS i
   SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
  FROM registries AS r
 WHERE i.id = $1 AND r.id = i.registry_id
   AND (i.lease_until IS NULL OR i.lease_until < now() OR i.lease_owner = $4
        OR ($4::text IS NULL AND i.lease_owner LIKE 'claim:%'))
RETURNING i.id, i.name, r.host, i.repository, i.credentials, i.sync_failures, i.owner_id
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
SELECT name, manifest_digest, platform_digest, config_digest, sync_note FROM tags WHERE image_id = $1
"""


async def known_tags(conn: asyncpg.Pool, image_id: int) -> dict[str, KnownTag]:
    rows = await conn.fetch(KNOWN_TAGS_SQL, image_id)
    return {
        r["name"]: KnownTag(r["manifest_digest"], r["platform_digest"], r["config_digest"], r["sync_note"])
        for r in rows
    }


@dataclass(frozen=True)
class TagWrite:
    name: str
    manifest_digest: str
    platform_digest: str | None
    config_digest: str | None
    note: str | None


@dataclass(frozen=True)
class LayerWrite:
    config_digest: str
    author: str
    created: datetime | None
    entrypoint: str
    run_command: str
    envvars: list[dict[str, str]]
    labels: list[dict[str, str]]
    ports: list[dict[str, object]]
    volumes: list[dict[str, str]]


# Also what the adaptive schedule needs (worker/schedule.py): the image's interval, whether
# it is a catalog image and when it was last read, when its repository last sent a webhook.
LOCK_FOR_WRITE_SQL = """
SELECT now() AS now, i.sync_interval, i.owner_id IS NULL AS catalog, COALESCE(i.read_at, i.created_at) AS read_at,
       (SELECT max(e.received_at) FROM webhook_events AS e
         WHERE e.host = r.host AND e.repository = i.repository AND e.status = 'done') AS webhook_at
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id
 WHERE i.id = $1 AND i.lease_owner = $2
   FOR UPDATE OF i
"""

INSERT_LAYERS_SQL = """
INSERT INTO layers (config_digest, author, created, entrypoint, run_command, envvars, labels, ports, volumes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (config_digest) DO NOTHING
"""

# A tag whose digest changed was pushed again: Success, dated by its config's `created`,
# or by the push time a webhook reported for this same digest, whichever is later (SPEC §2).
# All of a sync's tags in one statement, so the statement-level state trigger runs once per
# sync rather than once per tag.
UPSERT_TAGS_SQL = """
INSERT INTO tags AS t (image_id, name, state, manifest_digest, platform_digest, config_digest,
                       build_date, state_at, sync_note)
SELECT $1, u.name, 'Success', u.manifest_digest, u.platform_digest, u.config_digest, l.created, now(), u.note
  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
           AS u (name, manifest_digest, platform_digest, config_digest, note)
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
       updated_at = now()
"""

# Only tags not touched since the sync began: a webhook may have added one meanwhile. A tag
# that a CI build event created (no digest yet: building, or its build failed) is not in the
# registry by nature; it is kept for a day so the build can finish and push it.
DELETE_GONE_TAGS_SQL = """
DELETE FROM tags
 WHERE image_id = $1 AND NOT (name = ANY ($2::text[])) AND updated_at < $3
   AND NOT (manifest_digest IS NULL AND state IN ('Building', 'Failed')
            AND state_at > now() - interval '1 day')
"""

FINISH_OK_SQL = """
UPDATE images
   SET lease_owner = NULL, lease_until = NULL, last_synced_at = now(),
       sync_error = NULL, sync_error_at = NULL, sync_failures = 0, sync_interval = $5,
       next_sync_at = CASE WHEN sync_requested_at > $3 THEN now()
                           ELSE now() + make_interval(secs => $4) END
 WHERE id = $1 AND lease_owner = $2
"""


class LeaseLostError(Exception):
    """The run's lease lapsed and another worker took the image: this run writes nothing."""


async def write_success(
    pool: asyncpg.Pool, image_id: int, run_token: str, *, started: datetime,
    present: Sequence[str], tags: Iterable[TagWrite], layers: Iterable[LayerWrite],
    poll: PollPolicy,
) -> None:
    """Write one sync's result in one transaction (the state trigger fires within it); the
    next sync is due as `poll` says from whether this one changed anything."""
    async with pool.acquire() as conn, conn.transaction():
        image = await conn.fetchrow(LOCK_FOR_WRITE_SQL, image_id, run_token)
        if image is None:
            raise LeaseLostError(f"lease on image {image_id} lost")
        layer_rows = [
            (la.config_digest, la.author, la.created, la.entrypoint, la.run_command, la.envvars,
             la.labels, la.ports, la.volumes)
            for la in layers
        ]
        if layer_rows:
            await conn.executemany(INSERT_LAYERS_SQL, layer_rows)
        tag_list = list(tags)
        if tag_list:
            await conn.execute(
                UPSERT_TAGS_SQL, image_id, [t.name for t in tag_list],
                [t.manifest_digest for t in tag_list], [t.platform_digest for t in tag_list],
                [t.config_digest for t in tag_list], [t.note for t in tag_list],
            )
        deleted = await conn.execute(DELETE_GONE_TAGS_SQL, image_id, list(present), started)
        interval, next_in = poll.next(
            image["sync_interval"], changed=bool(tag_list) or deleted != "DELETE 0", now=image["now"],
            catalog=image["catalog"], read_at=image["read_at"], webhook_at=image["webhook_at"],
        )
        await conn.execute(FINISH_OK_SQL, image_id, run_token, started, next_in, interval)


FINISH_FAILED_SQL = """
UPDATE images
   SET lease_owner = NULL, lease_until = NULL,
       sync_error = $3, sync_error_at = now(), sync_failures = sync_failures + 1,
       next_sync_at = now() + make_interval(secs => $4)
 WHERE id = $1 AND lease_owner = $2
"""


async def write_failure(pool: asyncpg.Pool, image_id: int, run_token: str, error: str, retry_in: float) -> None:
    """Record a failed sync: no tag and no state changes, only the error and the backoff."""
    await pool.execute(FINISH_FAILED_SQL, image_id, run_token, error[:1000], retry_in)


RELEASE_SQL = "UPDATE images SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2"

HAND_BACK_SQL = """
UPDATE images SET lease_owner = NULL, lease_until = NULL, next_sync_at = now() + make_interval(secs => $3)
 WHERE id = $1 AND lease_owner = $2
"""


async def hand_back(pool: asyncpg.Pool, image_id: int, run_token: str, due_in: float) -> None:
    """Give the image back unsynced, due again in `due_in` s: its registry host could not be
    asked now (HostBusyError). Not a failure: no error, no backoff."""
    await pool.execute(HAND_BACK_SQL, image_id, run_token, due_in)


async def release(pool: asyncpg.Pool, image_id: int, token: str) -> None:
    await pool.execute(RELEASE_SQL, image_id, token)


KNOWN_LAYERS_SQL = "SELECT config_digest FROM layers WHERE config_digest = ANY ($1::text[])"


async def existing_layers(pool: asyncpg.Pool, digests: Sequence[str]) -> set[str]:
    return {r[0] for r in await pool.fetch(KNOWN_LAYERS_SQL, list(digests))}
