"""The worker side of inspect-on-GET against the failure-injection fake registry playing
Docker Hub: an auth error is "missing" (Docker Hub answers an anonymous request for a
repository that does not exist with 401 insufficient_scope), a hub that fails is "failed";
neither creates an image, and both are recorded for the waiting API."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from core.settings import Settings
from tests.conftest import unique
from tests.support.fake_registry import FakeRegistry
from worker import hub_lookup
from worker.runtime import Runtime


@pytest.fixture(scope="module")
def fake_hub_registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry(auth="bearer", users={"bob": "builder"}).start()
    yield fake
    fake.stop()


@pytest.fixture
async def hub_runtime(settings: Settings, fake_hub_registry: FakeRegistry) -> AsyncIterator[Runtime]:
    s = dataclasses.replace(
        settings, docker_hub_registry_url=f"http://{fake_hub_registry.host}",
        docker_hub_api_url="http://127.0.0.1:9", registry_timeout_seconds=1.0, inspect_timeout_seconds=3.0,
    )
    rt = await Runtime(s, name="test", backoff_base=0.01, max_retry_wait=0.1, max_attempts=2).open()
    yield rt
    await rt.aclose()


async def _recorded(pool: asyncpg.Pool, name: str) -> tuple[str, int]:
    outcome = await pool.fetchval("SELECT outcome FROM hub_inspections WHERE name = $1", name)
    images = await pool.fetchval("SELECT count(*) FROM images WHERE name = $1", name)
    return outcome, images


async def test_an_auth_error_from_the_hub_means_missing(hub_runtime: Runtime, pool: asyncpg.Pool) -> None:
    name = f"expired/{unique('x')}"
    assert await hub_lookup.inspect_hub_image(hub_runtime, name) == (hub_lookup.MISSING, None)
    assert await _recorded(pool, name) == ("missing", 0)


async def test_a_failing_hub_is_failed_not_missing(hub_runtime: Runtime, pool: asyncpg.Pool) -> None:
    name = f"down/{unique('x')}"
    assert await hub_lookup.inspect_hub_image(hub_runtime, name) == (hub_lookup.FAILED, None)
    outcome, images = await _recorded(pool, name)
    assert (outcome, images) == ("failed", 0)


async def test_a_name_that_is_not_on_the_hub_is_missing(hub_runtime: Runtime, pool: asyncpg.Pool) -> None:
    name = f"example.com/{unique('x')}/app"
    assert await hub_lookup.inspect_hub_image(hub_runtime, name) == (hub_lookup.MISSING, None)


async def test_unreachable_hub_metadata_gives_defaults(hub_runtime: Runtime) -> None:
    meta = await hub_lookup.hub_metadata(hub_runtime.session, "http://127.0.0.1:9", "library/x")
    assert meta == hub_lookup.HubMetadata("", 0)


async def test_a_new_catalog_image_starts_with_the_hub_default_tag_policy(
    hub_runtime: Runtime, pool: asyncpg.Pool
) -> None:
    # the fake's ok/* repositories list tags a and b; Docker Hub's tags API does not answer
    # here, so the most recent tag is the greatest in natural order
    rt = hub_runtime
    rt.settings = dataclasses.replace(rt.settings, hub_default_max_tags=1)
    name = f"ok/{unique('x')}"
    outcome, image_id = await hub_lookup.inspect_hub_image(rt, name)
    assert outcome == hub_lookup.FOUND and image_id is not None
    assert [r["name"] for r in await pool.fetch("SELECT name FROM tags WHERE image_id = $1", image_id)] == ["b"]
