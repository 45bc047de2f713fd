"""SQL of list pages: images (every filter and combination), an image's tags, registries.

A page costs the same at the end of a list as at its start, however large the catalog:

- rows are read by keyset (`after`/`before` a name, in C order) from indexes that hold each
  filter in name order: `list_entries` for images, (image_id, name) for tags;
- `total_count` is a sum over a few rows of `list_counts`, which triggers keep exact as
  images, categories and owners change (schema.sql, "Lists at scale");
- a client-computed `offset` finds its name bucket from the bucket counts (a sum over at
  most one row per bucket and scope) and skips only the rows before it in that bucket (at
  most 2 x LIST_BUCKET_SIZE names);
- everything a page needs (rows, total, ids of the named registry and category) comes from
  one statement, so it is one snapshot: the total agrees with the rows.

An image page's memory is bounded whatever the tag counts (an image may hold
MAX_TAGS_PER_IMAGE tags, a page 1,000 images): the page statement embeds the tag names of its
images only while their running count stays within INLINE_TAGS; the others are read
afterwards, at most about INLINE_TAGS names per statement, as the response is written
(`with_tags`; api/list_body.py streams what does not fit its buffer). Each image's tags are
then one statement's snapshot of that image, a moment after the page's.

Statement texts are built from constant fragments with `$n` parameters (never values), one
text per shape, so asyncpg's statement cache keeps them prepared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg

from api.params import ImageFilter, Page
from api.queries import IMAGE_FIELDS, IMAGE_TAG_NAMES, TAG_COLUMNS, Conn, get_image

INLINE_TAGS = 20_000  # tag names a page statement embeds, and a later statement reads, at most


@dataclass(frozen=True)
class Result:
    """One page: `rows` in list order, the exact `total`, and where the page sits."""

    rows: list[asyncpg.Record]
    total: int
    offset: int  # position of the first row, as far as the request tells
    more: bool  # rows follow the last one
    first: bool  # nothing precedes the first row


def _finish(rows: list[asyncpg.Record], page: Page, total: int, backward: bool) -> Result:
    """Trim the look-ahead row and say what lies on either side."""
    extra = len(rows) > page.limit
    rows = rows[: page.limit]
    if backward:
        rows.reverse()
        return Result(rows, total, max(page.offset, 0), more=True, first=not extra)
    offset = page.offset
    return Result(rows, total, offset, more=extra, first=offset == 0 and page.after is None)


# --------------------------------------------------------------------------- images

def _scopes(account_id: int, f: ImageFilter) -> list[int]:
    """The count scopes of the caller's view: its own images, the catalog, and (subtracted)
    the catalog images its own images hide."""
    if f.is_user is True:
        return [account_id]
    if f.is_user is False:
        return [0, -account_id]
    return [0, account_id, -account_id]


# Parameters of every image page statement, in this order (the text depends only on the mode
# and on whether a registry is named, so there are eight texts, each prepared once).
ME, JS, PS, SCOPES, CAT_NAME, HOST, OWN_ON, CAT_ON, LIMIT, CURSOR, INLINE = (f"${i}" for i in range(1, 12))


def _image_args(account_id: int, f: ImageFilter, page: Page, mode: str) -> list[Any]:
    return [
        account_id,
        [False, True] if f.jumpstart is None else [f.jumpstart],
        [False, True] if f.is_private is None else [f.is_private],
        _scopes(account_id, f), f.category, f.registry, f.is_user is not False, f.is_user is not True,
        page.limit + 1,
        page.offset if mode == "bucket" else (page.before if mode == "before" else page.after or ""),
        INLINE_TAGS,
    ]


@lru_cache(maxsize=16)
def _image_sql(mode: str, by_registry: bool) -> str:
    """The page statement for `mode`: "after" a name (also the first page), "before" a name,
    or "bucket" (at the offset in $10: the bucket holding that row, then the rows before it
    in the bucket are skipped)."""
    ctes = [
        "f AS MATERIALIZED (SELECT"
        f" CASE WHEN {CAT_NAME}::text IS NULL THEN 0"
        f" ELSE coalesce((SELECT id FROM categories WHERE name = {CAT_NAME}::text), -1) END AS cat,"
        f" CASE WHEN {HOST}::text IS NULL THEN 0"
        f" ELSE coalesce((SELECT id FROM registries WHERE host = {HOST}::text), -1) END AS reg,"
        f" EXISTS (SELECT 1 FROM list_counts WHERE scope = -{ME}::bigint AND category_id = 0 AND registry_id = 0"
        "  AND bucket = 0 AND n > 0) AS shadows)"
    ]
    cells = (f"c.scope = ANY({SCOPES}::bigint[]) AND c.category_id = (SELECT cat FROM f)"
             f" AND c.registry_id = (SELECT reg FROM f)"
             f" AND c.jumpstart = ANY({JS}::boolean[]) AND c.is_private = ANY({PS}::boolean[])")
    signed = "sum(CASE WHEN c.scope < 0 THEN -c.n ELSE c.n END)::bigint"
    direction, offset_sql = "ASC", "0"
    if mode == "after":
        cond = f"e.name > {CURSOR}::text"
    elif mode == "before":
        cond, direction = f"e.name < {CURSOR}::text", "DESC"
    else:
        k = f"{CURSOR}::bigint"
        ctes.append(
            f"start AS MATERIALIZED (SELECT y.lower, {k} - (y.upto - y.n) AS skip FROM ("
            " SELECT b.lower, t.n, sum(t.n) OVER (ORDER BY b.lower) AS upto FROM ("
            f"  SELECT c.bucket, {signed} AS n FROM list_counts AS c WHERE {cells} AND c.bucket > 0"
            "   GROUP BY c.bucket) AS t JOIN list_buckets AS b ON b.id = t.bucket) AS y"
            f" WHERE y.upto > {k} ORDER BY y.lower LIMIT 1)"
        )
        cond, offset_sql = "e.name >= (SELECT lower FROM start)", "(SELECT skip FROM start)"
    registry = " AND e.registry_id = (SELECT reg FROM f)" if by_registry else ""
    legs = [
        f"(SELECT e.name, e.image_id FROM list_entries AS e WHERE {on}::boolean AND {j} = ANY({JS}::boolean[])"
        f" AND {p} = ANY({PS}::boolean[]) AND e.scope = {scope} AND e.category_id = (SELECT cat FROM f)"
        f"{registry} AND e.jumpstart = {j} AND e.is_private = {p} AND {cond} ORDER BY e.name {direction})"
        for scope, on in ((f"{ME}::bigint", OWN_ON), ("0", CAT_ON))
        for j in ("false", "true") for p in ("false", "true")
    ]
    # Each leg is read in name order from its index and Postgres merges them (Merge Append),
    # stopping after the page. The catalog images the caller shadows are dropped on the way
    # (only catalog images have entries in a negative scope), by a per-row look-up of the
    # primary key, and only for a caller that shadows any: OFFSET 0 keeps it from becoming a
    # join the planner may hash, and `scope + 0` from a range scan of the caller's shadows.
    ctes.append(
        f"page AS (SELECT u.name, u.image_id FROM ({' UNION ALL '.join(legs)}) AS u"
        " WHERE NOT ((SELECT shadows FROM f) AND EXISTS (SELECT 1 FROM list_entries AS s"
        f" WHERE s.image_id = u.image_id AND s.scope + 0 = -{ME}::bigint AND s.category_id = 0 OFFSET 0))"
        f" ORDER BY u.name {direction} OFFSET {offset_sql} LIMIT {LIMIT}::bigint)"
    )
    # The tag names of the first rows whose counts add up to at most INLINE_TAGS; NULL for the
    # rest (the CASE evaluates the sub-query only for the rows it embeds).
    embedded = (f"CASE WHEN sum(coalesce(tc.n, 0)) OVER (ORDER BY p.name {direction} ROWS UNBOUNDED PRECEDING)"
                f" <= {INLINE}::bigint THEN {IMAGE_TAG_NAMES} END AS tags")
    return (
        f"WITH {', '.join(ctes)}"
        f" SELECT {IMAGE_FIELDS}, {embedded}, coalesce(tc.n, 0) AS tag_count,"
        f" (SELECT coalesce({signed}, 0) FROM list_counts AS c WHERE {cells} AND c.bucket = 0) AS total_count"
        " FROM page AS p JOIN images AS i ON i.id = p.image_id JOIN registries AS r ON r.id = i.registry_id"
        " LEFT JOIN tag_counts AS tc ON tc.image_id = i.id"
        f" ORDER BY p.name {direction}"
    )


IMAGE_TOTAL_SQL = """
SELECT coalesce(sum(CASE WHEN c.scope < 0 THEN -c.n ELSE c.n END), 0)::bigint
  FROM list_counts AS c
 WHERE c.scope = ANY ($1::bigint[]) AND c.bucket = 0
   AND c.category_id = CASE WHEN $2::text IS NULL THEN 0
                            ELSE coalesce((SELECT id FROM categories WHERE name = $2::text), -1) END
   AND c.registry_id = CASE WHEN $3::text IS NULL THEN 0
                            ELSE coalesce((SELECT id FROM registries WHERE host = $3::text), -1) END
   AND c.jumpstart = ANY ($4::boolean[]) AND c.is_private = ANY ($5::boolean[])
"""


def _matches(row: asyncpg.Record, account_id: int, f: ImageFilter) -> bool:
    return (
        (f.jumpstart is None or row["jumpstart"] == f.jumpstart)
        and (f.is_private is None or row["is_private_image"] == f.is_private)
        and (f.is_user is None or (row["owner_id"] == account_id) == f.is_user)
        and (f.registry is None or row["registry_host"] == f.registry)
        and (f.category is None or f.category in row["categories"])
    )


async def list_images(conn: Conn, account_id: int, f: ImageFilter, page: Page) -> Result:
    """A page of the images `account_id` sees that pass `f`, by name (C order)."""
    if f.name is not None:  # at most one visible image has the name
        row = await get_image(conn, account_id, f.name)
        rows = [row] if row is not None and _matches(row, account_id, f) else []
        in_page = [r for r in rows if page.offset == 0 and (page.after is None or r["name"] > page.after)
                   and (page.before is None or r["name"] < page.before)]
        return Result(in_page, len(rows), 0 if page.before else page.offset, False, True)
    if page.before is not None:
        mode = "before"
    elif page.by_offset:
        mode = "bucket"
    else:
        mode = "after"
    rows = await conn.fetch(_image_sql(mode, f.registry is not None), *_image_args(account_id, f, page, mode))
    if mode == "before" and len(rows) < page.limit:
        # fewer than a page before the cursor: the previous page is the first page
        return await list_images(conn, account_id, f, Page(page.limit))
    if rows:
        total = rows[0]["total_count"]
    else:
        args = _image_args(account_id, f, page, mode)
        total = await conn.fetchval(IMAGE_TOTAL_SQL, args[3], f.category, f.registry, args[1], args[2])
    return _finish(list(rows), page, total, mode == "before")


# the same names, in the same order, as the page statement embeds (from the (image, name) index)
TAG_NAMES_SQL = f"SELECT i.id AS image_id, {IMAGE_TAG_NAMES} AS tags FROM unnest($1::bigint[]) AS i (id)"


async def with_tags(conn: Conn, rows: Sequence[asyncpg.Record]) -> AsyncIterator[tuple[asyncpg.Record, list[str]]]:
    """Each row of an image page with its tag names, in order: those the page statement
    embedded, the others read by one statement per run of rows whose tag counts add up to at
    most INLINE_TAGS (at least one image each), so that about INLINE_TAGS names are held at once."""
    budget = INLINE_TAGS
    pending: list[asyncpg.Record] = []  # rows waiting for their names, in order
    held = 0

    async def read() -> AsyncIterator[tuple[asyncpg.Record, list[str]]]:
        found = {r["image_id"]: r["tags"] for r in await conn.fetch(TAG_NAMES_SQL, [r["id"] for r in pending])}
        for r in pending:
            yield r, found.get(r["id"], [])

    for row in rows:
        if pending and (row["tags"] is not None or held + row["tag_count"] > budget):
            async for out in read():
                yield out
            pending, held = [], 0
        if row["tags"] is not None:
            yield row, row["tags"]
        else:
            pending.append(row)
            held += row["tag_count"]
    if pending:
        async for out in read():
            yield out


# --------------------------------------------------------------------------- tags

_TAG_PAGE_SQL = """
SELECT {columns}, coalesce((SELECT n FROM tag_counts WHERE image_id = $1), 0) AS total_count
  FROM tags AS t LEFT JOIN layers AS l ON l.config_digest = t.config_digest
 WHERE t.image_id = $1 AND {cond}
 ORDER BY t.name COLLATE "C" {direction} OFFSET $3 LIMIT $4
"""
TAGS_AFTER_SQL = _TAG_PAGE_SQL.format(columns=TAG_COLUMNS, cond='t.name COLLATE "C" > $2', direction="ASC")
TAGS_BEFORE_SQL = _TAG_PAGE_SQL.format(columns=TAG_COLUMNS, cond='t.name COLLATE "C" < $2', direction="DESC")
COUNT_TAGS_SQL = "SELECT coalesce((SELECT n FROM tag_counts WHERE image_id = $1), 0)"


async def list_tags(conn: Conn, image_id: int, page: Page) -> Result:
    """A page of an image's tags by name, the total from `tag_counts`. A deep offset skips that
    many entries of the (image, name) index: at most MAX_TAGS_PER_IMAGE."""
    backward = page.before is not None
    if backward:
        rows = await conn.fetch(TAGS_BEFORE_SQL, image_id, page.before, 0, page.limit + 1)
        if len(rows) < page.limit:
            return await list_tags(conn, image_id, Page(page.limit))
    else:
        skip = page.offset if page.by_offset else 0
        rows = await conn.fetch(TAGS_AFTER_SQL, image_id, page.after or "", skip, page.limit + 1)
    total = rows[0]["total_count"] if rows else await conn.fetchval(COUNT_TAGS_SQL, image_id)
    return _finish(list(rows), page, total, backward)


# --------------------------------------------------------------------------- registries

# Registries the caller has a reason to know: those of its images and of the catalog (from
# the counts: O(registries), not O(images)), Docker Hub and the service's own.
_VISIBLE_REGISTRIES = """
visible AS MATERIALIZED (
    SELECT c.registry_id AS id FROM list_counts AS c
     WHERE c.scope IN (0, $1) AND c.category_id = 0 AND c.bucket = 0 AND c.registry_id > 0
     GROUP BY c.registry_id HAVING sum(c.n) > 0
    UNION
    SELECT id FROM registries WHERE host = $2 OR is_tutum_registry)
"""
_REGISTRY_PAGE_SQL = """
WITH {visible}
SELECT r.host, r.name, r.icon_url, r.is_ssl, r.is_tutum_registry,
       (SELECT count(*) FROM visible) AS total_count
  FROM registries AS r JOIN visible AS v ON v.id = r.id
 WHERE {cond}
 ORDER BY r.host COLLATE "C" {direction} OFFSET $4 LIMIT $5
"""
REGISTRIES_AFTER_SQL = _REGISTRY_PAGE_SQL.format(
    visible=_VISIBLE_REGISTRIES, cond='r.host COLLATE "C" > $3', direction="ASC")
REGISTRIES_BEFORE_SQL = _REGISTRY_PAGE_SQL.format(
    visible=_VISIBLE_REGISTRIES, cond='r.host COLLATE "C" < $3', direction="DESC")
COUNT_REGISTRIES_SQL = f"WITH {_VISIBLE_REGISTRIES} SELECT count(*) FROM visible"


async def list_registries(conn: Conn, account_id: int, hub_host: str, page: Page) -> Result:
    backward = page.before is not None
    if backward:
        rows = await conn.fetch(REGISTRIES_BEFORE_SQL, account_id, hub_host, page.before, 0, page.limit + 1)
        if len(rows) < page.limit:
            return await list_registries(conn, account_id, hub_host, Page(page.limit))
    else:
        skip = page.offset if page.by_offset else 0
        rows = await conn.fetch(REGISTRIES_AFTER_SQL, account_id, hub_host, page.after or "", skip,
                                page.limit + 1)
    total = rows[0]["total_count"] if rows else await conn.fetchval(COUNT_REGISTRIES_SQL, account_id, hub_host)
    return _finish(list(rows), page, total, backward)

