"""`GET /api/v1/image/<name>/tag/<tag>/history/`: every digest a tag pointed at (SPEC §7).

Entries are written by the triggers on `tags` (schema.sql `record_tag_changes`), whichever
path changed the tag; newest first, paged like every list (`limit`, `offset`, and the
`after`/`before` cursors of next/previous links, here a position in the tag's history).
The history of a tag that is gone stays readable until retention prunes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import web

from api import serializers
from api.errors import BadRequestError, NotFoundError, json_response
from api.keys import POOL, SETTINGS
from api.pages import Result
from api.params import Page, parse_paging, reject_unknown

_HISTORY_PAGE_SQL = """
SELECT h.seq, h.digest, h.valid_from, h.valid_until, h.observed_via,
       (SELECT count(*) FROM tag_history AS c WHERE c.image_id = $1 AND c.tag = $2) AS total_count
  FROM tag_history AS h
 WHERE h.image_id = $1 AND h.tag = $2 AND {cond}
 ORDER BY h.seq {direction} OFFSET $4 LIMIT $5
"""
HISTORY_OLDER_SQL = _HISTORY_PAGE_SQL.format(cond="h.seq < $3", direction="DESC")
HISTORY_NEWER_SQL = _HISTORY_PAGE_SQL.format(cond="h.seq > $3", direction="ASC")
COUNT_HISTORY_SQL = "SELECT count(*) FROM tag_history WHERE image_id = $1 AND tag = $2"

_NEWEST = 2**62  # `after` of the first page: older than anything


async def history_page(conn: asyncpg.Pool, image_id: int, tag: str, page: Page) -> Result:
    """A page of the tag's history, newest first: after (older than) the cursor, before
    (newer than) it, or at an offset."""
    backward = page.before is not None
    if backward:
        rows = await conn.fetch(HISTORY_NEWER_SQL, image_id, tag, _position(page.before, "before"), 0,
                                page.limit + 1)
        if len(rows) < page.limit:
            return await history_page(conn, image_id, tag, Page(page.limit))
    else:
        after = _position(page.after, "after") if page.after is not None else _NEWEST
        skip = page.offset if page.by_offset else 0
        rows = await conn.fetch(HISTORY_OLDER_SQL, image_id, tag, after, skip, page.limit + 1)
    total = rows[0]["total_count"] if rows else await conn.fetchval(COUNT_HISTORY_SQL, image_id, tag)
    extra = len(rows) > page.limit
    kept = list(rows[: page.limit])
    if backward:
        kept.reverse()
        return Result(kept, total, max(page.offset, 0), more=True, first=not extra)
    return Result(kept, total, page.offset, more=extra, first=page.offset == 0 and page.after is None)


def _position(raw: str | None, key: str) -> int:
    if raw is None or not raw.isdigit() or len(raw) > 18:
        raise BadRequestError(f"'{key}' is a cursor from a next or previous link", field=key)
    return int(raw)


def _by_position(row: Mapping[str, Any]) -> str:
    return str(row["seq"])


async def tag_history(request: web.Request, image: asyncpg.Record, tag: str, *, tag_exists: bool) -> web.Response:
    """The handler (api/images.py routes here): 404 when the tag neither exists nor has a history."""
    page = parse_paging(request.query, request.app[SETTINGS].page_limit_max)
    reject_unknown(request.query)
    result = await history_page(request.app[POOL], image["id"], tag, page)
    if not result.total and not tag_exists:
        raise NotFoundError(f"image '{image['name']}' has no tag '{tag}'")
    path = serializers.tag_uri(image["name"], tag) + "history/"
    return json_response(serializers.envelope(
        (serializers.history_entry(r) for r in result.rows),
        serializers.list_meta(path=path, params=[], page=page, result=result, key=_by_position),
    ))


SET_IMMUTABLE_SQL = "UPDATE images SET immutable_tags = $2, updated_at = now() WHERE id = $1"


async def set_immutable_tags(conn: asyncpg.Connection | asyncpg.Pool, image_id: int, patterns: list[str]) -> None:
    """The image's globs of tags expected never to move (`[]`: none)."""
    await conn.execute(SET_IMMUTABLE_SQL, image_id, patterns)


# Moves of tags the image expects never to move, newest first: the entry that moved the tag
# and the digest it replaced.
UNEXPECTED_MOVES_SQL = """
SELECT i.immutable_tags, m.tag, m.digest, m.valid_from, m.previous_digest
  FROM images AS i
  LEFT JOIN LATERAL (
      SELECT h.tag, h.digest, h.valid_from,
             (SELECT p.digest FROM tag_history AS p WHERE p.image_id = h.image_id AND p.tag = h.tag
                AND p.seq < h.seq ORDER BY p.seq DESC LIMIT 1) AS previous_digest
        FROM tag_history AS h WHERE h.image_id = i.id AND h.unexpected
       ORDER BY h.id DESC LIMIT $2) AS m ON true
 WHERE i.id = $1
"""


async def immutability(conn: asyncpg.Pool, image_id: int, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(the image's immutable_tags globs, the last `limit` moves of such tags as `…/sync/`
    warnings, newest first)."""
    rows = await conn.fetch(UNEXPECTED_MOVES_SQL, image_id, limit)
    globs = list(rows[0]["immutable_tags"]) if rows else []
    warnings = [
        {"tag": r["tag"], "moved_at": serializers.rfc2822(r["valid_from"]), "digest": r["digest"],
         "previous_digest": r["previous_digest"],
         "warning": f"tag {r['tag']} matches immutable_tags but moved"}
        for r in rows if r["tag"] is not None
    ]
    return globs, warnings
