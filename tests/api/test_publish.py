"""The one place the API sends Celery messages (api/publish.py): with the broker down, each
caller's fallback runs — a registration is marked due, a webhook event stays pending, a Docker
Hub lookup is a 503 — the failure is logged once, and sends pause instead of each request
waiting for the broker again."""

from __future__ import annotations

import dataclasses
import time

import asyncpg
import structlog
from aiohttp import test_utils

from api import publish
from api.app import create_app
from core.settings import Settings
from tests.api.helpers import json_error, ok_json
from tests.conftest import MakeUser, unique
from tests.support.resolver import stub_resolver
from tests.support.services import free_port
from tests.webhooks.conftest import fixture_text

SECRET = "publish-test-secret-0123456789"


async def test_every_send_falls_back_and_pauses_when_the_broker_is_down(
    settings: Settings, pool: asyncpg.Pool, make_user: MakeUser
) -> None:
    dead = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", webhook_secret=SECRET)
    app = create_app(dead)
    stub_resolver(app)
    user = await make_user()
    name = f"registry.example/{unique('pub')}/app"
    with structlog.testing.capture_logs() as logs:
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            started = time.monotonic()
            await ok_json(await client.post("/api/v1/image/", json={"name": name}, headers=user.headers), 201)
            first = time.monotonic() - started
            # within the pause: answered without waiting for the broker
            started = time.monotonic()
            resp = await client.post("/api/v1/webhooks/quay/" + SECRET + "/",
                                     data=fixture_text("quay_repo_push.json", unique("pub")))
            assert resp.status == 202, await resp.text()
            resp = await client.get(f"/api/v1/image/{unique('hubpub')}/app/", headers=user.headers)
            await json_error(resp, 503)
            assert "task queue is unavailable" in (await resp.json())["error"]
            paused = time.monotonic() - started
            assert app[publish.OUTBOX].paused_until > time.monotonic()
    due = await pool.fetchval("SELECT next_sync_at <= now() FROM images WHERE name = $1", name)
    assert due is True  # the scheduler queues it
    failures = [e for e in logs if e["event"] == "queue.send_failed"]
    assert len(failures) == 1 and failures[0]["task"] == "sync_image"
    assert paused < first and paused < publish.SEND_TIMEOUT_SECONDS
