"""A list page's memory is bounded whatever its images' tag counts (api/pages.py with_tags,
api/list_body.py): the page statement embeds only so many tag names, the rest are read a
bounded batch at a time, and a body past LIST_BUFFER_BYTES is streamed in bounded chunks —
the same JSON, to the byte, as the whole body that fits the buffer (with its ETag)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import test_utils

from api import list_body, pages
from api.app import create_app
from core.settings import Settings
from tests.conftest import MakeUser, User, insert_image, unique
from tests.support.resolver import stub_resolver

IMAGES, TAGS = 10, 30
LIST = "/api/v1/image/?is_user_image=true&limit=1000"


async def serve(settings: Settings, **changes: Any) -> AsyncIterator[test_utils.TestClient]:
    app = create_app(dataclasses.replace(settings, **changes))
    stub_resolver(app)
    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        yield c


@pytest.fixture
async def buffered(settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    async for c in serve(settings):
        yield c


@pytest.fixture
async def streamed(settings: Settings) -> AsyncIterator[test_utils.TestClient]:
    """A web process whose list bodies past 2,000 bytes are streamed."""
    async for c in serve(settings, list_buffer_bytes=2000):
        yield c


@pytest.fixture
async def owner(make_user: MakeUser, pool: asyncpg.Pool) -> User:
    """An account with IMAGES images of TAGS tags each (names that sort in code-point order
    differently from most collations)."""
    user = await make_user()
    ns = unique("big")
    for i in range(IMAGES):
        await insert_image(pool, name=f"registry.example/{ns}/app{i}", owner_id=user.account.id,
                           tags=[f"{t}{s}" for t in range(TAGS // 3) for s in ("", "-B", "_a")])
    return user


def expected_tags(body: dict[str, Any]) -> dict[str, list[str]]:
    return {o["name"]: o["tags"] for o in body["objects"]}


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """At most 50 tag names embedded or read per statement; the names each read asked for."""
    monkeypatch.setattr(pages, "INLINE_TAGS", 50)
    monkeypatch.setattr(list_body, "FLUSH_BYTES", 1000)
    asked: list[int] = []
    real = pages.with_tags

    async def spy(conn: Any, rows: Any) -> AsyncIterator[Any]:
        class Counting:
            async def fetch(self, sql: str, ids: list[int]) -> list[asyncpg.Record]:
                found = await conn.fetch(sql, ids)
                asked.append(sum(len(r["tags"]) for r in found))
                return found

        async for out in real(Counting(), rows):  # type: ignore[arg-type]
            yield out

    monkeypatch.setattr(pages, "with_tags", spy)
    return asked


async def test_a_streamed_list_is_the_same_json_in_bounded_pieces(
    buffered: test_utils.TestClient, streamed: test_utils.TestClient, owner: User, pool: asyncpg.Pool,
    small_batches: list[int],
) -> None:
    whole = await buffered.get(LIST, headers=owner.headers)
    assert whole.status == 200 and whole.headers["ETag"] and whole.headers["Content-Length"]
    reference = await whole.read()

    resp = await streamed.get(LIST, headers=owner.headers)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert resp.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in resp.headers
    assert "ETag" not in resp.headers and resp.headers["Cache-Control"] == "private, no-cache"
    assert resp.headers["X-Request-ID"]
    chunks: list[bytes] = []
    piece = b""
    async for data, end_of_chunk in resp.content.iter_chunks():
        piece += data
        if end_of_chunk:
            chunks.append(piece)
            piece = b""
    body = b"".join(chunks) + piece
    assert body == reference  # to the byte
    # the first piece is what the buffer held (a little over 2,000 bytes), then pieces of about
    # FLUSH_BYTES: none holds more than one image object beyond the bound
    largest_object = max(len(orjson.dumps(o)) for o in orjson.loads(body)["objects"])
    assert len(chunks) > 3 and all(len(c) <= 2000 + 1000 + largest_object for c in chunks)

    parsed = orjson.loads(body)
    assert parsed["meta"]["total_count"] == IMAGES and len(parsed["objects"]) == IMAGES
    names = await pool.fetch("SELECT i.name, t.name AS tag FROM images AS i JOIN tags AS t ON t.image_id = i.id"
                             " WHERE i.owner_id = $1 ORDER BY t.name COLLATE \"C\"", owner.account.id)
    want: dict[str, list[str]] = {}
    for r in names:
        want.setdefault(r["name"], []).append(f"/api/v1/image/{r['name']}/tag/{r['tag']}/")
    assert expected_tags(parsed) == want
    # one image's names embedded in the page statement (30 <= 50 < 60), then one read per
    # image (30 + 30 > 50), in both responses: never more than 50 names at once
    assert small_batches == [TAGS] * (IMAGES - 1) * 2


async def test_head_of_a_streamed_list_sends_no_body(streamed: test_utils.TestClient, owner: User) -> None:
    resp = await streamed.head(LIST, headers=owner.headers)
    assert resp.status == 200 and await resp.read() == b""


async def test_tags_past_the_embedding_bound_are_read_in_later_statements(
    buffered: test_utils.TestClient, owner: User, small_batches: list[int],
) -> None:
    """Within the buffer (an ETag as before) the page is the same whether its images' tags
    came with the page statement or after it."""
    first = await buffered.get(LIST, headers=owner.headers)
    body = await first.read()
    assert len(small_batches) == IMAGES - 1
    pages.INLINE_TAGS = 10**6  # restored by monkeypatch: everything embedded
    again = await buffered.get(LIST, headers=owner.headers)
    assert await again.read() == body and again.headers["ETag"] == first.headers["ETag"]
    assert len(small_batches) == IMAGES - 1  # no later statement this time


async def test_a_failure_after_the_stream_started_cuts_the_transfer(
    streamed: test_utils.TestClient, owner: User, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The status line is sent: an error half-way closes the connection before the final
    chunk, so the client sees a transfer cut short, never a list that looks whole."""
    real = pages.with_tags

    async def failing(conn: Any, rows: Any) -> AsyncIterator[Any]:
        async for n, out in aenumerate(real(conn, rows)):
            if n == 5:
                raise ConnectionResetError("the database went away")
            yield out

    monkeypatch.setattr(pages, "with_tags", failing)
    resp = await streamed.get(LIST, headers=owner.headers)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def aenumerate(items: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    n = 0
    async for item in items:
        yield n, item
        n += 1
