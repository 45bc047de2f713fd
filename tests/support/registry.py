"""The real CNCF distribution registry (`/usr/bin/docker-registry`) for protocol tests, and
helpers that push images to any registry over its HTTP API.

The push helpers are synchronous (urllib) so that end-to-end tests and benchmarks can call
them anywhere; `apush_*` run them in a thread for async tests.

    with RegistryServer() as reg:                      # anonymous
        pushed = push_image(reg.url, "team/app", "latest", {"config": {"Cmd": ["sh"]}})
        idx = push_index(reg.url, "team/multi", "1.0")
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urljoin

from tests.support import free_port

REGISTRY_BIN = os.environ.get("DOCKER_REGISTRY_BIN", "/usr/bin/docker-registry")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

Auth = tuple[str, str] | None
Media = Literal["docker", "oci"]


def registry_available() -> bool:
    return Path(REGISTRY_BIN).exists()


@dataclass
class RegistryServer:
    """`docker-registry serve` on a free 127.0.0.1 port with a temporary storage folder and
    deletes enabled.

    - `htpasswd={"user": "password"}`: Basic auth (bcrypt entries).
    - `token_realm`, `token_service`, `token_issuer`, `token_cert`: Bearer token auth (see
      tests/support/token_server.py; `TokenServer.write_cert` gives the cert file).
    - `notifications=[{"url": ..., "headers": {"Authorization": "Bearer s"}}]`: webhook
      endpoints; header values may be strings or lists; name/timeout/threshold/backoff
      default to quick test values; `"ignore": {"actions": ["pull"]}` passes through.
    """

    htpasswd: dict[str, str] | None = None
    token_realm: str | None = None
    token_service: str = "registry-test"
    token_issuer: str = "registry-sync-test-issuer"
    token_cert: Path | None = None
    notifications: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    address: str = "127.0.0.1"  # "::1": an IPv6 registry, `[::1]:<port>`
    workdir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config(self) -> dict[str, Any]:
        assert self.workdir is not None
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "registry-sync-test-secret"},
        }
        if self.htpasswd is not None:
            import bcrypt

            lines = [
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
                for user, pw in self.htpasswd.items()
            ]
            path = self.workdir / "htpasswd"
            path.write_text("\n".join(lines) + "\n")
            cfg["auth"] = {"htpasswd": {"realm": "registry-sync-test", "path": str(path)}}
        elif self.token_realm is not None:
            assert self.token_cert is not None, "token auth needs token_cert"
            cfg["auth"] = {
                "token": {
                    "realm": self.token_realm,
                    "service": self.token_service,
                    "issuer": self.token_issuer,
                    "rootcertbundle": str(self.token_cert),
                }
            }
        if self.notifications:
            endpoints = []
            for i, ep in enumerate(self.notifications):
                headers = {
                    k: (v if isinstance(v, list) else [v]) for k, v in ep.get("headers", {}).items()
                }
                endpoints.append(
                    {
                        "name": ep.get("name", f"endpoint-{i}"),
                        "url": ep["url"],
                        "headers": headers,
                        "timeout": ep.get("timeout", "1s"),
                        "threshold": ep.get("threshold", 5),
                        "backoff": ep.get("backoff", "1s"),
                        "ignoredmediatypes": ep.get(
                            "ignoredmediatypes", ["application/octet-stream"]
                        ),
                        # e.g. {"actions": ["pull"]}: the registry does not send those at all
                        **({"ignore": ep["ignore"]} if "ignore" in ep else {}),
                    }
                )
            cfg["notifications"] = {"endpoints": endpoints}
        return cfg

    def start(self, timeout: float = 20.0) -> RegistryServer:
        if not registry_available():
            raise RuntimeError(f"{REGISTRY_BIN} is missing: apt-get install docker-registry")
        self._tmp = tempfile.mkdtemp(prefix="rs-registry-")
        self.workdir = Path(self._tmp)
        self.port = self.port or free_port()
        config_path = self.workdir / "config.yml"
        config_path.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        log = (self.workdir / "registry.log").open("wb")
        self._proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self._tmp},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.log()}")
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1).close()  # noqa: S310
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, with auth
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer within {timeout}s")

    def log(self) -> str:
        assert self.workdir is not None
        path = self.workdir / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ HTTP push helpers


@dataclass(frozen=True)
class PushedImage:
    digest: str  # manifest digest
    config_digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class PushedIndex:
    digest: str
    media_type: str
    # "linux/amd64" (or "linux/arm/v7") → the platform manifest
    manifests: dict[str, PushedImage]
    attestation_digest: str | None = None


class _Http:
    """Minimal registry HTTP with auth: Basic, or Bearer from the challenge's realm."""

    def __init__(self, base_url: str, auth: Auth) -> None:
        self.base = base_url.rstrip("/")
        self.auth = auth
        self._authz: dict[str, str] = {}  # scope → Authorization header

    def _basic(self) -> str:
        assert self.auth is not None
        raw = f"{self.auth[0]}:{self.auth[1]}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _authorize(self, challenge: str, scope: str) -> str | None:
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            return self._basic() if self.auth else None
        params = dict(
            (k.strip(), v.strip().strip('"'))
            for k, _, v in (p.partition("=") for p in _split_params(rest))
        )
        query = {"scope": scope}
        if "service" in params:
            query["service"] = params["service"]
        req = urllib.request.Request(f"{params['realm']}?{urlencode(query)}")  # noqa: S310
        if self.auth:
            req.add_header("Authorization", self._basic())
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            data = json.loads(resp.read())
        return "Bearer " + (data.get("token") or data["access_token"])

    def request(
        self,
        method: str,
        url: str,
        *,
        repo: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        url = url if url.startswith("http") else self.base + url
        scope = f"repository:{repo}:pull,push,delete"
        for attempt in range(2):
            req = urllib.request.Request(url, data=body, method=method)  # noqa: S310
            for k, v in (headers or {}).items():
                req.add_header(k, v)
            if scope in self._authz:
                req.add_header("Authorization", self._authz[scope])
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                    return resp.status, dict(resp.headers.items()), resp.read()
            except urllib.error.HTTPError as err:
                payload = err.read()
                challenge = err.headers.get("WWW-Authenticate")
                if err.code == 401 and challenge and attempt == 0:
                    authz = self._authorize(challenge, scope)
                    if authz:
                        self._authz[scope] = authz
                        continue
                raise RuntimeError(
                    f"{method} {url} → {err.code}: {payload[:300].decode(errors='replace')}"
                ) from None
        raise RuntimeError("unreachable")


def _split_params(raw: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in raw:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current] if p.strip()]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(http: _Http, repo: str, data: bytes) -> str:
    digest = _digest(data)
    try:
        status, _, _ = http.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo)
        if status == 200:
            return digest
    except RuntimeError:
        pass
    _, headers, _ = http.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo, body=b"")
    location = urljoin(http.base + "/", headers["Location"])
    sep = "&" if "?" in location else "?"
    http.request(
        "PUT",
        f"{location}{sep}{urlencode({'digest': digest})}",
        repo=repo,
        body=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    return digest


def _put_manifest(http: _Http, repo: str, ref: str, manifest: dict[str, Any], media: str) -> str:
    body = json.dumps(manifest, indent=3).encode()
    _, headers, _ = http.request(
        "PUT",
        f"/v2/{repo}/manifests/{ref}",
        repo=repo,
        body=body,
        headers={"Content-Type": media},
    )
    digest = _digest(body)
    sent = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest")
    assert sent in (None, digest), f"registry stored {sent}, expected {digest}"
    return digest


def push_image(
    base_url: str,
    repo: str,
    tag: str | None,
    config: dict[str, Any],
    *,
    media: Media = "docker",
    auth: Auth = None,
    layers: int = 1,
    architecture: str = "amd64",
    os_name: str = "linux",
    variant: str | None = None,
) -> PushedImage:
    """Push one image: `layers` small random blobs, the image config, and the manifest by
    `tag` (or by digest only when tag is None). `config` is the image config JSON, e.g.
    `{"created": "...", "author": "...", "config": {"Env": [...], "Cmd": [...]}}`;
    architecture, os and rootfs are filled in when missing."""
    http = _Http(base_url, auth)
    layer_descs, diff_ids = [], []
    for _ in range(layers):
        blob = os.urandom(64)
        layer_descs.append(
            {
                "mediaType": DOCKER_LAYER if media == "docker" else OCI_LAYER,
                "size": len(blob),
                "digest": _push_blob(http, repo, blob),
            }
        )
        diff_ids.append(_digest(blob))
    cfg = {"architecture": architecture, "os": os_name, **config}
    if variant and "variant" not in cfg:
        cfg["variant"] = variant
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": diff_ids})
    cfg_body = json.dumps(cfg).encode()
    cfg_digest = _push_blob(http, repo, cfg_body)
    manifest_type = DOCKER_MANIFEST if media == "docker" else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": DOCKER_CONFIG if media == "docker" else OCI_CONFIG,
            "size": len(cfg_body),
            "digest": cfg_digest,
        },
        "layers": layer_descs,
    }
    digest = _put_manifest(
        http, repo, tag or _digest(json.dumps(manifest, indent=3).encode()), manifest, manifest_type
    )
    size = len(json.dumps(manifest, indent=3).encode())
    return PushedImage(digest, cfg_digest, manifest_type, size)


def push_index(
    base_url: str,
    repo: str,
    tag: str,
    platforms: list[tuple[str, ...]] | None = None,
    *,
    attestation: bool = True,
    media: Media = "oci",
    auth: Auth = None,
    config: dict[str, Any] | None = None,
) -> PushedIndex:
    """Push one image per platform ("os", "arch"[, "variant"]) by digest, an optional
    buildx-style attestation manifest (platform unknown/unknown), then the index (OCI) or
    manifest list (docker) by `tag`. Each platform's config is `config` plus its own
    architecture/os and a label `platform=<os/arch>`."""
    platforms = platforms if platforms is not None else [("linux", "amd64"), ("linux", "arm64")]
    http = _Http(base_url, auth)
    pushed: dict[str, PushedImage] = {}
    entries: list[dict[str, Any]] = []
    for plat in platforms:
        os_name, arch, *rest = plat
        variant = rest[0] if rest else None
        name = "/".join(plat)
        base = dict(config or {"created": "2024-05-01T12:00:00Z", "config": {}})
        inner = dict(base.get("config") or {})
        inner["Labels"] = {**(inner.get("Labels") or {}), "platform": name}
        img = push_image(
            base_url,
            repo,
            None,
            {**base, "config": inner},
            media=media,
            auth=auth,
            architecture=arch,
            os_name=os_name,
            variant=variant,
        )
        pushed[name] = img
        platform: dict[str, str] = {"architecture": arch, "os": os_name}
        if variant:
            platform["variant"] = variant
        entries.append(
            {
                "mediaType": img.media_type,
                "size": img.size,
                "digest": img.digest,
                "platform": platform,
            }
        )
    attestation_digest = None
    if attestation and pushed:
        first = next(iter(pushed.values()))
        att = push_image(
            base_url,
            repo,
            None,
            {"config": {}},
            media="oci",
            auth=auth,
            architecture="unknown",
            os_name="unknown",
        )
        attestation_digest = att.digest
        entries.append(
            {
                "mediaType": att.media_type,
                "size": att.size,
                "digest": att.digest,
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {
                    "vnd.docker.reference.digest": first.digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
            }
        )
    index_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
    digest = _put_manifest(http, repo, tag, index, index_type)
    return PushedIndex(digest, index_type, pushed, attestation_digest)


def manifest_digest(base_url: str, repo: str, ref: str, *, auth: Auth = None) -> str:
    """The digest `ref` (a tag or digest) points at, from a HEAD with the full Accept list."""
    http = _Http(base_url, auth)
    _, headers, _ = http.request(
        "HEAD", f"/v2/{repo}/manifests/{ref}", repo=repo, headers={"Accept": ACCEPT}
    )
    return {k.lower(): v for k, v in headers.items()}["docker-content-digest"]


def delete_manifest(base_url: str, repo: str, digest: str, *, auth: Auth = None) -> None:
    """Delete a manifest by digest; distribution also removes every tag pointing at it."""
    http = _Http(base_url, auth)
    http.request("DELETE", f"/v2/{repo}/manifests/{digest}", repo=repo)


def delete_tag(base_url: str, repo: str, tag: str, *, auth: Auth = None) -> str:
    """Delete a tag the only way distribution 2.8 can: delete the manifest it points at
    (which removes every tag of that manifest). Returns the deleted digest."""
    digest = manifest_digest(base_url, repo, tag, auth=auth)
    delete_manifest(base_url, repo, digest, auth=auth)
    return digest


async def apush_image(*args: Any, **kwargs: Any) -> PushedImage:
    return await asyncio.to_thread(push_image, *args, **kwargs)


async def apush_index(*args: Any, **kwargs: Any) -> PushedIndex:
    return await asyncio.to_thread(push_index, *args, **kwargs)


async def adelete_tag(*args: Any, **kwargs: Any) -> str:
    return await asyncio.to_thread(delete_tag, *args, **kwargs)
