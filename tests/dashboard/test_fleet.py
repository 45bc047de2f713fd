"""The fleet page (admins) reads what the fleet keeps: a real worker Budget's slots, pulls and
pause in Redis, a failing image's error and a worker's sync lease in Postgres, and the
queue depths the metrics read."""

from __future__ import annotations

import uuid

import asyncpg
import redis

from core.queue import PRIORITY_QUEUE, queue_keys
from core.settings import Settings
from tests.conftest import MakeUser, insert_image, unique
from tests.dashboard.conftest import NewBrowser
from worker.registry.budget import Budget
from worker.registry.limits import HostLimits, LimitTable


async def test_admins_see_queues_budgets_pauses_failures_and_workers(
    new_browser: NewBrowser, make_user: MakeUser, pool: asyncpg.Pool, settings: Settings
) -> None:
    admin = await make_user(is_admin=True)
    b = new_browser()
    assert (await b.sign_in(admin)).status == 303
    busy = f"{unique('busy')}-{uuid.uuid4().hex[:6]}.example.com"
    paused = f"{unique('paused')}-{uuid.uuid4().hex[:6]}.example.com"
    for host in (busy, paused):
        await insert_image(pool, name=f"{host}/team/app")
    budget = Budget(LimitTable({busy: HostLimits(concurrency=4, pulls=50)}, HostLimits()), settings.redis_url,
                    wait_max=1.0, hold_seconds=30.0)
    failing = f"{busy}/team/app"
    try:
        permit = await budget.acquire(busy, pull=True)
        await budget.pause(paused, 120, "429 from the registry")
        await pool.execute("UPDATE images SET sync_error = 'registry answered 503', sync_error_at = now(),"
                           " sync_failures = 4 WHERE name = $1", failing)
        process = f"worker@{unique('host')}:4242"
        await pool.execute("UPDATE images SET lease_owner = $2, lease_until = now() + interval '1 minute'"
                           " WHERE name = $1", f"{paused}/team/app", f"run:{process}:0123456789ab")
        queue = redis.Redis.from_url(settings.redis_url)
        before = sum(queue.llen(key) for key in queue_keys(PRIORITY_QUEUE))  # every lane
        queue.rpush(PRIORITY_QUEUE, b"{}", b"{}")
        try:
            html = await b.page("/ui/fleet/")
        finally:
            queue.rpop(PRIORITY_QUEUE, 2)
        await permit.release()
    finally:
        await budget.aclose()
    assert f'id="queue-{PRIORITY_QUEUE}">{before + 2} waiting' in html
    row = html[html.index(f"<th scope=\"row\">{busy}</th>"):]
    assert row.split("</tr>")[0].count('class="num">1<') == 1 and "of 50" in row.split("</tr>")[0]
    paused_row = html[html.index(f"<th scope=\"row\">{paused}</th>"):].split("</tr>")[0]
    assert "paused 1" in paused_row  # 120 s less the moments since
    assert failing in html and "registry answered 503" in html
    assert f"<code>{process}</code>" in html


async def test_the_fleet_page_is_for_admins_only(new_browser: NewBrowser, make_user: MakeUser) -> None:
    b = new_browser()
    assert (await b.sign_in(await make_user())).status == 303
    resp = await b.get("/ui/fleet/")
    assert resp.status == 404
    assert 'href="/ui/fleet/"' not in await b.page("/ui/")
