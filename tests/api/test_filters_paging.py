"""Image list filters (alone and combined), boolean spellings and paging (SPEC §1 Lists).

Tests share the database, so every list is scoped by something only this test uses: a fresh
account's own images, a unique category, or a unique registry host.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from tests.api.helpers import ok_json
from tests.conftest import MakeUser, User, insert_image, unique


@dataclass
class World:
    """Images of two accounts and the catalog, all on one unique host and category."""

    a: User
    b: User
    host: str
    category: str
    names: dict[str, str]  # label -> image name


async def _world(pool, make_user: MakeUser) -> World:
    a, b = await make_user(), await make_user()
    host = f"{unique('reg')}.example.com"
    category = f"Database Servers {unique('c')}"
    hub_ns = unique("hubns")
    names = {
        "cat_jump": f"{host}/catalog/jump",  # catalog, jumpstart, private registry
        "cat_plain": f"{host}/catalog/plain",  # catalog, not jumpstart, no category
        "cat_hub": f"{hub_ns}/db",  # catalog on Docker Hub: public
        "a_own": f"{host}/a/own",  # A's, private
        "a_hub": f"{hub_ns}/mine",  # A's, on Hub, public
        "b_own": f"{host}/b/own",  # B's: A never sees it
    }
    await insert_image(pool, name=names["cat_jump"], jumpstart=True, categories=[category])
    await insert_image(pool, name=names["cat_plain"])
    await insert_image(pool, name=names["cat_hub"], jumpstart=True, categories=[category])
    await insert_image(pool, name=names["a_own"], owner_id=a.account.id, categories=[category])
    await insert_image(pool, name=names["a_hub"], owner_id=a.account.id, is_private_image=False)
    await insert_image(pool, name=names["b_own"], owner_id=b.account.id, categories=[category])
    return World(a, b, host, category, names)


async def _names(client, user: User, query: str) -> list[str]:
    body = await ok_json(
        await client.get(f"/api/v1/image/?{query}&limit=1000", headers=user.headers)
    )
    assert body["meta"]["total_count"] == len(body["objects"]), body["meta"]
    return [o["name"] for o in body["objects"]]


def _q(value: str) -> str:
    return quote(value, safe="")


async def test_each_filter_alone(client, pool, make_user) -> None:
    w = await _world(pool, make_user)
    n = w.names
    registry = _q(f"/api/v1/registry/{w.host}/")
    category = _q(w.category)
    assert " " in w.category and "%20" in category

    assert await _names(client, w.a, f"name={n['a_own']}") == [n["a_own"]]
    assert await _names(client, w.a, f"name={n['cat_plain']}") == [n["cat_plain"]]
    assert await _names(client, w.a, f"name={n['b_own']}") == []
    assert await _names(client, w.a, f"registry={registry}") == sorted(
        [n["a_own"], n["cat_jump"], n["cat_plain"]]
    )
    assert await _names(client, w.a, f"categories__name={category}") == sorted(
        [n["a_own"], n["cat_hub"], n["cat_jump"]]
    )
    # Unscoped boolean filters: check membership of this test's images only.
    jump = set(await _names(client, w.a, "jumpstart=true"))
    assert {n["cat_jump"], n["cat_hub"]} <= jump
    assert not {n["cat_plain"], n["a_own"], n["a_hub"], n["b_own"]} & jump
    private = set(await _names(client, w.a, "is_private_image=true"))
    assert {n["cat_jump"], n["cat_plain"], n["a_own"]} <= private
    assert not {n["cat_hub"], n["a_hub"], n["b_own"]} & private
    public = set(await _names(client, w.a, "is_private_image=false"))
    assert {n["cat_hub"], n["a_hub"]} <= public
    assert not {n["cat_jump"], n["cat_plain"], n["a_own"], n["b_own"]} & public
    assert await _names(client, w.a, "is_user_image=true") == sorted([n["a_own"], n["a_hub"]])
    not_mine = set(await _names(client, w.a, "is_user_image=false"))
    assert {n["cat_jump"], n["cat_plain"], n["cat_hub"]} <= not_mine
    assert not {n["a_own"], n["a_hub"], n["b_own"]} & not_mine


async def test_filters_combined(client, pool, make_user) -> None:
    w = await _world(pool, make_user)
    n = w.names
    registry = _q(f"/api/v1/registry/{w.host}/")
    category = _q(w.category)

    assert await _names(client, w.a, f"categories__name={category}&jumpstart=true") == sorted(
        [n["cat_hub"], n["cat_jump"]]
    )
    assert await _names(
        client, w.a, f"categories__name={category}&jumpstart=true&is_private_image=false"
    ) == [n["cat_hub"]]
    assert await _names(client, w.a, f"registry={registry}&is_user_image=true") == [n["a_own"]]
    assert await _names(
        client, w.a, f"registry={registry}&is_user_image=false&jumpstart=false"
    ) == [n["cat_plain"]]
    assert await _names(client, w.a, f"registry={registry}&categories__name={category}") == sorted(
        [n["a_own"], n["cat_jump"]]
    )
    assert await _names(client, w.a, f"name={n['a_own']}&is_user_image=false") == []
    assert await _names(
        client, w.a, f"name={n['a_own']}&registry={registry}&is_private_image=true"
    ) == [n["a_own"]]
    # B sees its own image and the catalog, never A's.
    assert await _names(client, w.b, f"registry={registry}") == sorted(
        [n["b_own"], n["cat_jump"], n["cat_plain"]]
    )


@pytest.mark.parametrize(("yes", "no"), [("true", "false"), ("True", "False"), ("1", "0")])
async def test_booleans_accept_every_spelling(client, pool, make_user, yes: str, no: str) -> None:
    w = await _world(pool, make_user)
    n = w.names
    registry = _q(f"/api/v1/registry/{w.host}/")

    assert await _names(client, w.a, f"registry={registry}&jumpstart={yes}") == [n["cat_jump"]]
    assert await _names(client, w.a, f"registry={registry}&jumpstart={no}") == sorted(
        [n["a_own"], n["cat_plain"]]
    )
    assert await _names(client, w.a, f"registry={registry}&is_user_image={yes}") == [n["a_own"]]
    assert await _names(client, w.a, f"registry={registry}&is_user_image={no}") == sorted(
        [n["cat_jump"], n["cat_plain"]]
    )
    assert await _names(client, w.a, f"registry={registry}&is_private_image={no}") == []
    assert len(await _names(client, w.a, f"registry={registry}&is_private_image={yes}")) == 3


async def _paged_world(pool, make_user: MakeUser, count: int) -> tuple[User, str, list[str]]:
    user = await make_user()
    category = f"Database Servers {unique('page')}"
    ns = unique("p")
    # Names chosen so that byte order differs from a naive or case-folded order.
    names = [
        f"example.com/{ns}/{c}" for c in ("b", "a-1", "a", "a.2", "c_3", "z", "a0", "m")[:count]
    ]
    for name in names:
        await insert_image(pool, name=name, owner_id=user.account.id, categories=[category])
    return user, category, sorted(names, key=lambda s: s.encode())


async def test_paging_by_following_next_to_the_end(client, pool, make_user) -> None:
    user, category, expected = await _paged_world(pool, make_user, 8)
    url: str | None = f"/api/v1/image/?categories__name={_q(category)}&limit=3"
    seen: list[str] = []
    pages = 0
    previous_seen: list[str | None] = []
    while url is not None:
        assert url.startswith("/api/v1/image/?"), url
        body = await ok_json(await client.get(url, headers=user.headers))
        pages += 1
        assert body["meta"]["total_count"] == 8
        assert body["meta"]["limit"] == 3
        assert len(body["objects"]) <= 3
        seen.extend(o["name"] for o in body["objects"])
        previous_seen.append(body["meta"]["previous"])
        for link in (body["meta"]["next"], body["meta"]["previous"]):
            if link is not None:
                assert link.startswith("/api/v1/image/?"), link
                query = dict(parse_qsl(urlsplit(link).query))
                assert query["categories__name"] == category
                assert query["limit"] == "3"
        url = body["meta"]["next"]
        assert pages <= 5, "next never ends"
    assert pages == 3
    assert seen == expected
    assert len(set(seen)) == len(seen)
    assert previous_seen[0] is None and None not in previous_seen[1:]


async def test_paging_by_offset_and_limit(client, pool, make_user) -> None:
    user, category, expected = await _paged_world(pool, make_user, 8)
    base = f"/api/v1/image/?categories__name={_q(category)}"
    seen: list[str] = []
    for offset in range(0, 8, 3):
        body = await ok_json(
            await client.get(f"{base}&offset={offset}&limit=3", headers=user.headers)
        )
        assert body["meta"]["offset"] == offset
        assert body["meta"]["total_count"] == 8
        seen.extend(o["name"] for o in body["objects"])
    assert seen == expected

    body = await ok_json(await client.get(f"{base}&offset=3&limit=3", headers=user.headers))
    assert body["meta"]["next"] is not None and body["meta"]["previous"] is not None
    assert dict(parse_qsl(urlsplit(body["meta"]["next"]).query)) == {
        "categories__name": category,
        "limit": "3",
        "offset": "6",
    }
    assert dict(parse_qsl(urlsplit(body["meta"]["previous"]).query)) == {
        "categories__name": category,
        "limit": "3",
        "offset": "0",
    }


async def test_next_and_previous_keep_every_filter(client, pool, make_user) -> None:
    user, category, _ = await _paged_world(pool, make_user, 5)
    query = f"categories__name={_q(category)}&is_user_image=True&is_private_image=1&jumpstart=false"
    body = await ok_json(
        await client.get(f"/api/v1/image/?{query}&limit=2&offset=2", headers=user.headers)
    )

    assert body["meta"]["total_count"] == 5
    for link in (body["meta"]["next"], body["meta"]["previous"]):
        assert link.startswith("/api/v1/")
        kept = dict(parse_qsl(urlsplit(link).query))
        assert kept["categories__name"] == category
        assert kept["is_user_image"] == "True"
        assert kept["is_private_image"] == "1"
        assert kept["jumpstart"] == "false"
        assert "%20" in link and " " not in link
    follow = await ok_json(await client.get(body["meta"]["next"], headers=user.headers))
    assert follow["meta"]["offset"] == 4
    assert len(follow["objects"]) == 1


async def test_limit_is_capped_at_1000(client, pool, make_user) -> None:
    user, category, expected = await _paged_world(pool, make_user, 2)
    for limit in ("1000", "1001", "5000", "99999"):
        body = await ok_json(
            await client.get(
                f"/api/v1/image/?categories__name={_q(category)}&limit={limit}",
                headers=user.headers,
            )
        )
        assert body["meta"]["limit"] == 1000
        assert [o["name"] for o in body["objects"]] == expected


async def test_default_limit_is_25(client, make_user) -> None:
    user = await make_user()
    body = await ok_json(
        await client.get("/api/v1/image/?is_user_image=true", headers=user.headers)
    )
    assert body["meta"]["limit"] == 25 and body["meta"]["offset"] == 0


async def test_offset_past_the_end_is_empty_with_the_total(client, pool, make_user) -> None:
    user, category, _ = await _paged_world(pool, make_user, 3)
    body = await ok_json(
        await client.get(
            f"/api/v1/image/?categories__name={_q(category)}&offset=10&limit=2",
            headers=user.headers,
        )
    )
    assert body["objects"] == []
    assert body["meta"]["total_count"] == 3
    assert body["meta"]["offset"] == 10
    assert body["meta"]["next"] is None
    assert body["meta"]["previous"] is not None and body["meta"]["previous"].startswith(
        "/api/v1/image/?"
    )


async def test_tag_list_pages_by_next(client, pool, make_user) -> None:
    user = await make_user()
    name = f"example.com/{unique('ns')}/app"
    tags = [f"v{i}" for i in range(7)]
    await insert_image(pool, name=name, owner_id=user.account.id, tags=tags)
    url: str | None = f"/api/v1/image/{name}/tag/?limit=3"
    seen: list[str] = []
    while url is not None:
        assert url.startswith(f"/api/v1/image/{name}/tag/?"), url
        body = await ok_json(await client.get(url, headers=user.headers))
        assert body["meta"]["total_count"] == 7
        seen.extend(t["name"] for t in body["objects"])
        url = body["meta"]["next"]
        assert len(seen) <= 7
    assert seen == tags

    past = await ok_json(
        await client.get(f"/api/v1/image/{name}/tag/?offset=50", headers=user.headers)
    )
    assert past["objects"] == [] and past["meta"]["total_count"] == 7
