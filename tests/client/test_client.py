"""registry_sync_client against a running `registry-sync web` (one process for the module):
paging by `meta.next`, typed results and errors, the events stream over WebSocket and SSE,
its reconnection after the service restarts, and the blocking client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from registry_sync_client import (
    AsyncClient,
    AuthError,
    BadRequestError,
    Client,
    ConflictError,
    Event,
    ForbiddenError,
    Image,
    NotFoundError,
    ServerError,
    SyncStatus,
    ThrottledError,
    UnavailableError,
    UnreachableError,
)
from tests.client.conftest import ClientStack, client_stack, new_account
from tests.conftest import unique
from tests.support import ThreadedApp
from tests.support.services import free_port


@pytest.fixture(scope="module")
def svc(postgres_dsn: str, redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    with client_stack(postgres_dsn, redis_server_url, "rs_client", tmp_path_factory.mktemp("home"),
                      workers=False) as st:
        yield st


@pytest.fixture
async def api(svc: ClientStack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(svc.url, user=svc.user, apikey=svc.key, timeout=10) as client:
        yield client


async def test_lists_are_walked_by_following_next(svc: ClientStack) -> None:
    user = unique("pager")  # an account of its own: exactly these five images are its
    key = await asyncio.to_thread(new_account, svc.stack.env["DATABASE_URL"], user)
    names = sorted(svc.name(f"paging/app{i}") for i in range(5))
    async with AsyncClient(svc.url, user=user, apikey=key) as api:
        for name in names:
            await api.register_image(name)
        first = await api.images_page(limit=2, is_user_image=True)
    assert [i.name for i in first.objects] == names[:2]
    assert first.total_count == 5 and first.next is not None and first.previous is None

    paths: list[str] = []
    async with AsyncClient(svc.url, user=user, apikey=key, page_size=2) as small:
        request = small.request

        async def counted(method: str, path: str, **kw: Any) -> Any:
            paths.append(path)
            return await request(method, path, **kw)

        small.request = counted  # type: ignore[method-assign]
        walked = [i async for i in small.images(is_user_image=True)]
    assert [i.name for i in walked] == names
    assert paths[0] == "image/" and len(paths) == 3
    # the later pages are the service's `next` links (which keep the filter and the limit)
    assert all(p.startswith("/api/v1/image/?") and "is_user_image=true" in p and "limit=2" in p for p in paths[1:])


def test_the_blocking_client_pages_and_raises_the_same(svc: ClientStack) -> None:
    with Client(svc.url, user=svc.user, apikey=svc.key, page_size=2) as client:
        names = sorted(svc.name(f"blocking/app{i}") for i in range(3))
        for name in names:
            assert client.register_image(name).name == name
        assert [i.name for i in client.images(name=names[0])] == names[:1]
        walked = [i.name for i in client.images(is_user_image=True) if "/blocking/" in i.name]
        assert walked == names  # across pages of 2, whatever else this account has
        assert client.whoami()["username"] == svc.user
        with pytest.raises(NotFoundError, match="not found"):
            client.get_image(svc.name("blocking/none"))


async def test_results_are_typed(svc: ClientStack, api: AsyncClient) -> None:
    name = svc.name("typed/app")
    image = await api.register_image(name, username="u", password="p", description="first")
    assert isinstance(image, Image)
    assert (image.name, image.state, image.description, image.is_private_image) == (name, "Empty", "first", True)
    assert image.registry == svc.registry.host and image.tags == () and image.last_build_date is None
    assert "password" not in image.raw

    updated = await api.update_image(name, description="second")
    assert updated.description == "second" and (await api.get_image(name)).description == "second"
    assert await api.list_tags(name) == []
    status = await api.sync_status(name)
    assert isinstance(status, SyncStatus) and status.image == name
    assert isinstance(status.next_sync_at, datetime) and status.next_sync_at.tzinfo is not None
    assert (await api.get_registry(svc.registry.host)).host == svc.registry.host
    assert svc.registry.host in [r.host async for r in api.registries()]

    await api.delete_image(name)
    with pytest.raises(NotFoundError) as caught:
        await api.get_image(name)
    assert str(caught.value) == f"image '{name}' not found" and caught.value.status == 404


async def test_each_error_has_its_class_and_a_sentence(svc: ClientStack, api: AsyncClient) -> None:
    async with AsyncClient(svc.url, user=svc.user, apikey="wrong") as wrong:
        with pytest.raises(AuthError, match="check TUTUM_USER/TUTUM_APIKEY"):
            await wrong.whoami()

    name = svc.name("errors/app")
    await api.register_image(name)
    with pytest.raises(ConflictError, match="already registered"):
        await api.register_image(name)
    with pytest.raises(BadRequestError) as bad:
        await api.register_image("Not A Name")
    assert bad.value.field == "name" and "invalid image name" in str(bad.value)
    with pytest.raises(NotFoundError, match=r"image tag '.*errors/app:nope'|has no tag 'nope'"):
        await api.get_tag(name, "nope")

    catalog = svc.name("errors/catalog")
    await asyncio.to_thread(
        svc.stack.sql, "INSERT INTO images (name, registry_id, repository) SELECT $1, id, 'errors/catalog'"
        " FROM registries WHERE host = $2", catalog, svc.registry.host)
    with pytest.raises(ForbiddenError, match="read-only"):
        await api.update_image(catalog, description="mine now")

    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url) as nowhere:
        with pytest.raises(UnreachableError) as refused:
            await nowhere.get_image("team/app")
    assert refused.value.url == f"{url}/api/v1/image/team/app/"
    assert str(refused.value) == (
        f"cannot reach {url}/api/v1/image/team/app/: connection refused (is the service running there?)")


def _stub() -> web.Application:
    """Answers the service cannot be made to give on demand here."""
    async def busy(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        if status == 502:
            return web.Response(status=502, text="<html>bad gateway</html>")
        return web.json_response({"error": "slow down" if status == 429 else "the database is unreachable"},
                                 status=status, headers={"Retry-After": "3"})

    app = web.Application()
    app.router.add_get("/api/v1/image/{status}/", busy)
    return app


async def test_throttling_unavailability_and_gateways_are_typed_too() -> None:
    stub = ThreadedApp(_stub).start()
    try:
        async with AsyncClient(stub.url) as api:
            with pytest.raises(ThrottledError) as throttled:
                await api.get_image("429")
            with pytest.raises(UnavailableError) as unavailable:
                await api.get_image("503")
            with pytest.raises(ServerError, match="answered 502"):
                await api.get_image("502")
    finally:
        stub.stop()
    assert throttled.value.retry_after == 3.0 and str(throttled.value) == "slow down (retry after 3 s)"
    assert str(unavailable.value) == "the database is unreachable (retry after 3 s)"


async def _next_about(events: asyncio.Queue[Event], name: str, within: float = 10.0) -> Event:
    async with asyncio.timeout(within):
        while True:
            event = await events.get()
            if event.image == name:
                return event


async def test_the_stream_yields_changes_and_reconnects_after_a_restart(svc: ClientStack, api: AsyncClient) -> None:
    statuses: list[str] = []
    connected = asyncio.Event()
    received: asyncio.Queue[Event] = asyncio.Queue()

    def on_status(state: str, _: str) -> None:
        statuses.append(state)
        if state == "connected":
            connected.set()

    stream = api.events(backoff=0.1, max_backoff=0.5, on_status=on_status)

    async def follow() -> None:
        async for event in stream:
            received.put_nowait(event)

    reader = asyncio.create_task(follow())
    try:
        async with asyncio.timeout(10):
            await connected.wait()
        first = svc.name("stream/one")
        await api.register_image(first)
        event = await _next_about(received, first)
        assert (event.type, event.action, event.state, event.tag) == ("image", "create", "Empty", None)
        assert event.resource_uri == f"/api/v1/image/{first}/" and event.datetime is not None

        connected.clear()
        await asyncio.to_thread(svc.restart_web)
        async with asyncio.timeout(30):
            await connected.wait()
        assert "reconnecting" in statuses and stream.connects == 2
        second = svc.name("stream/two")
        await api.register_image(second)
        assert (await _next_about(received, second)).action == "create"
    finally:
        await stream.aclose()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def test_the_blocking_client_reads_the_stream_over_sse(svc: ClientStack) -> None:
    name = svc.name("stream/sse")

    def register(state: str, _: str) -> None:
        if state == "connected":  # the subscription exists: now make a change
            threading.Thread(target=svc.stack.http, args=("POST", "/api/v1/image/"),
                             kwargs={"user": svc.user, "key": svc.key, "body": {"name": name}}).start()

    with Client(svc.url, user=svc.user, apikey=svc.key) as client:
        events = client.events(transport="sse", on_status=register)
        try:
            event = next(e for e in events if e.image == name)
        finally:
            events.close()
    assert (event.type, event.action) == ("image", "create")


def test_a_wrong_key_ends_the_stream_at_once(svc: ClientStack) -> None:
    with Client(svc.url, user=svc.user, apikey="wrong") as client, pytest.raises(AuthError):
        next(iter(client.events(backoff=0.1)))
