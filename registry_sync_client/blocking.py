"""The synchronous client: the same calls as AsyncClient, for code without an event loop.

    with Client.from_env() as api:
        for image in api.images():
            print(image.name, image.state)

Each Client runs its own private event loop (asyncio.Runner) and drives an AsyncClient on
it, so both clients behave exactly alike (one implementation of paging, errors and the
stream). It cannot be used from inside a running event loop: use AsyncClient there. A
Client is not thread-safe; give each thread its own.

Ctrl-C during a call (typically while `events()` waits for the next change) raises
`Interrupted`: a KeyboardInterrupt (`except KeyboardInterrupt` catches it) that, left
uncaught, ends the program quietly with exit status 130 instead of a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from registry_sync_client import config
from registry_sync_client.client import AsyncClient
from registry_sync_client.models import Event, Image, Layer, Page, Registry, SyncStatus, Tag
from registry_sync_client.notify_models import Delivery, HistoryEntry, Subscription
from registry_sync_client.stream import StatusCallback, Transport

T = TypeVar("T")


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Interrupted(KeyboardInterrupt, SystemExit):
    """Ctrl-C during a blocking call. Caught as a KeyboardInterrupt; uncaught, Python treats it
    as SystemExit(130): the program ends with status 130 (as a shell reports Ctrl-C) and
    prints no traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.code = 130


class Client:
    """Blocking client; arguments as AsyncClient's."""

    def __init__(self, base_url: str = config.DEFAULT_REST_HOST, **kwargs: Any) -> None:
        self.aio = AsyncClient(base_url, **kwargs)
        self._runner = asyncio.Runner()
        self._closed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, config_file: str = config.CONFIG_FILE,
                 **kwargs: Any) -> Self:
        return cls(**config.client_arguments(env, config_file), **kwargs)

    def __repr__(self) -> str:
        return f"Client({self.aio.root!r}, user={self.aio.user!r})"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._runner.run(coro)
        except Interrupted:
            raise
        except KeyboardInterrupt:  # the runner cancelled the call; the loop is still usable
            raise Interrupted from None

    def _iterate(self, source: AsyncIterator[T]) -> Generator[T, None, None]:
        """An async iterator walked on this client's loop, one item per step."""
        try:
            while True:
                try:
                    yield self._run(_await(source.__anext__()))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None and not self._closed:
                self._run(_await(aclose()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.aio.close())
        finally:
            self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ the API (see AsyncClient)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._run(self.aio.request(method, path, **kwargs))

    def whoami(self) -> dict[str, Any]:
        return self._run(self.aio.whoami())

    def images(self, **filters: Any) -> Generator[Image, None, None]:
        return self._iterate(self.aio.images(**filters))

    def list_images(self, **filters: Any) -> list[Image]:
        return self._run(self.aio.list_images(**filters))

    def images_page(self, *, limit: int | None = None, offset: int | None = None, **filters: Any) -> Page[Image]:
        return self._run(self.aio.images_page(limit=limit, offset=offset, **filters))

    def get_image(self, name: str) -> Image:
        return self._run(self.aio.get_image(name))

    def register_image(self, name: str, *, username: str | None = None, password: str | None = None,
                       description: str | None = None) -> Image:
        return self._run(self.aio.register_image(name, username=username, password=password,
                                                 description=description))

    def update_image(self, name: str, *, username: str | None = None, password: str | None = None,
                     description: str | None = None) -> Image:
        return self._run(self.aio.update_image(name, username=username, password=password,
                                               description=description))

    def delete_image(self, name: str) -> None:
        self._run(self.aio.delete_image(name))

    def tags(self, name: str) -> Generator[Tag, None, None]:
        return self._iterate(self.aio.tags(name))

    def list_tags(self, name: str) -> list[Tag]:
        return self._run(self.aio.list_tags(name))

    def get_tag(self, name: str, tag: str) -> Tag:
        return self._run(self.aio.get_tag(name, tag))

    def build_tag(self, name: str, tag: str) -> Tag:
        return self._run(self.aio.build_tag(name, tag))

    def sync_status(self, name: str) -> SyncStatus:
        return self._run(self.aio.sync_status(name))

    def tag_history(self, name: str, tag: str) -> Generator[HistoryEntry, None, None]:
        return self._iterate(self.aio.tag_history(name, tag))

    def subscriptions(self) -> Generator[Subscription, None, None]:
        return self._iterate(self.aio.subscriptions())

    def create_subscription(self, url: str, events: list[str], *, image: str | None = None,
                            tag_pattern: str | None = None) -> Subscription:
        return self._run(self.aio.create_subscription(url, events, image=image, tag_pattern=tag_pattern))

    def update_subscription(self, subscription_id: int, **fields: Any) -> Subscription:
        return self._run(self.aio.update_subscription(subscription_id, **fields))

    def delete_subscription(self, subscription_id: int) -> None:
        self._run(self.aio.delete_subscription(subscription_id))

    def rotate_subscription_secret(self, subscription_id: int) -> Subscription:
        return self._run(self.aio.rotate_subscription_secret(subscription_id))

    def deliveries(self, subscription_id: int) -> Generator[Delivery, None, None]:
        return self._iterate(self.aio.deliveries(subscription_id))

    def redeliver(self, subscription_id: int, delivery_id: int) -> Delivery:
        return self._run(self.aio.redeliver(subscription_id, delivery_id))

    def sync_now(self, name: str) -> SyncStatus:
        return self._run(self.aio.sync_now(name))

    def registries(self) -> Generator[Registry, None, None]:
        return self._iterate(self.aio.registries())

    def get_registry(self, host: str) -> Registry:
        return self._run(self.aio.get_registry(host))

    def get_layer(self, docker_id: str) -> Layer:
        return self._run(self.aio.get_layer(docker_id))

    def events(self, *, transport: Transport = "websocket", reconnect: bool = True, backoff: float = 0.5,
               max_backoff: float = 10.0, heartbeat: float = 25.0,
               on_status: StatusCallback | None = None) -> Generator[Event, None, None]:
        """The events stream as a blocking iterator; leaving the loop closes the stream."""
        return self._iterate(self.aio.events(transport=transport, reconnect=reconnect, backoff=backoff,
                                             max_backoff=max_backoff, heartbeat=heartbeat, on_status=on_status))
