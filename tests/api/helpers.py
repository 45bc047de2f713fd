"""Assertions and row snapshots shared by the API tests."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import ClientResponse

IMAGE_KEYS = frozenset(
    {
        "resource_uri",
        "name",
        "description",
        "icon_url",
        "state",
        "star_count",
        "jumpstart",
        "in_use",
        "categories",
        "is_private_image",
        "public_url",
        "registry",
        "last_build_date",
        "tags",
        "build_source",
    }
)
TAG_KEYS = frozenset({"resource_uri", "name", "full_name", "image", "state", "buildable", "layer"})
LAYER_KEYS = frozenset(
    {
        "author",
        "creation",
        "docker_id",
        "entrypoint",
        "run_command",
        "envvars",
        "labels",
        "ports",
        "volumes",
        "resource_uri",
    }
)
REGISTRY_KEYS = frozenset(
    {"resource_uri", "name", "host", "icon_url", "is_ssl", "is_tutum_registry"}
)
META_KEYS = frozenset({"limit", "offset", "total_count", "next", "previous"})

# `Fri, 8 Nov 2013 00:22:26 +0000`: no leading zero on the day, always UTC.
RFC2822 = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [1-9][0-9]? "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} \+0000"
)


def assert_same(actual: Any, expected: Any, path: str = "$") -> None:
    """Equality that also compares types (True is not 1, 0 is not False) and key sets."""
    assert type(actual) is type(expected), f"{path}: {actual!r} is not a {type(expected).__name__}"
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


async def json_error(resp: ClientResponse, status: int, field: str | None = None) -> dict[str, Any]:
    """Check an error answer: the status, a JSON body with a sentence, the field if any."""
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", text
    body = await resp.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and len(body["error"]) > 5, body
    if field is not None:
        assert body.get("field") == field, body
    return body


async def ok_json(resp: ClientResponse, status: int = 200) -> Any:
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", text
    return await resp.json()


IMAGE_SNAPSHOT_SQL = """
SELECT id, name, owner_id, registry_id, repository, description, icon_url, star_count,
       jumpstart, in_use, is_private_image, public_url, credentials, state, last_build_date,
       sync_requested_at, sync_failures, updated_at
  FROM images WHERE id = $1
"""


async def snapshot(pool: asyncpg.Pool, image_id: int) -> dict[str, Any] | None:
    row = await pool.fetchrow(IMAGE_SNAPSHOT_SQL, image_id)
    if row is None:
        return None
    snap = dict(row)
    snap["tags"] = [
        dict(r)
        for r in await pool.fetch(
            "SELECT name, state, build_date FROM tags WHERE image_id = $1 ORDER BY id", image_id
        )
    ]
    return snap


async def owned_names(pool: asyncpg.Pool, owner_id: int) -> list[str]:
    rows = await pool.fetch("SELECT name FROM images WHERE owner_id = $1 ORDER BY id", owner_id)
    return [r["name"] for r in rows]


async def registry_hosts(pool: asyncpg.Pool, host_like: str) -> list[str]:
    rows = await pool.fetch("SELECT host FROM registries WHERE host LIKE $1", host_like)
    return [r["host"] for r in rows]


async def add_layer(pool: asyncpg.Pool, image_id: int, tag: str, **fields: Any) -> str:
    """Insert a layers row and point `tag` of `image_id` at it, with the image's repository
    recorded as its source (as a sync that read the config does); returns the docker_id (hex)."""
    hex_id = secrets.token_hex(32)
    cols = {"config_digest": f"sha256:{hex_id}", **fields}
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"INSERT INTO layers ({names}) VALUES ({params})", *cols.values())
        done = await conn.execute(
            "UPDATE tags SET config_digest = $3 WHERE image_id = $1 AND name = $2",
            image_id,
            tag,
            cols["config_digest"],
        )
        await conn.execute(
            "INSERT INTO layer_sources (registry_id, repository, config_digest)"
            " SELECT registry_id, repository, $2 FROM images WHERE id = $1", image_id, cols["config_digest"])
    assert done == "UPDATE 1"
    return hex_id


def is_rfc2822(value: object) -> bool:
    return isinstance(value, str) and RFC2822.fullmatch(value) is not None


def utc(*args: int) -> datetime:
    from datetime import UTC

    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]
