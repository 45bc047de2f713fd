"""A small fake registry for the failures the real one cannot produce.

The first component of the repository name picks the behaviour:

| repo          | behaviour                                                                  |
|---------------|----------------------------------------------------------------------------|
| ok/*          | a healthy docker v2 image, tags ["a", "b"]                                 |
| flaky/*       | 500 (HTML body) `fail_times` times per path, then healthy                  |
| down/*        | always 503 with an UNAVAILABLE error body                                  |
| halfdown/*    | a healthy tag list, but manifests and blobs always 503                     |
| limited/*     | 429 with `Retry-After: <retry_after>` once per path, then healthy          |
| slow/*        | answers after `slow_seconds`                                               |
| garbage/*     | 200 with a body that is not JSON (tags and manifests)                      |
| paged/*       | tags in pages of 2 with relative `Link` headers (tags t0..t4)              |
| offhost/*     | a tags page whose Link points at another host                              |
| redirect/*    | config blob GET → 307 to http://localhost:<port>/cdn/… (another host)      |
| ssrf/*        | config blob GET → 307 to the cloud metadata address                        |
| scope/*       | first manifest request per repo: 401 error="insufficient_scope"            |
| expired/*     | every request: 401 error="invalid_token"                                   |
| noheader/*    | manifests without Docker-Content-Digest                                    |
| hub/*         | healthy, with Docker Hub's `ratelimit-remaining: 3;w=21600`                |
| schema1/*     | a signed schema 1 manifest (tests/worker/fixtures/schema1.json)            |
| endless/*     | tag pages of `page_tags` (65,000) new names each, every one with a Link    |
| huge/*        | 50 tags; every manifest streams `huge_bytes` (5 MB) without a length       |
| hang/*        | `hang_tags` (50,000) tags in one page; manifests never answer              |

`auth` is None (anonymous), "basic" or "bearer" (token endpoint at /token; `users` are the
valid Basic credentials there). Per user, as Docker Hub limits each account: with a token
of a user in `limited_users`, every manifest GET is a 429 with `Retry-After: <retry_after>`;
`ratelimit_users` (user -> pulls left) adds Docker Hub's `ratelimit-limit` /
`ratelimit-remaining` headers to that user's manifest answers. Counters: `hits[(method, path)]`, `token_requests`,
`cdn_authorization` (the Authorization header the redirect target received, or None).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support import ThreadedApp

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = json.dumps(
    {
        "created": "2024-03-04T05:06:07Z",
        "author": "fake",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["serve", "--port", "80"], "ExposedPorts": {"80/tcp": {}}},
    }
).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": len(CONFIG),
            "digest": CONFIG_DIGEST,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SCHEMA1 = (Path(__file__).parents[1] / "worker" / "fixtures" / "schema1.json").read_bytes()
SCHEMA1_TYPE = "application/vnd.docker.distribution.manifest.v1+prettyjws"
# a schema 1 digest covers the payload without its signatures: not the body's hash
SCHEMA1_DIGEST = "sha256:" + "5" * 64
HTML_500 = b"<html><body><h1>500 Internal Server Error</h1><p>upstream broke</p></body></html>"


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


class FakeRegistry:
    def __init__(
        self,
        *,
        auth: str | None = None,
        users: dict[str, str] | None = None,
        fail_times: int = 2,
        retry_after: str = "1",
        slow_seconds: float = 2.0,
        page_tags: int = 65_000,
        hang_tags: int = 50_000,
        huge_bytes: int = 5 * 1024 * 1024,
        limited_users: frozenset[str] = frozenset(),
        ratelimit_users: dict[str, int] | None = None,
    ) -> None:
        self.auth = auth
        self.users = dict(users or {})
        self.fail_times = fail_times
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.page_tags = page_tags
        self.hang_tags = hang_tags
        self.huge_bytes = huge_bytes
        self._closing = False  # set by stop(): hanging answers end
        self.hits: collections.Counter[tuple[str, str]] = collections.Counter()
        self.token_requests: list[str | None] = []
        self.cdn_authorization: list[str | None] = []
        self.limited_users = limited_users
        self.ratelimit_users = dict(ratelimit_users or {})
        self._tokens: dict[str, str | None] = {}  # token -> the user it was issued to (None: anonymous)
        self._scope_failed: set[str] = set()
        self._app = ThreadedApp(self._make_app)

    @property
    def port(self) -> int:
        return self._app.port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def other_host(self) -> str:
        """The same server under another host name (for cross-host redirects)."""
        return f"localhost:{self.port}"

    def start(self) -> FakeRegistry:
        self._app.start()
        return self

    def stop(self) -> None:
        self._closing = True
        self._app.stop()

    def reset(self) -> None:
        self.hits.clear()
        self.token_requests.clear()
        self.cdn_authorization.clear()

    # ------------------------------------------------------------------ auth

    def _challenge(self, request: web.Request, error: str | None = None) -> str:
        if self.auth == "basic":
            return 'Basic realm="fake"'
        realm = f"http://{request.host}/token"
        extra = f',error="{error}"' if error else ""
        return f'Bearer realm="{realm}",service="fake registry"{extra}'

    def _basic_user(self, request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user if user and self.users.get(user) == password else None

    def _authorized(self, request: web.Request) -> bool:
        if self.auth is None:
            return True
        if self.auth == "basic":
            return self._basic_user(request) is not None
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self._tokens

    def _unauthorized(self, request: web.Request, error: str | None = None) -> web.Response:
        return web.Response(
            status=401,
            body=_errors("UNAUTHORIZED", "authentication required"),
            content_type="application/json",
            headers={"WWW-Authenticate": self._challenge(request, error)},
        )

    async def _token(self, request: web.Request) -> web.Response:
        has_creds = "Authorization" in request.headers
        user = self._basic_user(request)
        self.token_requests.append(request.query.get("scope"))
        if has_creds and user is None:
            return web.json_response({"details": "incorrect username or password"}, status=401)
        token = f"tok-{len(self.token_requests)}"
        self._tokens[token] = user
        return web.json_response({"access_token": token, "expires_in": 300})

    # ------------------------------------------------------------------ API

    async def _ping(self, request: web.Request) -> web.Response:
        self.hits[(request.method, "/v2/")] += 1
        if self.auth is not None and not self._authorized(request):
            return self._unauthorized(request)
        return web.json_response({})

    async def _cdn(self, request: web.Request) -> web.Response:
        self.cdn_authorization.append(request.headers.get("Authorization"))
        return web.Response(body=CONFIG, content_type="application/octet-stream")

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[(request.method, path)] += 1
        tail = request.match_info["tail"]
        kind = tail.split("/")[0]
        if kind == "expired":
            return self._unauthorized(request, "invalid_token")
        if not self._authorized(request):
            return self._unauthorized(request)
        n = self.hits[(request.method, path)]
        repo = tail.split("/manifests/")[0]
        user = self._tokens.get(request.headers.get("Authorization", "")[7:])
        if user in self.limited_users and request.method == "GET" and "/manifests/" in path:
            return web.Response(
                status=429, body=_errors("TOOMANYREQUESTS", "pull rate limit of this account"),
                content_type="application/json", headers={"Retry-After": self.retry_after},
            )
        if kind == "scope" and "/manifests/" in path and repo not in self._scope_failed:
            self._scope_failed.add(repo)
            return self._unauthorized(request, "insufficient_scope")
        if kind == "flaky" and n <= self.fail_times:
            return web.Response(status=500, body=HTML_500, content_type="text/html")
        if kind == "down" or (kind == "halfdown" and "/tags/list" not in path):
            return web.Response(
                status=503,
                body=_errors("UNAVAILABLE", "service unavailable"),
                content_type="application/json",
            )
        if kind == "limited" and n == 1:
            return web.Response(
                status=429,
                body=_errors("TOOMANYREQUESTS", "slow down"),
                content_type="application/json",
                headers={"Retry-After": self.retry_after},
            )
        if kind == "slow":
            await asyncio.sleep(self.slow_seconds)
        if kind == "hang" and "/tags/list" not in path:
            # never answers, until stop() (from another thread: a flag, not an asyncio.Event)
            while not self._closing:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            raise web.HTTPServiceUnavailable()
        if kind == "huge" and "/manifests/" in path:
            return await self._stream_huge(request)
        headers: dict[str, str] = {}
        if kind == "hub":
            headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "3;w=21600"}
        if user in self.ratelimit_users and "/manifests/" in path:
            headers = {"ratelimit-limit": "200;w=21600", "ratelimit-remaining": f"{self.ratelimit_users[user]};w=21600"}
        if "/tags/list" in path:
            return self._tags(request, kind, headers)
        if "/manifests/" in path:
            if kind == "garbage":
                return web.Response(body=b"{not json", content_type=DOCKER_MANIFEST)
            if kind == "schema1":
                headers["Docker-Content-Digest"] = SCHEMA1_DIGEST
                return web.Response(body=SCHEMA1, headers=headers, content_type=SCHEMA1_TYPE)
            if kind != "noheader":
                headers["Docker-Content-Digest"] = MANIFEST_DIGEST
            # aiohttp sends no body for a HEAD but keeps its Content-Length
            return web.Response(body=MANIFEST, content_type=DOCKER_MANIFEST, headers=headers)
        if "/blobs/" in path:
            if kind == "redirect":
                raise web.HTTPTemporaryRedirect(f"http://{self.other_host}/cdn/{CONFIG_DIGEST}")
            if kind == "ssrf":
                raise web.HTTPTemporaryRedirect("http://169.254.169.254/latest/meta-data/")
            return web.Response(body=CONFIG, content_type="application/octet-stream")
        raise web.HTTPNotFound()

    async def _stream_huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": DOCKER_MANIFEST})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method == "GET":
            chunk = b" " * 65536
            for _ in range(self.huge_bytes // len(chunk)):
                await resp.write(chunk)
        await resp.write_eof()
        return resp

    def _tags(self, request: web.Request, kind: str, headers: dict[str, str]) -> web.Response:
        repo = request.match_info["tail"].split("/tags/list")[0]
        if kind == "garbage":
            return web.Response(body=b"<html>oops", content_type="application/json")
        body: dict[str, Any] = {"name": repo, "tags": ["a", "b"]}
        if kind == "endless":
            page = int(request.query.get("page", "0"))
            body["tags"] = [f"p{page}-{i}" for i in range(self.page_tags)]
            headers["Link"] = f'</v2/{repo}/tags/list?n=1000&page={page + 1}>; rel="next"'
        if kind == "huge":
            body["tags"] = [f"h{i}" for i in range(50)]
        if kind == "hang":  # all in one page, as registries that ignore `n` answer
            body["tags"] = [f"{i:05d}" for i in range(self.hang_tags)]
        if kind == "paged":
            tags = [f"t{i}" for i in range(5)]
            last = request.query.get("last")
            start = tags.index(last) + 1 if last in tags else 0
            page = tags[start : start + 2]
            body["tags"] = page
            if start + 2 < len(tags):
                headers["Link"] = f'</v2/{repo}/tags/list?n=2&last={page[-1]}>; rel="next"'
        if kind == "offhost":
            headers["Link"] = f'<http://{self.other_host}/v2/{repo}/tags/list?last=b>; rel="next"'
        return web.json_response(body, headers=headers)

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/cdn/{digest}", self._cdn)
        app.router.add_route("GET", "/v2/{tail:.+}", self._v2)
        app.router.add_route("HEAD", "/v2/{tail:.+}", self._v2)
        return app
