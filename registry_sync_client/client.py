"""The asynchronous client of the Tutum v1 Images API (registry-sync's HTTP contract).

    async with AsyncClient("http://127.0.0.1:8000", user="demo", apikey=key) as api:
        async for image in api.images(is_user_image=True):
            print(image.name, image.state)

It speaks HTTP only (aiohttp): it never imports the service's own packages. Lists are
walked by following `meta.next`; every error status becomes a typed exception
(registry_sync_client.errors); the events stream is `events()`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp

from registry_sync_client import config
from registry_sync_client.errors import ProtocolError, error_for, unreachable
from registry_sync_client.models import API_PREFIX, Image, Layer, Page, Registry, SyncStatus, Tag
from registry_sync_client.notify_models import Delivery, HistoryEntry, Subscription
from registry_sync_client.stream import EventStream, StatusCallback, Transport

__version__ = "0.1.0"
USER_AGENT = f"registry-sync-client/{__version__}"

T = TypeVar("T")
Params = list[tuple[str, str]]


def api_root(url: str) -> str:
    """`http://host:8000` or `http://host:8000/api/v1` → `http://host:8000/api/v1/`."""
    url = url.rstrip("/")
    return f"{url}/" if url.endswith(API_PREFIX.rstrip("/")) else f"{url}{API_PREFIX}"


def quote_name(name: str) -> str:
    """An image name as a path: `/` and the `:`/`[]` of a registry host stay as they are."""
    return quote(name, safe="/:[]@")


def parse_reference(ref: str, default_tag: str = "latest") -> tuple[str, str]:
    """`NAME[:TAG]` → (name, tag). A `:` before the last `/` belongs to a registry host
    (`127.0.0.1:5000/team/app` is the name, tag `latest`)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not name:
        return ref, default_tag
    return name, tag


def image_filters(*, name: str | None = None, jumpstart: bool | None = None,
                  is_private_image: bool | None = None, is_user_image: bool | None = None,
                  registry: str | None = None, category: str | None = None) -> Params:
    """Query parameters of the image list. `registry` is a host or a registry resource URI."""
    params: Params = []
    if name is not None:
        params.append(("name", name))
    for key, flag in (("jumpstart", jumpstart), ("is_private_image", is_private_image),
                      ("is_user_image", is_user_image)):
        if flag is not None:
            params.append((key, "true" if flag else "false"))
    if registry is not None:
        uri = registry if registry.startswith(API_PREFIX) else f"{API_PREFIX}registry/{registry.strip('/')}/"
        params.append(("registry", uri))
    if category is not None:
        params.append(("categories__name", category))
    return params


class AsyncClient:
    """A session with one service and one set of credentials.

    Give `user` and `apikey` (sent as HTTP Basic, as the Tutum SDK did) or a whole
    `authorization` header; `AsyncClient.from_env()` reads them like the `tutum` CLI does.
    `timeout` bounds every request (not the events stream). Close it (`await close()` or
    `async with`) to release its connections; a `session` you pass stays yours to close.
    """

    def __init__(self, base_url: str = config.DEFAULT_REST_HOST, *, user: str | None = None,
                 apikey: str | None = None, authorization: str | None = None, timeout: float = 30.0,
                 page_size: int | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.root = api_root(base_url)
        if authorization is None and user and apikey:
            authorization = config.basic(user, apikey)
        self._authorization = authorization
        self.user = user
        self.timeout = timeout
        self.page_size = page_size
        self._session = session
        self._owns_session = session is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, config_file: str = config.CONFIG_FILE,
                 **kwargs: Any) -> Self:
        """Credentials and URL from TUTUM_* variables and ~/.tutum (see registry_sync_client.config)."""
        return cls(**config.client_arguments(env, config_file), **kwargs)

    def __repr__(self) -> str:
        return f"AsyncClient({self.root!r}, user={self.user!r})"

    # ------------------------------------------------------------------ plumbing

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session, opened on first use (inside the running event loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._owns_session = True
        return self._session

    def url(self, path: str) -> str:
        """A path under the API root; `/api/v1/…` paths (the service's `next` links and
        resource URIs) and absolute URLs are accepted as they are."""
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith(API_PREFIX):
            path = path.removeprefix(API_PREFIX)
        return self.root + path.lstrip("/")

    async def request(self, method: str, path: str, *, params: Params | None = None,
                      body: Mapping[str, Any] | None = None, subject: str | None = None,
                      name: str | None = None) -> Any:
        """One request; the decoded JSON answer (None for 204).

        Raises an ApiError subclass for an error status (a 404 names `subject` `name`),
        UnreachableError when no answer came, ProtocolError when the answer is not JSON.
        """
        url = self.url(path)
        headers = self.headers
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            async with self.session().request(method, url, params=params, data=data, headers=headers) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(url, exc, self.timeout) from None
        decoded = _decode(raw)
        if status >= 400:
            raise error_for(status, decoded, url=url, method=method, subject=subject, name=name,
                            retry_after=retry_after)
        if status == 204 or not raw:
            return None
        if decoded is _NOT_JSON:
            raise ProtocolError(f"{method} {url} answered {status} with a body that is not JSON")
        return decoded

    async def _pages(self, path: str, params: Params, model: Callable[[dict[str, Any]], T],
                     subject: str | None = None, name: str | None = None) -> AsyncIterator[Page[T]]:
        """Every page of a list, by following `meta.next` until it is null."""
        url: str | None = path
        if self.page_size:
            params = [*params, ("limit", str(self.page_size))]
        query: Params | None = params
        seen: set[str] = set()
        while url is not None:
            body = await self.request("GET", url, params=query, subject=subject, name=name)
            page = _page(body, model, url)
            yield page
            if page.next is not None and page.next in seen:
                raise ProtocolError(f"the list at {url} links back to a page already read: {page.next}")
            url, query = page.next, None  # `next` keeps the filters and the limit
            if url is not None:
                seen.add(url)

    async def _walk(self, path: str, params: Params, model: Callable[[dict[str, Any]], T],
                    subject: str | None = None, name: str | None = None) -> AsyncIterator[T]:
        async for page in self._pages(path, params, model, subject, name):
            for obj in page.objects:
                yield obj

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ the API

    async def whoami(self) -> dict[str, Any]:
        """`GET /api/v1/auth/`: the caller (raises AuthError when the credentials are wrong)."""
        result: dict[str, Any] = await self.request("GET", "auth/")
        return result

    def images(self, **filters: Any) -> AsyncIterator[Image]:
        """Every image the caller sees, in name order, page after page. Filters: `name`,
        `jumpstart`, `is_private_image`, `is_user_image`, `registry`, `category`."""
        return self._walk("image/", image_filters(**filters), Image.from_json)

    async def list_images(self, **filters: Any) -> list[Image]:
        return [i async for i in self.images(**filters)]

    async def images_page(self, *, limit: int | None = None, offset: int | None = None,
                          **filters: Any) -> Page[Image]:
        """One page of the image list (`meta.next` is the next page's path, or None)."""
        params = image_filters(**filters)
        params += [(k, str(v)) for k, v in (("limit", limit), ("offset", offset)) if v is not None]
        body = await self.request("GET", "image/", params=params)
        return _page(body, Image.from_json, "image/")

    async def get_image(self, name: str) -> Image:
        body = await self.request("GET", f"image/{quote_name(name)}/", subject="image", name=name)
        return Image.from_json(_object(body))

    async def register_image(self, name: str, *, username: str | None = None, password: str | None = None,
                             description: str | None = None) -> Image:
        """`POST /api/v1/image/`: the new image, `Empty` until its first sync."""
        body = _without_none({"name": name, "username": username, "password": password,
                              "description": description})
        created = await self.request("POST", "image/", body=body, subject="image", name=name)
        return Image.from_json(_object(created))

    async def update_image(self, name: str, *, username: str | None = None, password: str | None = None,
                           description: str | None = None) -> Image:
        """`PATCH`: changes only the fields given (new credentials queue a sync)."""
        body = _without_none({"username": username, "password": password, "description": description})
        updated = await self.request("PATCH", f"image/{quote_name(name)}/", body=body, subject="image", name=name)
        return Image.from_json(_object(updated))

    async def delete_image(self, name: str) -> None:
        await self.request("DELETE", f"image/{quote_name(name)}/", subject="image", name=name)

    def tags(self, name: str) -> AsyncIterator[Tag]:
        return self._walk(f"image/{quote_name(name)}/tag/", [], Tag.from_json, "image", name)

    async def list_tags(self, name: str) -> list[Tag]:
        return [t async for t in self.tags(name)]

    async def get_tag(self, name: str, tag: str) -> Tag:
        path = f"image/{quote_name(name)}/tag/{quote(tag, safe='')}/"
        body = await self.request("GET", path, subject="image tag", name=f"{name}:{tag}")
        return Tag.from_json(_object(body))

    async def build_tag(self, name: str, tag: str) -> Tag:
        """`POST …/tag/<tag>/build/`: re-sync the tag at the highest priority."""
        path = f"image/{quote_name(name)}/tag/{quote(tag, safe='')}/build/"
        body = await self.request("POST", path, subject="image tag", name=f"{name}:{tag}")
        return Tag.from_json(_object(body))

    async def sync_status(self, name: str) -> SyncStatus:
        """`GET …/sync/`: the last sync, its error and the next run."""
        body = await self.request("GET", f"image/{quote_name(name)}/sync/", subject="image", name=name)
        return SyncStatus.from_json(_object(body))

    def tag_history(self, name: str, tag: str) -> AsyncIterator[HistoryEntry]:
        """Every digest the tag pointed at, newest first (also of a tag that is gone)."""
        path = f"image/{quote_name(name)}/tag/{quote(tag, safe='')}/history/"
        return self._walk(path, [], HistoryEntry.from_json, "image tag", f"{name}:{tag}")

    def subscriptions(self) -> AsyncIterator[Subscription]:
        return self._walk("subscription/", [], Subscription.from_json)

    async def create_subscription(self, url: str, events: list[str], *, image: str | None = None,
                                  tag_pattern: str | None = None) -> Subscription:
        """`POST /api/v1/subscription/`: the new subscription with its secret (shown only now)."""
        body = _without_none({"url": url, "events": events, "image": image, "tag_pattern": tag_pattern})
        return Subscription.from_json(_object(await self.request("POST", "subscription/", body=body)))

    async def update_subscription(self, subscription_id: int, **fields: Any) -> Subscription:
        """`PATCH`: url, events, image, tag_pattern (None clears these two), enabled."""
        body = await self.request("PATCH", f"subscription/{int(subscription_id)}/", body=fields,
                                  subject="subscription", name=str(subscription_id))
        return Subscription.from_json(_object(body))

    async def delete_subscription(self, subscription_id: int) -> None:
        await self.request("DELETE", f"subscription/{int(subscription_id)}/", subject="subscription",
                           name=str(subscription_id))

    async def rotate_subscription_secret(self, subscription_id: int) -> Subscription:
        body = await self.request("POST", f"subscription/{int(subscription_id)}/rotate/", subject="subscription",
                                  name=str(subscription_id))
        return Subscription.from_json(_object(body))

    def deliveries(self, subscription_id: int) -> AsyncIterator[Delivery]:
        """The subscription's delivery log, newest first, each with its attempts."""
        return self._walk(f"subscription/{int(subscription_id)}/delivery/", [], Delivery.from_json,
                          "subscription", str(subscription_id))

    async def redeliver(self, subscription_id: int, delivery_id: int) -> Delivery:
        path = f"subscription/{int(subscription_id)}/delivery/{int(delivery_id)}/redeliver/"
        body = await self.request("POST", path, subject="delivery", name=str(delivery_id))
        return Delivery.from_json(_object(body))

    async def sync_now(self, name: str) -> SyncStatus:
        """`POST …/sync/`: re-sync the image at the highest priority (no tag named); the status
        as it was when the sync was requested."""
        body = await self.request("POST", f"image/{quote_name(name)}/sync/", subject="image", name=name)
        return SyncStatus.from_json(_object(body))

    def registries(self) -> AsyncIterator[Registry]:
        return self._walk("registry/", [], Registry.from_json)

    async def get_registry(self, host: str) -> Registry:
        body = await self.request("GET", f"registry/{quote(host, safe=':[]')}/", subject="registry", name=host)
        return Registry.from_json(_object(body))

    async def get_layer(self, docker_id: str) -> Layer:
        body = await self.request("GET", f"layer/{quote(docker_id, safe='')}/", subject="layer", name=docker_id)
        return Layer.from_json(_object(body))

    def events(self, *, transport: Transport = "websocket", reconnect: bool = True, backoff: float = 0.5,
               max_backoff: float = 10.0, heartbeat: float = 25.0,
               on_status: StatusCallback | None = None) -> EventStream:
        """The live events stream as an async iterator of `Event`s (see stream.EventStream):
        it reconnects on its own after a drop, with a doubling delay from `backoff` up to
        `max_backoff`; `on_status(state, detail)` hears "connected" and "reconnecting"."""
        return EventStream(self, transport=transport, reconnect=reconnect, backoff=backoff,
                           max_backoff=max_backoff, heartbeat=heartbeat, on_status=on_status)


# ---------------------------------------------------------------------- helpers

_NOT_JSON = object()


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _page(body: Any, model: Callable[[dict[str, Any]], T], url: str) -> Page[T]:
    body = _object(body)
    meta, objects = body.get("meta"), body.get("objects")
    if not isinstance(meta, dict) or not isinstance(objects, list):
        raise ProtocolError(f"the list at {url} has no meta/objects envelope")
    nxt, prev = meta.get("next"), meta.get("previous")
    return Page(
        objects=[model(o) for o in objects if isinstance(o, dict)],
        total_count=int(meta.get("total_count") or 0), limit=int(meta.get("limit") or 0),
        offset=int(meta.get("offset") or 0), next=nxt if isinstance(nxt, str) and nxt else None,
        previous=prev if isinstance(prev, str) and prev else None,
    )
