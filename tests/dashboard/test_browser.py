"""The dashboard in a real browser: Debian's chromium driven by playwright, against a real
`registry-sync web` and `registry-sync worker`, and the real `docker-registry` notifying the
web process of every push.

One browser for the module; the tests run in order and share the stack: sign in (Enter
submits), register, a pushed tag appearing live on the image page and in the images page's
row, another account seeing none of it, a form POST without its CSRF token refused, edit,
delete, sign out — and every request any page made went to 127.0.0.1.

The image page's screenshot in the README comes from here:
`RS_SCREENSHOT=docs/img/dashboard-image.png .venv/bin/pytest tests/dashboard/test_browser.py`.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from core.accounts import create_account
from dashboard.format import dom_id
from tests.conftest import create_database, unique
from tests.support.processes import Stack, service_env, wait_for
from tests.support.registry import RegistryServer, push_image
from tests.support.services import CHROMIUM_BINARY, free_port, redis_db, worker_index

SECRET = "ui-browser-webhook-secret"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LIVE_TIMEOUT_MS = 10_000  # a functional bound; the time a push takes to show is measured in bench/


@dataclass
class World:
    stack: Stack
    registry: RegistryServer
    keys: dict[str, str]
    base: str
    requests: list[str] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(postgres_dsn: str, redis_server_url: str) -> Iterator[World]:
    dsn = asyncio.run(create_database(postgres_dsn, f"rs_ui_browser_{worker_index()}"))
    redis_url = f"{redis_server_url}/{redis_db('spare')}"
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    hook = {"url": f"http://127.0.0.1:{port}/api/v1/webhooks/registry/",
            "headers": {"Authorization": f"Bearer {SECRET}"}, "backoff": "200ms"}
    with RegistryServer(notifications=[hook]) as reg:
        # the registry's notifications reach the operator's receiver, its secret bound to the
        # registry's host (docs/webhooks.md)
        env = service_env(dsn, redis_url, port, WEBHOOK_SECRETS=f"registry@{reg.host}={SECRET}",
                          INSECURE_REGISTRIES=reg.host, SYNC_INTERVAL_SECONDS="3600")
        stack = Stack(env, port)

        async def accounts() -> dict[str, str]:
            conn = await asyncpg.connect(dsn)
            try:
                return {name: (await create_account(conn, name))[1] for name in ("alice", "bob")}
            finally:
                await conn.close()

        keys = asyncio.run(accounts())
        stack.start("web")
        worker = stack.start("worker", "--queues", "priority")
        try:
            wait_for(lambda: stack.up(), 30, "the API to answer")
            wait_for(lambda: "ready" in worker.output(), 60, "the worker")
            yield World(stack, reg, keys, f"http://127.0.0.1:{port}")
        finally:
            stack.stop_all()


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    pw: Playwright = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM_BINARY, args=CHROMIUM_ARGS)
    yield browser
    await browser.close()
    await pw.stop()


@pytest.fixture(scope="module")
async def contexts(chromium: Browser, world: World) -> AsyncIterator[dict[str, BrowserContext]]:
    """One browser context (its own cookies) per person; every request they make is recorded."""
    made = {}
    for person in ("alice", "bob"):
        ctx = await chromium.new_context(base_url=world.base, viewport={"width": 1100, "height": 900})
        ctx.on("request", lambda r: world.requests.append(r.url))
        made[person] = ctx
    yield made
    for ctx in made.values():
        await ctx.close()


async def sign_in(ctx: BrowserContext, world: World, person: str) -> Page:
    page = await ctx.new_page()
    await page.goto("/ui/")
    assert "/ui/signin" in page.url
    await page.get_by_label("User name").fill(person)
    await page.get_by_label("API key").fill(world.keys[person])
    await page.get_by_label("API key").press("Enter")  # Enter submits
    await page.wait_for_url(f"{world.base}/ui/")
    return page


async def sql(world: World, query: str, *args: object) -> object:
    """The first column of the first row of `query` on the stack's database."""
    conn = await asyncpg.connect(world.stack.env["DATABASE_URL"])
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def eventually(world: World, query: str, *args: object) -> None:
    """Poll `query` until it is true (20 s at most): a worker process changes the database."""
    for _ in range(400):
        if await sql(world, query, *args):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {query}")


async def live(page: Page) -> None:
    await page.wait_for_selector('#live-status[data-live="open"]', timeout=LIVE_TIMEOUT_MS)


async def test_sign_in_and_register_the_first_image(world: World, contexts: dict[str, BrowserContext]) -> None:
    repo = f"{unique('ui')}/app"
    push_image(world.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z",
                                                "config": {"Env": ["MODE=prod"], "ExposedPorts": {"80/tcp": {}}}})
    page = await sign_in(contexts["alice"], world, "alice")
    assert await page.locator("#first-image").is_visible()  # the empty state of a new account
    name = f"{world.registry.host}/{repo}"
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Description").fill("the browser's image")
    await page.get_by_role("button", name="Register").click()
    await page.wait_for_url(f"**/ui/image/{name}/?done=registered")
    await live(page)
    # the first sync's tag arrives live on the page that is open
    await page.wait_for_selector(f"#{dom_id('v1', 'tag')}", timeout=LIVE_TIMEOUT_MS)
    assert "MODE" in await page.locator(f"#{dom_id('v1', 'tag')}").inner_text()
    world.state["name"], world.state["repo"] = name, repo
    await eventually(world, "SELECT access_proven FROM images WHERE name = $1", name)  # the first sync did


async def test_a_pushed_tag_appears_live_on_both_pages_and_nowhere_else(
    world: World, contexts: dict[str, BrowserContext]
) -> None:
    name, repo = world.state["name"], world.state["repo"]
    alice = contexts["alice"]
    image_page = await alice.new_page()
    await image_page.goto(f"/ui/image/{name}/")
    images_page = await alice.new_page()
    await images_page.goto("/ui/")
    row = images_page.locator(f"#{dom_id(name, 'img')}")
    assert await row.locator("td.num").inner_text() == "1"
    bob = await sign_in(contexts["bob"], world, "bob")
    await bob.goto("/ui/?scope=all")
    for page in (image_page, images_page, bob):
        await live(page)

    push_image(world.registry.url, repo, "v2", {"created": "2024-02-01T00:00:00Z"})
    pushed = time.monotonic()
    await image_page.wait_for_selector(f"#{dom_id('v2', 'tag')}", timeout=LIVE_TIMEOUT_MS)
    shown_after = time.monotonic() - pushed
    await images_page.wait_for_function(
        f"(document.querySelector('#{dom_id(name, 'img')} td.num') || {{}}).textContent === '2'",
        timeout=LIVE_TIMEOUT_MS)
    print(f"push to row: {shown_after * 1000:.0f} ms")
    # bob's page heard the same moment and shows none of it; alice's image is not his to open
    await bob.wait_for_timeout(300)
    assert name not in await bob.content()
    resp = await bob.goto(f"/ui/image/{name}/")
    assert resp is not None and resp.status == 404  # the same answer as for a name nobody has
    assert "the browser&#39;s image" not in await bob.content() and "v2" not in await bob.content()
    for page in (image_page, images_page):
        await page.close()


async def test_a_form_post_without_its_csrf_token_is_refused(world: World, contexts: dict[str, BrowserContext]) -> None:
    name = f"{world.registry.host}/{unique('forged')}/app"
    resp = await contexts["alice"].request.post("/ui/", form={"name": name}, max_redirects=0)
    assert resp.status == 403
    assert await sql(world, "SELECT count(*) FROM images WHERE name = $1", name) == 0


async def test_edit_then_delete_with_a_confirmation(world: World, contexts: dict[str, BrowserContext]) -> None:
    name = world.state["name"]
    page = await contexts["alice"].new_page()
    await page.goto(f"/ui/image/{name}/")
    await live(page)
    if path := os.environ.get("RS_SCREENSHOT"):
        await page.screenshot(path=path, full_page=True)
    else:
        await page.screenshot(path=str(Path(tempfile.gettempdir()) / "rs-dashboard-image.png"), full_page=True)
    await page.get_by_label("Description").fill("described in the browser")
    await page.get_by_role("button", name="Save").click()
    await page.wait_for_url("**?done=edit")
    assert "described in the browser" in await page.locator(".description").inner_text()
    await page.get_by_role("button", name="Delete…").click()
    await page.wait_for_url("**?confirm=delete")
    assert await sql(world, "SELECT count(*) FROM images WHERE name = $1", name) == 1  # asked first
    await page.get_by_role("button", name="Yes, delete it").click()
    await page.wait_for_url(re.compile(r"/ui/\?done=deleted"))
    assert "The image was deleted" in await page.content()
    assert await sql(world, "SELECT count(*) FROM images WHERE name = $1", name) == 0


async def test_sign_out_then_no_page_opens(world: World, contexts: dict[str, BrowserContext]) -> None:
    page = await contexts["alice"].new_page()
    await page.goto("/ui/")
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/ui/signin")
    await page.goto("/ui/")
    assert "/ui/signin" in page.url


def test_every_request_of_every_page_stayed_on_127_0_0_1(world: World) -> None:
    assert world.requests, "no request was recorded"
    hosts = {urlsplit(u).hostname for u in world.requests}
    assert hosts == {"127.0.0.1"}, hosts
    assert any("/ui/static/htmx-2.0.11.min.js" in u for u in world.requests)
