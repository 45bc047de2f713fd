"""A loopback stand-in for a Quay host: its `/v2/` is the real registry's (every request is
passed to a RegistryServer and its answer passed back), its `/api/v1/repository/<ns>/<repo>
/build/` is Quay's build API (quay/quay endpoints/api/build.py) answering builds a test
scripts. Quay's build API cannot run here; its format is followed field by field.

    with RegistryServer() as reg, QuayStandIn(reg) as quay:
        quay.script("team/app", [quay_build("b1", "building", ["latest"])])
        # an image named f"{quay.host}/team/app", QUAY_HOSTS=quay.host

A repository made private (`private(repo, token)`) answers the build API as Quay does without
(or with another) application token: 401 with Quay's error body. `redirect(repo, url)` makes
its build API answer a 307 to `url`. `hits` counts build API requests per repository,
`authorization` keeps the last Authorization header each received.
"""

from __future__ import annotations

import collections
import email.utils
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import ThreadedApp
from tests.support.registry import RegistryServer

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                         "content-encoding"})


def quay_build(
    build_id: str | None = None, phase: str = "waiting", tags: list[str] | None = None, *,
    started: datetime | None = None, error: str | None = None, repository: str = "team/app",
) -> dict[str, Any]:
    """A build object as Quay's `build_status_view` writes it."""
    ns, _, name = repository.partition("/")
    when = started or datetime.now(UTC)
    return {
        "id": build_id or str(uuid.uuid4()),
        "phase": phase,
        "started": email.utils.formatdate(when.timestamp()),  # Quay: formatdate(timegm(...))
        "display_name": "5f1b2d3",
        "status": {},
        "subdirectory": "/Dockerfile",
        "dockerfile_path": "/Dockerfile",
        "context": "/",
        "tags": tags if tags is not None else ["latest"],
        "manual_user": None,
        "is_writer": False,
        "trigger": None,
        "trigger_metadata": {"commit": "5f1b2d3", "ref": "refs/heads/main", "default_branch": "main"},
        "resource_key": None,
        "pull_robot": None,
        "repository": {"namespace": ns, "name": name},
        "error": error,
    }


class QuayStandIn:
    def __init__(self, registry: RegistryServer) -> None:
        self.registry = registry
        self.builds: dict[str, list[dict[str, Any]]] = {}  # repository -> builds, newest first
        self.tokens: dict[str, str | None] = {}  # private repository -> the token that reads it
        self.redirects: dict[str, str] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.authorization: dict[str, str | None] = {}
        self._app = ThreadedApp(self._make_app)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._app.port}"

    @property
    def url(self) -> str:
        return self._app.url

    def script(self, repository: str, builds: list[dict[str, Any]]) -> None:
        """What the build API lists for `repository` from now on (newest first)."""
        self.builds[repository] = [dict(b, repository=_repo(repository)) for b in builds]

    def private(self, repository: str, token: str | None) -> None:
        self.tokens[repository] = token

    def redirect(self, repository: str, url: str) -> None:
        self.redirects[repository] = url

    def __enter__(self) -> QuayStandIn:
        self._app.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._app.stop()

    async def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/repository/{repository:.+}/build/", self._builds)
        app.router.add_route("*", "/v2/{tail:.*}", self._registry)
        app.cleanup_ctx.append(self._session)
        return app

    async def _session(self, app: web.Application) -> Any:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        yield
        await self._http.close()

    async def _builds(self, request: web.Request) -> web.Response:
        repository = request.match_info["repository"]
        self.hits[repository] += 1
        given = request.headers.get("Authorization")
        self.authorization[repository] = given
        if repository in self.redirects:
            raise web.HTTPTemporaryRedirect(self.redirects[repository])
        if repository in self.tokens and given != f"Bearer {self.tokens[repository]}":
            return web.json_response({
                "detail": "Requires authentication", "error_message": "Requires authentication",
                "error_type": "invalid_token", "title": "invalid_token",
                "type": f"{self.url}/api/v1/error/invalid_token", "status": 401,
            }, status=401)
        limit = int(request.query.get("limit", "5"))  # Quay's default
        return web.json_response({"builds": self.builds.get(repository, [])[:limit]})

    async def _registry(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._http.request(
            request.method, f"{self.registry.url}{request.rel_url}", headers=headers,
            data=await request.read() if request.can_read_body else None, allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, headers=out, body=body)


def _repo(repository: str) -> dict[str, str]:
    ns, _, name = repository.partition("/")
    return {"namespace": ns, "name": name}
