"""The jumpstart catalog: a curated list of images in a data file (catalog/jumpstarts.json),
loaded into the shared catalog by `registry-sync load-catalog [FILE]`.

Loading is idempotent: each entry is upserted by (owner NULL, name), its categories are set
to exactly the file's, and catalog images that are no longer in the file stop being
jumpstarts (they stay in the catalog). New images are not synced until someone reads one
(next_sync_at 'infinity' until then; api/read_marks.py makes it due on its first read), so
loading contacts no registry and a catalog of a million images is not polled at load; from
its first sync on, an image is polled like any other (worker/schedule.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from core.names import ImageName, InvalidNameError, parse_image_name
from core.registries import ensure_registry
from core.settings import Settings

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "jumpstarts.json"
# Any fixed number: two loads at once would otherwise interleave their category rewrites.
_LOAD_LOCK = 7_305_005
MAX_CATEGORY_LENGTH = 255


class CatalogError(ValueError):
    """The file is not a valid catalog; the message names the entry and the field."""


@dataclass(frozen=True)
class Jumpstart:
    name: ImageName
    description: str
    categories: tuple[str, ...]
    icon_url: str | None


@dataclass(frozen=True)
class LoadResult:
    created: int
    updated: int
    retired: int  # catalog images no longer in the file: no longer jumpstarts


def _entry(i: int, raw: Any) -> Jumpstart:
    where = f"jumpstarts[{i}]"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be an object")
    unknown = set(raw) - {"name", "description", "categories", "icon_url"}
    if unknown:
        raise CatalogError(f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
    try:
        name = parse_image_name(raw.get("name"))
    except InvalidNameError as exc:
        raise CatalogError(f"{where}.name: {exc}") from None
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise CatalogError(f"{where}.description must be a string")
    categories = raw.get("categories", [])
    if not isinstance(categories, list) or not all(
        isinstance(c, str) and 0 < len(c) <= MAX_CATEGORY_LENGTH and "\x00" not in c for c in categories
    ):
        raise CatalogError(f"{where}.categories must be a list of 1-{MAX_CATEGORY_LENGTH} character names")
    icon = raw.get("icon_url")
    if icon is not None and not isinstance(icon, str):
        raise CatalogError(f"{where}.icon_url must be a string or null")
    return Jumpstart(name, description, tuple(dict.fromkeys(categories)), icon)


def parse_catalog(data: bytes) -> list[Jumpstart]:
    """The entries of a catalog file (`{"jumpstarts": [...]}` or a bare list); raises
    CatalogError saying what is wrong. A name listed twice is an error."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"not JSON: {exc}") from None
    items = doc.get("jumpstarts") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise CatalogError('expected {"jumpstarts": [...]} or a list of entries')
    entries = [_entry(i, raw) for i, raw in enumerate(items)]
    seen: set[str] = set()
    for e in entries:
        if e.name.name in seen:
            raise CatalogError(f"{e.name.name} is listed twice")
        seen.add(e.name.name)
    return entries


def read_catalog(path: Path = DEFAULT_CATALOG) -> list[Jumpstart]:
    return parse_catalog(path.read_bytes())


UPSERT_JUMPSTART_SQL = """
INSERT INTO images AS i (name, owner_id, registry_id, repository, description, icon_url,
                         jumpstart, is_private_image, public_url, next_sync_at)
VALUES ($1, NULL, $2, $3, $4, $5, true, false, $6, 'infinity')
ON CONFLICT ON CONSTRAINT images_owner_name_key DO UPDATE
   SET description = EXCLUDED.description, icon_url = EXCLUDED.icon_url, jumpstart = true
RETURNING id, (xmax = 0) AS created
"""

UPSERT_CATEGORIES_SQL = """
INSERT INTO categories (name) SELECT unnest($1::text[]) ON CONFLICT ON CONSTRAINT categories_name_key DO NOTHING
"""

SET_IMAGE_CATEGORIES_SQL = """
WITH wanted AS (SELECT id FROM categories WHERE name = ANY ($2::text[])),
     gone AS (DELETE FROM image_categories
               WHERE image_id = $1 AND category_id NOT IN (SELECT id FROM wanted))
INSERT INTO image_categories (image_id, category_id) SELECT $1, id FROM wanted
ON CONFLICT ON CONSTRAINT image_categories_pkey DO NOTHING
"""

RETIRE_SQL = """
UPDATE images SET jumpstart = false
 WHERE owner_id IS NULL AND jumpstart AND NOT (name = ANY ($1::text[]))
"""


async def load_catalog(conn: asyncpg.Connection, entries: Sequence[Jumpstart], settings: Settings) -> LoadResult:
    """Upsert the jumpstarts in one transaction (see the module docstring)."""
    created = updated = 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOAD_LOCK)
        all_categories = sorted({c for e in entries for c in e.categories})
        if all_categories:
            await conn.execute(UPSERT_CATEGORIES_SQL, all_categories)
        for e in entries:
            registry_id = await ensure_registry(conn, e.name.host, settings)
            row = await conn.fetchrow(
                UPSERT_JUMPSTART_SQL, e.name.name, registry_id, e.name.repository, e.description,
                e.icon_url, e.name.public_url,
            )
            created += row["created"]
            updated += not row["created"]
            await conn.execute(SET_IMAGE_CATEGORIES_SQL, row["id"], list(e.categories))
        status = await conn.execute(RETIRE_SQL, [e.name.name for e in entries])
    return LoadResult(created, updated, int(status.split()[-1]))
