"""SQL of the API. Each constant sits beside the one function that runs it; the connection
(or pool) comes first so the caller owns the transaction.

Visibility (SPEC §1 tenancy): an account sees the shared catalog (owner_id IS NULL) and its
own images. When it registered a name that is also in the catalog, its own image wins.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

# An image's columns but its tag names (list pages bound how many they embed: api/pages.py).
IMAGE_FIELDS = """
    i.id, i.name, i.owner_id, i.description, i.icon_url, i.state, i.star_count, i.jumpstart,
    i.in_use, i.is_private_image, i.public_url, i.last_build_date, r.host AS registry_host,
    ARRAY(SELECT c.name FROM image_categories AS ic JOIN categories AS c ON c.id = ic.category_id
           WHERE ic.image_id = i.id ORDER BY c.name COLLATE "C") AS categories
"""
IMAGE_TAG_NAMES = 'ARRAY(SELECT t.name FROM tags AS t WHERE t.image_id = i.id ORDER BY t.name COLLATE "C")'
IMAGE_COLUMNS = f"{IMAGE_FIELDS}, {IMAGE_TAG_NAMES} AS tags"

# The image $2 as account $1 sees it: its own if it has one, else the catalog's.
_VISIBLE_IMAGE = """
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id
 WHERE i.name = $2 AND (i.owner_id = $1 OR i.owner_id IS NULL)
 ORDER BY i.owner_id NULLS LAST
 LIMIT 1
"""

GET_IMAGE_SQL = f"SELECT {IMAGE_COLUMNS} {_VISIBLE_IMAGE}"


async def get_image(conn: Conn, account_id: int, name: str) -> asyncpg.Record | None:
    """The image `name` as `account_id` sees it, or None (also for another account's image)."""
    return await conn.fetchrow(GET_IMAGE_SQL, account_id, name)


# What the paths below an image (tags, sync, build) need of it: not its tag list, which may
# hold MAX_TAGS_PER_IMAGE names.
IMAGE_REF_COLUMNS = "i.id, i.name, i.owner_id, i.state, r.host AS registry_host"

GET_IMAGE_REF_SQL = f"SELECT {IMAGE_REF_COLUMNS} {_VISIBLE_IMAGE}"


async def get_image_ref(conn: Conn, account_id: int, name: str) -> asyncpg.Record | None:
    """id, name, owner_id, state and registry_host of the image `name` as `account_id` sees
    it, or None."""
    return await conn.fetchrow(GET_IMAGE_REF_SQL, account_id, name)


TAG_COLUMNS = """
    t.name AS tag_name, t.state AS tag_state, t.buildable, t.config_digest,
    l.author, l.created, l.entrypoint, l.run_command, l.envvars, l.labels, l.ports, l.volumes,
    l.fetched_at AS layer_fetched_at
"""

# A path that reads both ways (`team/tag/app`): the image of the full name ($2) if the caller
# sees one, else the image of the shorter reading ($3), with the columns of its tag $4 (all
# NULL when it has no such tag, when the full name won, or for a NULL $4), in one round trip.
# A tag path that reads one way passes its image's name as both.
GET_IMAGE_OF_SQL = f"""
SELECT i.*, {TAG_COLUMNS}
  FROM (SELECT {IMAGE_REF_COLUMNS}
          FROM images AS i JOIN registries AS r ON r.id = i.registry_id
         WHERE i.name IN ($2, $3) AND (i.owner_id = $1 OR i.owner_id IS NULL)
         ORDER BY i.name = $2 DESC, i.owner_id NULLS LAST
         LIMIT 1) AS i
  LEFT JOIN tags AS t ON t.image_id = i.id AND t.name = $4 AND i.name = $3
  LEFT JOIN layers AS l ON l.config_digest = t.config_digest
"""


async def get_image_of(
    conn: Conn, account_id: int, full: str, shorter: str, tag: str | None = None
) -> asyncpg.Record | None:
    """The image `full` as `account_id` sees it, else the image `shorter`, else None: the
    columns of get_image_ref, and those of get_tag for the tag `tag` of `shorter` (`tag_name`
    is None when the image is `full`, when `shorter` has no such tag, or for no `tag`)."""
    return await conn.fetchrow(GET_IMAGE_OF_SQL, account_id, full, shorter, tag)


GET_TAG_SQL = f"""
SELECT {TAG_COLUMNS}
  FROM tags AS t LEFT JOIN layers AS l ON l.config_digest = t.config_digest
 WHERE t.image_id = $1 AND t.name = $2
"""


async def get_tag(conn: Conn, image_id: int, tag: str) -> asyncpg.Record | None:
    return await conn.fetchrow(GET_TAG_SQL, image_id, tag)


# Through a visible tag whose image's registry repository proved holding the config
# (layer_sources: SPEC §1 proof of access), never by the digest alone.
GET_LAYER_SQL = """
SELECT l.config_digest, l.author, l.created, l.entrypoint, l.run_command, l.envvars, l.labels,
       l.ports, l.volumes, l.fetched_at AS layer_fetched_at
  FROM layers AS l
 WHERE l.config_digest = $2
   AND EXISTS (SELECT 1 FROM tags AS t JOIN images AS i ON i.id = t.image_id
                 JOIN layer_sources AS s ON s.registry_id = i.registry_id
                                        AND s.repository = i.repository
                                        AND s.config_digest = t.config_digest
                WHERE t.config_digest = l.config_digest AND (i.owner_id = $1 OR i.owner_id IS NULL))
"""


async def get_layer(conn: Conn, account_id: int, config_digest: str) -> asyncpg.Record | None:
    """A layer, only if one of the caller's visible tags points at it and that tag's
    repository proved holding it."""
    return await conn.fetchrow(GET_LAYER_SQL, account_id, config_digest)


INSERT_IMAGE_SQL = """
INSERT INTO images (name, owner_id, registry_id, repository, description, is_private_image,
                    public_url, credentials, next_sync_at, sync_requested_at, tag_policy, build_token)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), now(), $10, $11)
ON CONFLICT ON CONSTRAINT images_owner_name_key DO NOTHING
RETURNING id
"""


async def insert_image(
    conn: Conn, *, name: str, owner_id: int | None, registry_id: int, repository: str,
    description: str, is_private: bool, public_url: str, credentials: bytes | None,
    first_sync_in: float, tag_policy: dict[str, Any] | None = None, build_token: bytes | None = None,
) -> int | None:
    """The new image's id, or None when this owner already has the name."""
    return await conn.fetchval(
        INSERT_IMAGE_SQL, name, owner_id, registry_id, repository, description, is_private,
        public_url, credentials, first_sync_in, tag_policy, build_token,
    )


UPDATE_IMAGE_SQL = """
UPDATE images
   SET description = COALESCE($2, description),
       credentials = CASE WHEN $3::boolean THEN $4 ELSE credentials END,
       sync_requested_at = CASE WHEN $3::boolean OR $5::boolean OR $7::boolean THEN now()
                                ELSE sync_requested_at END,
       sync_failures = CASE WHEN $3::boolean THEN 0 ELSE sync_failures END,
       tag_policy = CASE WHEN $5::boolean THEN $6::jsonb ELSE tag_policy END,
       build_token = CASE WHEN $7::boolean THEN $8 ELSE build_token END,
       access_proven = access_proven AND NOT $3::boolean,
       updated_at = now()
 WHERE id = $1
"""


async def update_image(
    conn: Conn, image_id: int, *, description: str | None, set_credentials: bool,
    credentials: bytes | None, set_tag_policy: bool = False, tag_policy: dict[str, Any] | None = None,
    set_build_token: bool = False, build_token: bytes | None = None,
) -> None:
    await conn.execute(
        UPDATE_IMAGE_SQL, image_id, description, set_credentials, credentials, set_tag_policy, tag_policy,
        set_build_token, build_token,
    )


LOCK_CREDENTIALS_SQL = "SELECT credentials FROM images WHERE id = $1 FOR UPDATE"


async def lock_credentials(conn: asyncpg.Connection, image_id: int) -> bytes | None:
    """The image's sealed credentials (None: none stored), its row locked until the caller's
    transaction ends: a PATCH that keeps half of them must not race another PATCH."""
    token = await conn.fetchval(LOCK_CREDENTIALS_SQL, image_id)
    return bytes(token) if token is not None else None


async def delete_image(conn: Conn, image_id: int) -> None:
    await conn.execute("DELETE FROM images WHERE id = $1", image_id)


REQUEST_SYNC_SQL = """
UPDATE images SET sync_requested_at = now(), next_sync_at = now() + make_interval(secs => $2)
 WHERE id = $1
"""


async def request_sync(conn: Conn, image_id: int, *, fallback_in: float) -> None:
    """Mark a user-requested sync; the scheduler runs it after `fallback_in` s if no worker did."""
    await conn.execute(REQUEST_SYNC_SQL, image_id, fallback_in)


# With the last read of the image's builds from a build API (worker/quay_builds.py; the
# build_polls columns are NULL when it was never read). next_sync_at 'infinity': a catalog
# image nobody has read yet (synced on its first read). sync_requested: a sync was asked for
# (a user, a webhook) and none has finished since; the database's times have microseconds,
# so this holds even within the second of the request.
SYNC_STATUS_SQL = """
SELECT i.last_synced_at, NULLIF(i.next_sync_at, 'infinity') AS next_sync_at, i.sync_error, i.sync_error_at,
       i.sync_failures, i.tags_cut_at, i.lease_until > now() AS syncing, i.tag_policy, i.sync_interval,
       COALESCE(i.sync_requested_at > GREATEST(i.last_synced_at, i.sync_error_at, '-infinity'), false)
           AS sync_requested,
       i.build_token IS NOT NULL AS has_build_token, p.read_at AS builds_read_at,
       p.error AS builds_error, p.error_at AS builds_error_at, p.due_at AS builds_due_at,
       p.recent AS builds_recent
  FROM images AS i LEFT JOIN build_polls AS p ON p.image_id = i.id
 WHERE i.id = $1
"""

# Tags whose last sync found a problem (kept with their last good data) or left a note (no
# layer: no manifest for the platform, an artifact), first ones by name, with their count.
TAG_ISSUES_SQL = """
SELECT name, sync_error, sync_note, count(*) OVER () AS total_count
  FROM tags
 WHERE image_id = $1 AND (sync_error IS NOT NULL OR sync_note IS NOT NULL)
 ORDER BY name COLLATE "C"
 LIMIT $2
"""


async def sync_status(conn: Conn, image_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(SYNC_STATUS_SQL, image_id)
    return row


async def tag_issues(conn: Conn, image_id: int, limit: int) -> tuple[list[asyncpg.Record], int]:
    rows = await conn.fetch(TAG_ISSUES_SQL, image_id, limit)
    return list(rows), (rows[0]["total_count"] if rows else 0)


# Registries the caller has a reason to know: those of its images and of the catalog (the
# counts say whether there are any, without reading images), Docker Hub and the service's own.
GET_REGISTRY_SQL = """
SELECT r.host, r.name, r.icon_url, r.is_ssl, r.is_tutum_registry
  FROM registries AS r
 WHERE r.host = $3
   AND (r.is_tutum_registry OR r.host = $2 OR EXISTS (
        SELECT 1 FROM list_counts AS c WHERE c.scope IN (0, $1) AND c.category_id = 0
           AND c.registry_id = r.id AND c.bucket = 0 AND c.n > 0))
"""


async def get_registry(conn: Conn, account_id: int, hub_host: str, host: str) -> asyncpg.Record | None:
    return await conn.fetchrow(GET_REGISTRY_SQL, account_id, hub_host, host)


# The events stream (api/stream.py): the names of an account's own images that the catalog has
# too, whose catalog images the account does not see.
SHADOWED_SQL = """
SELECT o.name FROM images AS o
 WHERE o.owner_id = $1 AND EXISTS (SELECT 1 FROM images AS c WHERE c.name = o.name AND c.owner_id IS NULL)
"""


async def shadowed_names(conn: Conn, account_id: int) -> list[str]:
    return [r["name"] for r in await conn.fetch(SHADOWED_SQL, account_id)]
