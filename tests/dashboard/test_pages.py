"""The dashboard over HTTP, against the real app: sessions, CSRF, headers, throttling, the
forms' errors, and what each page shows to whom."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import ClientResponse, test_utils
from aiohttp.test_utils import TestClient

from api.app import create_app
from core.settings import Settings
from dashboard import assets
from dashboard.format import dom_id
from dashboard.sessions import KEY_PREFIX
from tests.conftest import MakeUser, insert_image, unique
from tests.dashboard.conftest import Browser, NewBrowser, csrf_of
from tests.support.resolver import stub_resolver
from tests.support.services import redis_db


async def signed_in(new_browser: NewBrowser, make_user: MakeUser, **kw: object) -> tuple[Browser, object]:
    user = await make_user(**kw)
    b = new_browser()
    resp = await b.sign_in(user)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/", await resp.text()
    return b, user


async def test_sign_in_gives_a_session_cookie_and_pages_forbid_inline_code_and_frames(
    new_browser: NewBrowser, make_user: MakeUser
) -> None:
    user = await make_user()
    b = new_browser()
    first = await b.get("/ui/")
    assert first.status == 303 and first.headers["Location"].startswith("/ui/signin?next=")
    form = await b.page("/ui/signin")
    assert 'name="user"' in form and 'name="apikey"' in form
    resp = await b.sign_in(user)
    cookie = next(v for k, v in resp.headers.items() if k == "Set-Cookie" and v.startswith("rs_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
    assert "Path=/ui/" in cookie and "Secure" not in cookie  # plain HTTP, no trusted proxy
    assert user.key not in cookie
    page = await b.get("/ui/")
    html = await page.text()
    assert page.status == 200 and user.account.username in html
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    for template in ("/ui/", "/ui/signin"):
        html = await (await b.get(template)).text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
        assert " style=" not in html and "<style" not in html, "an inline style"
        assert not re.search(r'(src|href)="(https?:)?//', html), "an asset from elsewhere"


async def test_a_post_without_its_csrf_token_is_refused(
    new_browser: NewBrowser, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    b, _ = await signed_in(new_browser, make_user)
    name = f"example.com/{unique('csrf')}/app"
    for data in ({"name": name}, {"name": name, "csrf": "forged"}):
        resp = await b.post("/ui/", data)
        assert resp.status == 403 and "did not come from this site" in await resp.text()
    token = csrf_of(await b.page("/ui/"))
    resp = await b.post("/ui/", {"name": name, "csrf": token}, headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name) == 0
    assert (await b.post("/ui/signout", {})).status == 403  # sign-out too
    assert (await b.post("/ui/signin", {"user": "x", "apikey": "y"})).status == 403  # and sign-in
    resp = await b.post("/ui/", {"name": name, "csrf": token})
    assert resp.status == 303
    assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name) == 1


async def test_sign_out_ends_the_session_everywhere(new_browser: NewBrowser, make_user: MakeUser,
                                                     settings: Settings) -> None:
    b, _ = await signed_in(new_browser, make_user)
    token = b.client.session.cookie_jar.filter_cookies(b.client.make_url("/ui/"))["rs_session"].value
    stored = redis.Redis.from_url(settings.redis_url)
    import hashlib

    key = KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()
    assert 0 < stored.ttl(key) <= settings.ui_session_seconds  # it expires by itself
    resp = await b.form("/ui/signout", {}, page="/ui/")
    assert resp.status == 303 and resp.headers["Location"] == "/ui/signin"
    assert stored.exists(key) == 0
    # the old cookie, replayed, opens nothing
    other = new_browser()
    other.client.session.cookie_jar.update_cookies({"rs_session": token}, b.client.make_url("/ui/"))
    assert (await other.get("/ui/")).status == 303


async def test_deleting_the_api_key_ends_its_sessions(new_browser: NewBrowser, make_user: MakeUser,
                                                       pool: asyncpg.Pool) -> None:
    b, user = await signed_in(new_browser, make_user)
    assert (await b.get("/ui/")).status == 200
    await pool.execute("DELETE FROM api_keys WHERE account_id = $1", user.account.id)  # type: ignore[attr-defined]
    assert (await b.get("/ui/")).status == 303  # AUTH_CACHE_SECONDS is 0 in the tests


@pytest.fixture
async def proxied_app(settings: Settings, redis_server_url: str) -> AsyncIterator[TestClient]:
    """An app of its own: a low failed-key limit on a Redis database of its own, behind a
    trusted proxy on 127.0.0.1."""
    url = f"{redis_server_url}/{redis_db('spare')}"
    redis.Redis.from_url(url).flushdb()
    s = dataclasses.replace(settings, redis_url=url, auth_failure_limit=3, trusted_proxies="127.0.0.1/32")
    app = create_app(s)
    stub_resolver(app)
    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        yield c


async def test_wrong_keys_are_throttled_like_the_api_and_the_right_key_still_signs_in(
    proxied_app: TestClient, new_browser: NewBrowser, make_user: MakeUser
) -> None:
    user = await make_user()
    b = new_browser(proxied_app)
    name = user.account.username
    seen = []
    for i in range(3):
        token = csrf_of(await b.page("/ui/signin"))
        resp = await b.post("/ui/signin", {"csrf": token, "user": name, "apikey": "0" * 64},
                            headers={"X-Forwarded-For": f"198.18.{i}.1"})
        seen.append(resp.status)
    # the API's wrong keys count into the same window: the form is throttled now
    api = await proxied_app.get("/api/v1/auth/", headers={"Authorization": f"ApiKey {name}:{'1' * 64}",
                                                          "X-Forwarded-For": "198.18.9.1"})
    assert seen == [401, 401, 401] and api.status == 429
    token = csrf_of(await b.page("/ui/signin"))
    resp = await b.post("/ui/signin", {"csrf": token, "user": name, "apikey": "2" * 64})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "Too many wrong keys" in await resp.text()
    ok = await b.sign_in(user)
    assert ok.status == 303
    cookie = next(v for k, v in ok.headers.items() if k == "Set-Cookie" and v.startswith("rs_session="))
    assert "Secure" not in cookie  # plain HTTP from the proxy


async def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(
    proxied_app: TestClient, client: TestClient, new_browser: NewBrowser, make_user: MakeUser
) -> None:
    user = await make_user()
    for c, secure in ((proxied_app, True), (client, False)):  # `client` trusts no proxy
        b = new_browser(c)
        form = await b.get("/ui/signin", headers={"X-Forwarded-Proto": "https"})
        token = csrf_of(await form.text())
        signin_cookie = next(v for k, v in form.headers.items() if k == "Set-Cookie")
        assert ("Secure" in signin_cookie) is secure
        # a browser would not send a Secure cookie back over http: the test hands it over
        b.client.session.cookie_jar.update_cookies({"rs_signin": token}, c.make_url("/ui/"))
        resp = await b.post("/ui/signin", {"csrf": token, "user": user.account.username, "apikey": user.key},
                            headers={"X-Forwarded-Proto": "https"})
        cookie = next(v for k, v in resp.headers.items() if k == "Set-Cookie" and v.startswith("rs_session="))
        assert ("Secure" in cookie) is secure


async def test_another_accounts_private_image_is_on_no_page(
    new_browser: NewBrowser, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    alice, alice_user = await signed_in(new_browser, make_user)
    bob, bob_user = await signed_in(new_browser, make_user)
    secret = f"example.com/{unique('private')}/app"
    await insert_image(pool, name=secret, owner_id=alice_user.account.id, tags=["v1"],  # type: ignore[attr-defined]
                       description="alice's")
    shared = f"{unique('shared')}/app"
    await insert_image(pool, name=shared, tags=["latest"], description="catalog copy")
    await insert_image(pool, name=shared, owner_id=bob_user.account.id, description="bob's own")  # type: ignore[attr-defined]
    for query in ("", "?scope=all", "?scope=all&sort=built", f"?scope=all&name={secret[:20]}",
                  "?scope=all&state=Success", "?scope=all&registry=example.com"):
        html = await bob.page(f"/ui/{query}")
        assert secret not in html, query
    assert secret in await alice.page("/ui/")
    resp = await bob.get(f"/ui/image/{secret}/")
    assert resp.status == 404 and "that you can see" in await resp.text()
    assert (await bob.post(f"/ui/image/{secret}/", {"csrf": csrf_of(await bob.page("/ui/")),
                                                     "action": "delete", "confirm": "yes"})).status == 404
    assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", secret) == 1
    # bob's own image wins over the catalog's of the same name, as in the API
    html = await bob.page(f"/ui/image/{shared}/")
    assert "bob&#39;s own" in html and "catalog copy" not in html
    assert "catalog copy" in await alice.page(f"/ui/image/{shared}/")
    # the catalog is read-only for ordinary accounts
    resp = await alice.form(f"/ui/image/{shared}/", {"action": "delete", "confirm": "yes"})
    assert resp.status == 403 and "read-only" in await resp.text()


async def test_the_register_form_runs_the_api_rules_and_says_what_is_wrong(
    new_browser: NewBrowser, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    b, user = await signed_in(new_browser, make_user)
    resp = await b.form("/ui/", {"name": "Not A Name!", "description": "x"})
    html = await resp.text()
    assert resp.status == 400 and "invalid image name" in html and 'aria-invalid="true"' in html
    name = f"example.com/{unique('reg')}/app"
    resp = await b.form("/ui/", {"name": name, "username": "u"})
    assert resp.status == 400 and "needs its password" in await resp.text()
    resp = await b.form("/ui/", {"name": name, "username": "u", "password": "hunter2-secret", "description": "mine"})
    assert resp.status == 303 and resp.headers["Location"] == f"/ui/image/{name}/?done=registered"
    row = await pool.fetchrow("SELECT owner_id, credentials, description FROM images WHERE name = $1", name)
    assert row["owner_id"] == user.account.id and row["credentials"] is not None  # type: ignore[attr-defined]
    assert b"hunter2-secret" not in bytes(row["credentials"]) and row["description"] == "mine"
    resp = await b.form("/ui/", {"name": name})
    assert resp.status == 409 and "already registered" in await resp.text()
    # edit: description alone keeps the credentials; delete asks first
    image = f"/ui/image/{name}/"
    assert (await b.form(image, {"action": "edit", "description": "changed"})).status == 303
    after = await pool.fetchrow("SELECT credentials, description FROM images WHERE name = $1", name)
    assert after["description"] == "changed" and after["credentials"] == row["credentials"]
    assert (await b.form(image, {"action": "resync"})).status == 303
    resp = await b.form(image, {"action": "delete"})
    assert resp.status == 303 and resp.headers["Location"].endswith("?confirm=delete")
    assert "Yes, delete it" in await b.page(f"{image}?confirm=delete")
    assert await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name) == 1
    resp = await b.form(image, {"action": "delete", "confirm": "yes"})
    assert resp.status == 303 and await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name) == 0


async def test_the_image_page_shows_tags_layers_problems_and_env_values_only_when_asked(
    new_browser: NewBrowser, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    from tests.api.helpers import add_layer

    b, user = await signed_in(new_browser, make_user)
    name = f"example.com/{unique('img')}/app"
    built = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)
    image_id = await insert_image(pool, name=name, owner_id=user.account.id,  # type: ignore[attr-defined]
                                  tags=[{"name": "v1", "build_date": built}, "v2"])
    await add_layer(pool, image_id, "v1", entrypoint="/run.sh", envvars=[{"key": "TOKEN_NAME", "value": "s3cr3t"}],
                    ports=[{"port": 8080, "protocol": "tcp"}])
    await pool.execute("UPDATE tags SET sync_error = 'manifest unreadable: 500', manifest_digest = $2"
                       " WHERE image_id = $1 AND name = 'v2'", image_id, "sha256:" + "ab" * 32)
    await pool.execute("UPDATE images SET sync_error = 'registry said 401', sync_error_at = now(),"
                       " sync_failures = 3 WHERE id = $1", image_id)
    html = await b.page(f"/ui/image/{name}/")
    assert "/run.sh" in html and "8080/tcp" in html and "TOKEN_NAME" in html and "s3cr3t" not in html
    assert "manifest unreadable: 500" in html and "registry said 401" in html and "3 times in a row" in html
    assert "sha256:abababababab" in html and "Mon, 4 Mar 2024 05:06:07 +0000" in html
    assert dom_id("v1", "tag") in html
    shown = await b.page(f"/ui/image/{name}/?env=v1")
    assert "s3cr3t" in shown


async def test_unknown_pages_and_bad_filters_are_pages_not_json(new_browser: NewBrowser, make_user: MakeUser) -> None:
    b, _ = await signed_in(new_browser, make_user)
    resp = await b.get("/ui/nowhere")
    assert resp.status == 404 and resp.content_type == "text/html"
    resp = await b.get("/ui/?state=Sleeping")
    assert resp.status == 400 and "state is one of" in await resp.text()
    resp = await b.get("/ui/?sort=built&after=garbage")
    assert resp.status == 400 and resp.content_type == "text/html"
    assert (await b.get("/ui/fleet/")).status == 404  # admins only


async def test_the_vendored_scripts_are_the_pinned_releases_and_served_from_here(client: TestClient) -> None:
    import hashlib

    for file, (_package, version, digest) in assets.VENDORED.items():
        assert hashlib.sha256((assets.STATIC_DIR / file).read_bytes()).hexdigest() == digest
        assert version in file
        resp = await client.get(assets.url(file))
        assert resp.status == 200 and "javascript" in resp.content_type
        assert "immutable" in resp.headers["Cache-Control"]
    for licence in ("LICENSE-htmx.txt", "LICENSE-htmx-ext-sse.txt"):
        assert (assets.STATIC_DIR / licence).read_text().startswith(("Zero-Clause BSD", "BSD Zero Clause"))


async def test_sessions_live_in_redis_so_every_web_process_serves_them(
    settings: Settings, new_browser: NewBrowser, make_user: MakeUser
) -> None:
    b, _ = await signed_in(new_browser, make_user)
    cookie = b.client.session.cookie_jar.filter_cookies(b.client.make_url("/ui/"))["rs_session"].value
    other_app = create_app(settings)  # another process's app: nothing shared but Postgres and Redis
    async with test_utils.TestClient(test_utils.TestServer(other_app)) as other:
        other.session.cookie_jar.update_cookies({"rs_session": cookie}, other.make_url("/ui/"))
        resp = await other.get("/ui/", allow_redirects=False)
        assert resp.status == 200
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assert await client.keys(f"{KEY_PREFIX}*")
    finally:
        await client.aclose()


async def _read_until(resp: ClientResponse, needle: str) -> str:
    """The stream's text up to the first event that holds `needle` (10 s at most)."""
    seen = ""
    async with asyncio.timeout(10):
        while needle not in seen:
            chunk = await resp.content.readany()
            assert chunk, f"the stream ended before {needle!r}: {seen[-500:]}"
            seen += chunk.decode()
    return seen


async def test_live_updates_carry_only_what_the_account_may_see(
    new_browser: NewBrowser, make_user: MakeUser, pool: asyncpg.Pool
) -> None:
    alice, alice_user = await signed_in(new_browser, make_user)
    bob, _ = await signed_in(new_browser, make_user)
    secret = f"example.com/{unique('live')}/app"
    secret_id = await insert_image(pool, name=secret, owner_id=alice_user.account.id)  # type: ignore[attr-defined]
    shared = f"{unique('livecat')}/app"
    shared_id = await insert_image(pool, name=shared)
    mine = await alice.get("/ui/live/")
    theirs = await bob.get(f"/ui/live/?image={shared}")
    assert mine.status == theirs.status == 200 and mine.content_type == "text/event-stream"
    first = await _read_until(mine, "event: update")
    assert dom_id(secret, "img") in first  # the page's listing, afresh on connecting
    assert "No tags yet" in await _read_until(theirs, "event: update")
    await pool.execute("INSERT INTO tags (image_id, name, state) VALUES ($1, 'v9', 'Success')", secret_id)
    await pool.execute("INSERT INTO tags (image_id, name, state) VALUES ($1, 'v9', 'Success')", shared_id)
    row = await _read_until(mine, f'{dom_id(secret, "img")}" hx-swap-oob="true"')
    assert '<td class="num">1</td>' in row
    # bob's stream has the catalog image's change (committed after alice's) and nothing of hers
    seen = await _read_until(theirs, dom_id("v9", "tag"))
    assert secret not in seen and dom_id(secret, "img") not in seen
    mine.close()
    theirs.close()
