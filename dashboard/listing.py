"""The images page's rows: the images an account sees, filtered by name prefix, state and
registry, by name or newest build first, a page at a time by keyset cursor.

Two readings, one visibility rule (SPEC §1: an account sees its own images and the catalog's,
its own image winning over a catalog image of the same name):

- by name with no state filter — the default — is the API's own list: `api.pages.list_images`
  with the API's filters (`is_user_image` for "mine", `registry`), its cursors and its exact
  total. A name prefix is a range of that order: the page starts at the prefix and ends at
  the first name past it.
- by newest build, or filtered by state, the API has no order or filter to lend: the rows come
  from `images_owner_state_built_idx` / `images_owner_state_name_idx` (schema.sql), one ordered
  range per (owner, state) — the account's own (owner_id = A) and the catalog's (IS NULL) —
  merged by Postgres (Merge Append) and stopped after a page, so a page costs the same at the
  end of a million images as at the start. A catalog image the account shadows is dropped by
  the same per-row look-up the API's list uses (`list_entries` scope -A). The columns are the
  API's (`IMAGE_COLUMNS`). tests/dashboard/test_listing.py checks that both readings give
  the same set of images as the API's list, for accounts with and without shadowed names.

A registry filter in the second reading, or a name prefix with the newest-build order, filters
rows of those ranges: the cost grows with the rows skipped (docs/benchmarks.md measures it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import asyncpg

from api import pages
from api.params import ImageFilter, Page
from api.queries import IMAGE_COLUMNS, Conn

STATES = ("Empty", "Success", "Building", "Failed")
PAGE_SIZE = 25
STATE_COUNT_CAP = 200  # the state counts of the header stop here (shown as "200+")
# A registry with at most this many images in the caller's view is read whole and sorted;
# a bigger one is a filter of the ordered ranges (where it matches at least 1 row in 500).
FEW_IMAGES = 2000
FEW_LIMIT = FEW_IMAGES  # in the statements (a lower FEW_IMAGES, as in the tests, stays below it)
NAME_MAX = 255


@dataclass(frozen=True)
class View:
    """What the images page shows: `mine` (the account's own images) or the whole visible list."""

    mine: bool = True
    sort: str = "name"  # or "built": newest build first
    prefix: str | None = None
    state: str | None = None
    registry: str | None = None  # host
    after: str | None = None  # cursor: rows after it
    before: str | None = None  # cursor: rows before it


@dataclass(frozen=True)
class Listing:
    rows: list[asyncpg.Record]
    total: int | None  # exact when the API's list answered (no state filter, no name prefix)
    next_cursor: str | None
    prev_cursor: str | None  # None: this is the first page


def _prefix_end(prefix: str) -> str:
    """The least string above every name that starts with `prefix` (names are ASCII)."""
    return prefix + "\x7f"


def _just_below(prefix: str) -> str:
    """A string below `prefix` and above every name below it: `after` it the prefix starts."""
    return prefix[:-1] + chr(ord(prefix[-1]) - 1) + "\x7f"


# ----------------------------------------------------------------------- the API's list

async def _by_name(conn: Conn, account_id: int, v: View) -> Listing:
    f = ImageFilter(is_user=True if v.mine else None, registry=v.registry)
    after = v.after
    if v.prefix and v.before is None and (after is None or after < v.prefix):
        after = _just_below(v.prefix)
    result = await pages.list_images(conn, account_id, f, Page(PAGE_SIZE, after=after, before=v.before))
    rows = result.rows
    first = result.first or (v.after is None and v.before is None)
    more = result.more
    if v.prefix:
        kept = [r for r in rows if r["name"].startswith(v.prefix)]
        more = more and len(kept) == len(rows) and bool(kept)
        first = first or (len(kept) < len(rows) and v.before is not None) or not kept
        rows = kept
    return Listing(
        rows, None if v.prefix else result.total,
        next_cursor=rows[-1]["name"] if more and rows else None,
        prev_cursor=None if first or not rows else rows[0]["name"],
    )


# ----------------------------------------------------------------------- by build, or by state

# Parameters of every statement below, in this order (unused ones are still passed, so one
# argument list fits every text).
ME, STATE, HOST, PREFIX, PREFIX_END, KEY, ID, NAME = (f"${i}" for i in range(1, 9))
# The page size is part of the text, not a parameter: a generic plan (the API's pool forces
# them) then knows it reads a few rows, and is not costed as a big query (which would also
# make Postgres compile it with JIT on every execution: 100+ ms for a 1 ms query).
LIMIT = str(PAGE_SIZE + 1)
BUILT = "COALESCE(i.last_build_date, '-infinity'::timestamptz)"


NONE, FEW, SCAN = "none", "few", "scan"  # how one scope (own, catalog) is read


@lru_cache(maxsize=256)
def _sql(sort: str, backward: bool, cursor: bool, one_state: bool, by_registry: bool, by_prefix: bool,
         own: str, catalog: str) -> str:
    """The page statement of one shape. Each scope (the caller's own images, the catalog's) is
    read one of three ways: SCAN, one leg per state reading its (owner, state) range of the
    index in page order from the cursor on; FEW, for a registry with at most FEW_IMAGES images
    in that scope, its list entries read whole and sorted; NONE, not at all."""
    desc = sort == "built"  # newest first
    ascending = desc == backward
    direction = "ASC" if ascending else "DESC"
    if sort == "built":
        order = f"{BUILT} {direction}, i.id {direction}"
        cond = f"({BUILT}, i.id) {'>' if ascending else '<'} ({KEY}::timestamptz, {ID}::bigint)"
        outer = f"u.k {direction}, u.id {direction}"
    else:
        order = f'i.name COLLATE "C" {direction}'
        cond = f'i.name COLLATE "C" {">" if ascending else "<"} {NAME}::text'
        outer = f'u.name COLLATE "C" {direction}'
    filters = [cond] if cursor else []
    if by_prefix:
        filters.append(f'i.name COLLATE "C" >= {PREFIX}::text AND i.name COLLATE "C" < {PREFIX_END}::text')
    extra = "".join(f" AND {c}" for c in filters)
    scan_extra = extra + (" AND i.registry_id = (SELECT reg FROM f)" if by_registry else "")
    state = f" AND i.state = {STATE}::text" if one_state else ""
    # A catalog image the caller shadows with its own is dropped, as the API's list drops it
    # (api/pages.py): a look-up of its negative-scope entry, only for a caller that has any.
    def shadowed(image_id: str) -> str:
        return (" AND NOT ((SELECT shadows FROM f) AND EXISTS (SELECT 1 FROM list_entries AS s"
                f" WHERE s.image_id = {image_id} AND s.scope + 0 = -{ME}::bigint AND s.category_id = 0 OFFSET 0))")

    parts = []
    # COALESCE(owner_id, 0): the indexes' expression, where the catalog's owner is 0 (an
    # equality, which `IS NULL` is not for the planner: it would sort the range, not read it in
    # order); list_entries' scope is the same number.
    for mode, owner, hide in ((own, f"{ME}::bigint", ""), (catalog, "0", shadowed("e.image_id"))):
        if mode == FEW:
            # The visible entries (at most FEW_IMAGES: the caller counted them; the LIMIT only
            # tells the planner), then their images by primary key, one by one (LATERAL ...
            # OFFSET 0: a generic plan would rather hash the whole table).
            parts.append(
                f"(SELECT i.id, i.name, i.k FROM (SELECT e.image_id FROM list_entries AS e"
                f" WHERE e.scope = {owner} AND e.category_id = 0 AND e.registry_id = (SELECT reg FROM f)"
                f"{hide} LIMIT {FEW_LIMIT}) AS e,"
                f" LATERAL (SELECT i.id, i.name, {BUILT} AS k FROM images AS i WHERE i.id = e.image_id{state}{extra}"
                " OFFSET 0) AS i)")
        elif mode == SCAN:
            # Each leg has the page's LIMIT, so that it is planned as the first rows of its
            # index range (not a sort of the whole range); its filters come before that LIMIT.
            states = [f"{STATE}::text"] if one_state else [f"'{st}'" for st in STATES]
            parts += [
                f"(SELECT i.id, i.name, {BUILT} AS k FROM images AS i WHERE COALESCE(i.owner_id, 0) = {owner}"
                f" AND i.state = {st}{scan_extra}{hide.replace('e.image_id', 'i.id')}"
                f" ORDER BY {order} LIMIT {LIMIT})"
                for st in states
            ]
    source = " UNION ALL ".join(parts)
    return (
        "WITH f AS MATERIALIZED (SELECT"
        f" CASE WHEN {HOST}::text IS NULL THEN 0"
        f" ELSE coalesce((SELECT id FROM registries WHERE host = {HOST}::text), -1) END AS reg,"
        f" EXISTS (SELECT 1 FROM list_counts WHERE scope = -{ME}::bigint AND category_id = 0 AND registry_id = 0"
        "  AND bucket = 0 AND n > 0) AS shadows,"
        # every parameter typed, also those this shape does not use: one argument list for all
        f" {STATE}::text AS p2, {PREFIX}::text AS p4, {PREFIX_END}::text AS p5, {KEY}::timestamptz AS p6,"
        f" {ID}::bigint AS p7, {NAME}::text AS p8),"
        f" page AS (SELECT u.id, u.name, u.k FROM ({source}) AS u ORDER BY {outer} LIMIT {LIMIT})"
        f" SELECT {IMAGE_COLUMNS} FROM page AS p JOIN images AS i ON i.id = p.id"
        " JOIN registries AS r ON r.id = i.registry_id"
        f" ORDER BY {outer.replace('u.', 'p.')}"
    )


def built_cursor(row: asyncpg.Record) -> str:
    """`<epoch microseconds>.<id>` of a row in newest-build order (`-` for never built)."""
    built: datetime | None = row["last_build_date"]
    key = "-" if built is None else str(round(built.timestamp() * 1_000_000))
    return f"{key}.{row['id']}"


NEVER = datetime.min.replace(tzinfo=UTC)  # stands for -infinity: the key of never-built images


def parse_built_cursor(raw: str) -> tuple[datetime, int]:
    """(build key, id) of a built_cursor; raises BadCursorError."""
    key, _, ident = raw.partition(".")
    try:
        when = NEVER if key == "-" else datetime.fromtimestamp(int(key) / 1_000_000, UTC)
        return when, int(ident)
    except (ValueError, OverflowError, OSError):
        raise BadCursorError(raw) from None


class BadCursorError(ValueError):
    """A cursor that no page of this listing made."""


async def _registry_mode(conn: Conn, account_id: int, host: str, own: bool) -> str:
    """How to read one scope for a registry filter, from the API's count of its images there."""
    f = ImageFilter(is_user=own, registry=host)
    count = (await pages.list_images(conn, account_id, f, Page(1))).total
    return NONE if count == 0 else FEW if count <= FEW_IMAGES else SCAN


async def _by_index(conn: Conn, account_id: int, v: View) -> Listing:
    cursor = v.before if v.before is not None else v.after
    key, ident = parse_built_cursor(cursor) if cursor is not None and v.sort == "built" else (None, 0)
    backward = v.before is not None
    own = SCAN
    catalog = NONE if v.mine else SCAN
    if v.registry is not None:
        # how many images of the registry the caller sees in each scope: the API's exact counts
        own = await _registry_mode(conn, account_id, v.registry, True)
        if not v.mine:
            catalog = await _registry_mode(conn, account_id, v.registry, False)
        if own == catalog == NONE:
            return Listing([], None, None, None)
    sql = _sql(v.sort, backward, cursor is not None, v.state is not None, v.registry is not None,
               bool(v.prefix), own, catalog)
    rows = list(await conn.fetch(
        sql, account_id, v.state, v.registry, v.prefix, _prefix_end(v.prefix) if v.prefix else None,
        key, ident, cursor if v.sort == "name" else None,
    ))
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    if backward:
        rows.reverse()
        if not more:  # fewer than a page before the cursor: the first page
            return await _by_index(conn, account_id, View(v.mine, v.sort, v.prefix, v.state, v.registry))
    cursor_of = built_cursor if v.sort == "built" else _name_of
    return Listing(
        rows, None,
        next_cursor=cursor_of(rows[-1]) if (more or backward) and rows else None,
        prev_cursor=None if cursor is None or not rows else cursor_of(rows[0]),
    )


def _name_of(row: asyncpg.Record) -> str:
    name: str = row["name"]
    return name


async def list_view(conn: Conn, account_id: int, v: View) -> Listing:
    """One page of `v` for `account_id`. Raises BadCursorError for a cursor no page made.
    A name prefix lists by name (newest-build order would have to read every name it matches)."""
    if v.prefix and v.sort != "name":
        v = dataclasses.replace(v, sort="name", after=None, before=None)
    if v.sort == "name" and v.state is None:
        return await _by_name(conn, account_id, v)
    return await _by_index(conn, account_id, v)


STATE_COUNTS_SQL = f"""
SELECT s.state, (SELECT count(*) FROM (SELECT 1 FROM images AS i WHERE COALESCE(i.owner_id, 0) = $1
                                          AND i.state = s.state
                                        LIMIT {STATE_COUNT_CAP}) AS x) AS n
  FROM unnest($2::text[]) AS s (state)
"""


async def own_state_counts(conn: Conn, account_id: int) -> dict[str, int]:
    """How many of the account's own images are in each state, each counted up to
    STATE_COUNT_CAP (an index-only range of images_owner_state_name_idx per state)."""
    return {r["state"]: r["n"] for r in await conn.fetch(STATE_COUNTS_SQL, account_id, list(STATES))}
