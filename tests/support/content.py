"""Real-world registry content that is not a plain image, pushed over the registry HTTP API
(any registry; the tests use the real CNCF `docker-registry`). Synchronous, like
tests/support/registry.py: async tests call them through `asyncio.to_thread`.

Shapes as their tools write them (sigstore/cosign specs/SIGNATURE_SPEC.md, ATTESTATION_SPEC.md,
SBOM_SPEC.md, BUNDLE_SPEC.md; Helm's OCI support; the OCI image spec's artifact guidance):

    img = push_image(reg.url, repo, "v1", {...})                    # tests/support/registry.py
    push_cosign_signature(reg.url, repo, img.digest)                # tag sha256-<hex>.sig
    push_cosign_attestation(reg.url, repo, img.digest)              # tag sha256-<hex>.att
    bundle = push_sigstore_bundle(reg.url, repo, img.digest)        # by digest, or tag=...
    push_referrers_index(reg.url, repo, img.digest, [bundle])       # tag sha256-<hex>
    push_helm_chart(reg.url, repo, "0.1.0", created="2024-06-01T10:00:00Z")
    push_platform_index(reg.url, repo, "arm", [("linux", "arm64")])
    push_index_missing_child(reg.url, repo, "multi")                # amd64 child deleted
    push_broken_config(reg.url, repo, "broken", how="not-json")     # or how="missing"
    push_manifest_naming(reg.url, repo, "copy", config_bytes)       # the config blob deleted

The CNCF registry refuses a manifest whose blobs or child manifests it does not hold, so
"missing" content is pushed whole and then deleted by digest (deletes must be enabled, as
RegistryServer does).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from tests.support.registry import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Auth,
    PushedIndex,
    _digest,
    _Http,
    _push_blob,
    _put_manifest,
    push_image,
    push_index,
)

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SPDX_JSON = "text/spdx+json"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
CREATED = "org.opencontainers.image.created"


@dataclass(frozen=True)
class Pushed:
    tag: str | None  # None: pushed by digest only
    digest: str  # the manifest's
    media_type: str
    size: int
    config_digest: str | None = None
    artifact_type: str | None = None


def metadata_tag(digest: str, suffix: str = "") -> str:
    """cosign's tag for metadata about `digest`: sha256-<hex>.sig / .att / .sbom, or the OCI
    referrers fallback tag sha256-<hex> (suffix "")."""
    return digest.replace(":", "-") + suffix


def _manifest(
    http: _Http, repo: str, ref: str | None, *, config: bytes, config_type: str,
    layers: list[tuple[bytes, str, dict[str, str]]], annotations: dict[str, str] | None = None,
    artifact_type: str | None = None, subject: dict[str, Any] | None = None,
) -> Pushed:
    """Push the blobs and an OCI image manifest by `ref` (a tag) or by its digest (None)."""
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config_type, "size": len(config),
                          "digest": _push_blob(http, repo, config)}
    manifest["layers"] = [
        {"mediaType": media, "size": len(blob), "digest": _push_blob(http, repo, blob),
         **({"annotations": notes} if notes else {})}
        for blob, media, notes in layers
    ]
    if subject:
        manifest["subject"] = subject
    if annotations:
        manifest["annotations"] = annotations
    body = json.dumps(manifest, indent=3).encode()
    digest = _put_manifest(http, repo, ref or _digest(body), manifest, OCI_MANIFEST)
    return Pushed(ref, digest, OCI_MANIFEST, len(body), manifest["config"]["digest"], artifact_type)


def _cosign_config(payload: bytes) -> bytes:
    # what cosign writes: an image config with no platform, placeholder dates, one diff id
    return json.dumps({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [_digest(payload)]}, "config": {},
    }).encode()


def push_cosign_signature(base_url: str, repo: str, digest: str, *, auth: Auth = None) -> Pushed:
    """A cosign signature of `digest`: tag sha256-<hex>.sig, a simplesigning payload layer."""
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": repo}, "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()
    signature = base64.b64encode(os.urandom(64)).decode()
    return _manifest(
        _Http(base_url, auth), repo, metadata_tag(digest, ".sig"), config=_cosign_config(payload),
        config_type=OCI_CONFIG,
        layers=[(payload, SIMPLESIGNING, {"dev.cosignproject.cosign/signature": signature})],
    )


def push_cosign_attestation(
    base_url: str, repo: str, digest: str, *, auth: Auth = None,
    predicate_type: str = "https://slsa.dev/provenance/v0.2",
) -> Pushed:
    """A cosign attestation of `digest`: tag sha256-<hex>.att, a DSSE envelope layer."""
    statement = {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": predicate_type,
                 "subject": [{"name": repo, "digest": {"sha256": digest.split(":", 1)[1]}}],
                 "predicate": {"builder": {"id": "https://example.com/ci"}}}
    envelope = json.dumps({
        "payloadType": IN_TOTO, "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(os.urandom(64)).decode()}],
    }).encode()
    return _manifest(
        _Http(base_url, auth), repo, metadata_tag(digest, ".att"), config=_cosign_config(envelope),
        config_type=OCI_CONFIG, layers=[(envelope, DSSE, {"predicateType": predicate_type})],
    )


def push_cosign_sbom(base_url: str, repo: str, digest: str, *, auth: Auth = None) -> Pushed:
    """A cosign-attached SBOM of `digest`: tag sha256-<hex>.sbom, an SPDX layer."""
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": repo, "packages": []}).encode()
    return _manifest(
        _Http(base_url, auth), repo, metadata_tag(digest, ".sbom"), config=_cosign_config(sbom),
        config_type=OCI_CONFIG, layers=[(sbom, SPDX_JSON, {})],
    )


def _subject(http: _Http, repo: str, digest: str) -> dict[str, Any]:
    _, headers, body = http.request(
        "GET", f"/v2/{repo}/manifests/{digest}", repo=repo,
        headers={"Accept": ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST])},
    )
    media = {k.lower(): v for k, v in headers.items()}.get("content-type", OCI_MANIFEST)
    return {"mediaType": media.split(";")[0], "digest": digest, "size": len(body)}


def push_sigstore_bundle(
    base_url: str, repo: str, digest: str, *, tag: str | None = None, auth: Auth = None
) -> Pushed:
    """A sigstore bundle about `digest` (OCI 1.1 artifact with a `subject`, empty config), by
    digest (as cosign pushes it) or under `tag`."""
    http = _Http(base_url, auth)
    bundle = json.dumps({"mediaType": SIGSTORE_BUNDLE, "verificationMaterial": {},
                         "messageSignature": {"signature": base64.b64encode(os.urandom(64)).decode()}}).encode()
    return _manifest(
        http, repo, tag, config=b"{}", config_type=OCI_EMPTY, artifact_type=SIGSTORE_BUNDLE,
        layers=[(bundle, SIGSTORE_BUNDLE, {"org.opencontainers.image.title": "bundle.sigstore.json"})],
        annotations={CREATED: "2024-07-01T00:00:00Z", "dev.sigstore.bundle.content": "message-signature"},
        subject=_subject(http, repo, digest),
    )


def push_referrers_index(
    base_url: str, repo: str, digest: str, referrers: list[Pushed], *, auth: Auth = None
) -> Pushed:
    """The OCI referrers fallback tag sha256-<hex> of `digest`: an index of its referrers
    (which must already be pushed), each with its artifactType."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": r.media_type, "digest": r.digest, "size": r.size,
         **({"artifactType": r.artifact_type} if r.artifact_type else {})}
        for r in referrers
    ]}
    tag = metadata_tag(digest)
    pushed = _put_manifest(_Http(base_url, auth), repo, tag, index, OCI_INDEX)
    return Pushed(tag, pushed, OCI_INDEX, len(json.dumps(index, indent=3).encode()))


def push_helm_chart(
    base_url: str, repo: str, tag: str, *, created: str | None = "2024-06-01T10:00:00Z",
    auth: Auth = None, name: str = "demo", version: str = "0.1.0",
) -> Pushed:
    """A Helm chart as `helm push` stores it: helm config, one chart layer, and the
    `org.opencontainers.image.created` annotation when `created` is given."""
    config = json.dumps({"apiVersion": "v2", "name": name, "version": version}).encode()
    annotations = {"org.opencontainers.image.title": name, "org.opencontainers.image.version": version}
    if created:
        annotations[CREATED] = created
    return _manifest(
        _Http(base_url, auth), repo, tag, config=config, config_type=HELM_CONFIG,
        layers=[(os.urandom(128), HELM_CHART, {})], annotations=annotations,
    )


def push_platform_index(
    base_url: str, repo: str, tag: str, platforms: list[tuple[str, ...]], *, auth: Auth = None
) -> PushedIndex:
    """An OCI index with only `platforms` (e.g. [("linux", "arm64")]), no attestations."""
    return push_index(base_url, repo, tag, platforms, attestation=False, auth=auth)


def push_index_missing_child(
    base_url: str, repo: str, tag: str, *, missing: str = "linux/amd64", auth: Auth = None
) -> PushedIndex:
    """An index of linux/amd64 and linux/arm64 whose `missing` child manifest the registry
    no longer has: pushed whole, then that child deleted by digest."""
    index = push_index(base_url, repo, tag, [("linux", "amd64"), ("linux", "arm64")],
                       attestation=False, auth=auth)
    http = _Http(base_url, auth)
    http.request("DELETE", f"/v2/{repo}/manifests/{index.manifests[missing].digest}", repo=repo)
    return index


def delete_blob(base_url: str, repo: str, digest: str, *, auth: Auth = None) -> None:
    _Http(base_url, auth).request("DELETE", f"/v2/{repo}/blobs/{digest}", repo=repo)


def fetch_blob(base_url: str, repo: str, digest: str, *, auth: Auth = None) -> bytes:
    return _Http(base_url, auth).request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo)[2]


def push_manifest_naming(
    base_url: str, repo: str, tag: str, config: bytes, *, auth: Auth = None, keep_blob: bool = False
) -> Pushed:
    """A Docker image manifest under `tag` that names the config blob `config` (its digest)
    without the repository holding that blob: pushed, then the blob deleted (unless
    `keep_blob`: the same config legitimately in a second repository, a mirror)."""
    http = _Http(base_url, auth)
    layer = os.urandom(64)
    manifest = {
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": _push_blob(http, repo, config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                    "digest": _push_blob(http, repo, layer)}],
    }
    digest = _put_manifest(http, repo, tag, manifest, DOCKER_MANIFEST)
    if not keep_blob:
        delete_blob(base_url, repo, _digest(config), auth=auth)
    size = len(json.dumps(manifest, indent=3).encode())
    return Pushed(tag, digest, DOCKER_MANIFEST, size, _digest(config))


def push_broken_config(
    base_url: str, repo: str, tag: str, *, how: Literal["not-json", "missing"], auth: Auth = None
) -> Pushed:
    """An image whose config cannot be read: a config blob that is not JSON, or one the
    registry does not hold (pushed, then deleted)."""
    if how == "not-json":
        http = _Http(base_url, auth)
        manifest = {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": 16,
                       "digest": _push_blob(http, repo, b"this is not JSON")},
            "layers": [],
        }
        digest = _put_manifest(http, repo, tag, manifest, DOCKER_MANIFEST)
        return Pushed(tag, digest, DOCKER_MANIFEST, len(json.dumps(manifest, indent=3).encode()),
                      manifest["config"]["digest"])
    nonce = {"Labels": {"nonce": os.urandom(8).hex()}}  # a config of its own to delete
    pushed = push_image(base_url, repo, tag, {"created": "2024-01-01T00:00:00Z", "config": nonce},
                        auth=auth, layers=0)
    delete_blob(base_url, repo, pushed.config_digest, auth=auth)
    return Pushed(tag, pushed.digest, pushed.media_type, pushed.size, pushed.config_digest)
