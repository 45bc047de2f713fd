"""A registry run by an attacker, on loopback: it claims what it does not hold and puts what
it likes into its answers. The real docker-registry holds the victim's content beside it.

    hostile = HostileRegistry().start()
    hostile.claim("claims/app", config_digest)             # a manifest naming that config
    hostile.claim("claims/app", digest, blob=b"...")       # ... and serving these bytes for it

The first component of the repository name picks the behaviour:

| repo       | behaviour                                                                     |
|------------|-------------------------------------------------------------------------------|
| claims/*   | tag `latest`: a Docker manifest naming the claimed config digest (its own     |
|            | digest in `manifest_algorithm`, or a wrong one with `wrong_manifest_digest`); |
|            | `HEAD` of any blob answers 200; `GET` of a blob serves `blob`, else 404       |
| echo/*     | the manifest `GET` answers 400 with a distribution error whose code is        |
|            | `code_of_echo` and whose message and detail carry SECRET                      |
| hop/*      | the manifest `GET` redirects to /elsewhere on `other_host` (another origin),  |
|            | which answers 403 with an XML body carrying SECRET                            |

`token_status`: every registry request needs a bearer token, and the token service (/token)
answers this status with a body carrying SECRET. Counters: `hits[(method, path)]`.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass

from aiohttp import web

from tests.support import ThreadedApp

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# What must never reach an API answer: bodies of the registry, its redirect hops and its
# token service.
SECRET = "internal-only: db01.corp.example 10.20.30.40 AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI"


@dataclass
class Claim:
    config_digest: str
    blob: bytes | None = None  # None: a blob GET answers 404
    manifest_algorithm: str = "sha256"
    wrong_manifest_digest: bool = False

    def manifest(self) -> bytes:
        return json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 1234, "digest": self.config_digest},
            "layers": [],
        }).encode()

    @property
    def manifest_digest(self) -> str:
        body = self.manifest() + (b" " if self.wrong_manifest_digest else b"")
        return f"{self.manifest_algorithm}:{hashlib.new(self.manifest_algorithm, body).hexdigest()}"


class HostileRegistry:
    def __init__(self, *, token_status: int | None = None, code_of_echo: str = "DENIED") -> None:
        self.token_status = token_status
        self.code_of_echo = code_of_echo
        self.claims: dict[str, Claim] = {}
        self.hits: collections.Counter[tuple[str, str]] = collections.Counter()
        self._app = ThreadedApp(self._make_app)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._app.port}"

    @property
    def other_host(self) -> str:
        """The same server under another name: another origin for redirects."""
        return f"localhost:{self._app.port}"

    def start(self) -> HostileRegistry:
        self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()

    def claim(self, repository: str, config_digest: str, **kw: object) -> Claim:
        claim = self.claims[repository] = Claim(config_digest, **kw)  # type: ignore[arg-type]
        return claim

    async def _ping(self, request: web.Request) -> web.Response:
        self.hits[(request.method, request.path)] += 1
        if self.token_status is not None and "Authorization" not in request.headers:
            realm = f"http://{request.host}/token"
            return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'})
        return web.json_response({})

    async def _token(self, request: web.Request) -> web.Response:
        self.hits[(request.method, "/token")] += 1
        return web.json_response({"errors": [{"code": "DENIED", "message": SECRET}], "details": SECRET},
                                 status=self.token_status or 500)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.hits[(request.method, request.path)] += 1
        body = f"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>{SECRET}</Message></Error>"
        return web.Response(status=403, text=body, content_type="application/xml")

    async def _v2(self, request: web.Request) -> web.Response:
        self.hits[(request.method, request.path)] += 1
        tail = request.match_info["tail"]
        kind = tail.split("/", 1)[0]
        if "/tags/list" in tail:
            return web.json_response({"name": tail.split("/tags/list")[0], "tags": ["latest"]})
        if kind == "echo":
            error = {"code": self.code_of_echo, "message": SECRET, "detail": SECRET}
            return web.json_response({"errors": [error]}, status=400)
        if kind == "hop":
            raise web.HTTPTemporaryRedirect(f"http://{self.other_host}/elsewhere")
        repository = tail.split("/manifests/")[0].split("/blobs/")[0]
        claim = self.claims.get(repository)
        if claim is None:
            raise web.HTTPNotFound()
        if "/manifests/" in tail:
            return web.Response(body=claim.manifest(), content_type=DOCKER_MANIFEST,
                                headers={"Docker-Content-Digest": claim.manifest_digest})
        if "/blobs/" in tail:
            if request.method == "HEAD":  # the claim: "I hold it"
                return web.Response(headers={"Docker-Content-Digest": tail.rsplit("/", 1)[1]})
            if claim.blob is None:
                raise web.HTTPNotFound()
            return web.Response(body=claim.blob, content_type="application/octet-stream")
        raise web.HTTPNotFound()

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/token", self._token)
        app.router.add_get("/elsewhere", self._elsewhere)
        app.router.add_route("GET", "/v2/{tail:.+}", self._v2)
        app.router.add_route("HEAD", "/v2/{tail:.+}", self._v2)
        return app
