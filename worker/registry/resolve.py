"""What a tag points at: manifest → platform → config, the content rule, and the proof that a
config blob is in the tag's own repository.

`RegistryClient.resolve_tag` is the entry point (the polling and the webhook path both call
it); this module holds its logic and the two caches it keeps per worker process.

Proof by content (SPEC §1): a repository holds a config blob only when its registry served
the bytes (GET, with the image's own credentials) and they hash to the digest, sha256 or
sha512 (manifests.content_problem, the one place that rule is written). A `HEAD` answered 200
is a claim, not proof: a registry someone else runs answers 200 to anything. A parsed config
is content-addressed, so one cache entry serves every repository, but each repository must
serve the bytes itself once. Hence `TagResolution.config_digest` is set only for a config
proven for the target repository, and manifests are checked against their digests the same
way.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from core.artifacts import ARTIFACT, IMAGE, METADATA, index_kind, manifest_kind
from worker.registry import manifests as mf
from worker.registry.errors import (
    BlobNotFoundError,
    ManifestNotFoundError,
    RegistryProtocolError,
)
from worker.registry.transport import Reply

if TYPE_CHECKING:
    from worker.registry.client import RegistryClient, Target

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # containers/image's limit for a config blob
CONFIG_CACHE_BYTES = 64 * 1024 * 1024  # parsed configs kept per process, by their blob size
CONFIRMED_CACHE_SIZE = 100_000  # (host, repository, config digest) proofs kept per process


@dataclass(frozen=True)
class TagResolution:
    """What a tag points at.

    - `unchanged`: only the HEAD was sent and the digest is the caller's `known_digest`;
      `platform_digest` echoes known_platform_digest. `config_digest` is set only when the
      caller's `known_config` had no proof on record and the registry has just served it (one
      blob GET): the caller records the proof, the tag itself is as it was.
    - `unproven`: with `unchanged`, the tag's `known_config` could not be proven by content
      (`problem` says why): the tag must lose its config.
    - `kind`: core.artifacts IMAGE, ARTIFACT (a tag without a layer) or METADATA (a
      signature, attestation, SBOM or sigstore bundle: not a tag at all).
    - `config_digest`: set only when the target repository served that config blob and it
      hashed to its digest (or it was in `known_configs`); then the layers row exists or
      `layer` holds it.
    - `layer`: the parsed config to store, None when it is already known for the repository.
    - `created`: the manifest's (or index's) `org.opencontainers.image.created` annotation.
    - `note`: why a resolved tag has no layer (no manifest for the platform, an artifact).
    - `problem`: the tag's manifest or config cannot be read or mapped (unsupported or
      oversized manifest, a child manifest or config blob the registry does not have, a
      config that is not JSON). The tag exists; its last good data should be kept.
    """

    tag: str
    digest: str | None
    platform_digest: str | None = None
    config_digest: str | None = None
    layer: mf.Layer | None = None
    unchanged: bool = False
    note: str | None = None
    kind: str = IMAGE
    created: datetime | None = None
    problem: str | None = None
    unproven: bool = False


class ConfigCache:
    """Per-process caches of the config resolution, both bounded: parsed configs by digest
    (LRU, by the bytes of their blobs) and the (host, repository, digest) triples whose
    registry served the blob's bytes to this process (LRU, by count)."""

    def __init__(self, max_bytes: int = CONFIG_CACHE_BYTES, max_confirmed: int = CONFIRMED_CACHE_SIZE) -> None:
        self.max_bytes = max_bytes
        self.max_confirmed = max_confirmed
        self._layers: OrderedDict[str, tuple[mf.Layer, int]] = OrderedDict()
        self._bytes = 0
        self._confirmed: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    def layer(self, digest: str) -> mf.Layer | None:
        entry = self._layers.get(digest)
        if entry is None:
            return None
        self._layers.move_to_end(digest)
        return entry[0]

    def put(self, digest: str, layer: mf.Layer, size: int) -> None:
        if digest in self._layers:
            return
        self._layers[digest] = (layer, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._layers) > 1:
            _, (_, old) = self._layers.popitem(last=False)
            self._bytes -= old

    def is_confirmed(self, key: tuple[str, str, str]) -> bool:
        if key not in self._confirmed:
            return False
        self._confirmed.move_to_end(key)
        return True

    def confirm(self, key: tuple[str, str, str]) -> None:
        self._confirmed[key] = None
        self._confirmed.move_to_end(key)
        while len(self._confirmed) > self.max_confirmed:
            self._confirmed.popitem(last=False)

    def lock(self, key: tuple[str, str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def unlock(self, key: tuple[str, str, str], lock: asyncio.Lock) -> None:
        if not lock.locked() and self._locks.get(key) is lock:
            del self._locks[key]

    @property
    def size(self) -> tuple[int, int, int]:
        """(parsed configs, their bytes, confirmations) held now."""
        return len(self._layers), self._bytes, len(self._confirmed)

    def clear(self) -> None:
        self._layers.clear()
        self._confirmed.clear()
        self._bytes = 0


async def resolve_tag(
    client: RegistryClient,
    target: Target,
    tag: str,
    *,
    known_digest: str | None,
    known_platform_digest: str | None,
    known_configs: Container[str],
    known_config: str | None = None,
) -> TagResolution:
    """See RegistryClient.resolve_tag."""
    base = f"{client.base_url(target.host)}/v2/{target.repository}/manifests/"
    head_digest = None
    if known_digest is not None:
        head = await client.call(target, "HEAD", base + tag, "manifest")
        head_digest = head.headers.get("Docker-Content-Digest")
        if head_digest and head_digest == known_digest:
            return await _unchanged(client, target, tag, head_digest, known_platform_digest,
                                    known_config, known_configs, base)
    try:
        # by digest after a HEAD; by tag when there is nothing to compare (its
        # Docker-Content-Digest names it, so a HEAD would only add a request)
        reply = await client.call(target, "GET", base + (head_digest or tag), "manifest")
    except ManifestNotFoundError:
        raise
    except RegistryProtocolError as exc:  # oversized, or refused with a 4xx other than 404
        return TagResolution(tag, head_digest, problem=str(exc))
    digest = head_digest or reply.headers.get("Docker-Content-Digest") or mf.sha256_digest(reply.body)
    if digest == known_digest:
        return await _unchanged(
            client, target, tag, digest, known_platform_digest, known_config, known_configs, base)
    try:
        return await _resolve_content(client, target, tag, digest, reply, base, known_configs)
    except RegistryProtocolError as exc:
        return TagResolution(tag, digest, problem=str(exc))


async def _unchanged(
    client: RegistryClient, target: Target, tag: str, digest: str, platform_digest: str | None,
    known_config: str | None, known_configs: Container[str], base: str,
) -> TagResolution:
    """An unchanged tag. Its config (read from a manifest this repository served earlier)
    counts when the repository's proof of it is on record; otherwise the blob is fetched once
    to prove it, and the tag loses the config if that fails. A schema 1 manifest's config is
    no blob: when the blob does not prove it, the manifest is read again, its content (the
    config inside) is the proof."""
    if known_config is None or known_config in known_configs:
        return TagResolution(tag, digest, platform_digest, unchanged=True)
    try:
        try:
            await proven_config(client, target, known_config)
        except RegistryProtocolError:
            manifest = parse_manifest(await client.call(target, "GET", base + digest, "manifest"), digest)
            if not (isinstance(manifest, mf.Schema1Manifest) and manifest.config_digest == known_config):
                raise
    except RegistryProtocolError as exc:  # not served (404), not matching, not an image config
        return TagResolution(tag, digest, platform_digest, unchanged=True, unproven=True,
                             problem=_config_problem(known_config, exc))
    return TagResolution(tag, digest, platform_digest, known_config, unchanged=True)


def _config_problem(digest: str, exc: RegistryProtocolError) -> str:
    if isinstance(exc, BlobNotFoundError):
        return f"config blob {digest} is not in this repository (404)"
    return str(exc)


async def _resolve_content(
    client: RegistryClient, target: Target, tag: str, digest: str, reply: Reply, base: str,
    known_configs: Container[str],
) -> TagResolution:
    manifest = parse_manifest(reply, digest)
    platform_digest: str | None = None
    created: datetime | None = None
    if isinstance(manifest, mf.Index):
        kind = index_kind(
            artifact_type=manifest.artifact_type,
            entry_artifact_types=[e.artifact_type for e in manifest.manifests],
        )
        if kind == METADATA:
            return TagResolution(tag, digest, kind=METADATA)
        created = mf.parse_created(manifest.annotations.get(mf.CREATED_ANNOTATION))
        entry = mf.choose_platform(manifest, client.platform)
        if entry is None:
            have = ", ".join(mf.platforms(manifest)) or "no platform manifests"
            note = f"no manifest for {client.platform} in the index; it has {have}"
            return TagResolution(tag, digest, note=note, created=created)
        platform_digest = entry.digest
        try:
            child = await client.call(target, "GET", base + entry.digest, "manifest")
        except ManifestNotFoundError:
            problem = (
                f"the index names {entry.digest} for {client.platform}, which the registry "
                "does not have"
            )
            return TagResolution(tag, digest, platform_digest, problem=problem)
        manifest = parse_manifest(child, entry.digest)
        if isinstance(manifest, mf.Index):
            note = "the index entry for the platform is itself an index"
            return TagResolution(tag, digest, platform_digest, note=note, created=created)
    if isinstance(manifest, mf.Schema1Manifest):
        # the config is inside the manifest this repository just served: proven by nature
        config_digest = manifest.config_digest
        layer = None if config_digest in known_configs else manifest.layer()
        return TagResolution(tag, digest, platform_digest, config_digest, layer)
    created = mf.parse_created(manifest.annotations.get(mf.CREATED_ANNOTATION)) or created
    kind = manifest_kind(
        artifact_type=manifest.artifact_type, config_type=manifest.config.media_type,
        layer_types=manifest.layer_types,
    )
    if kind == METADATA:
        return TagResolution(tag, digest, platform_digest, kind=METADATA)
    if kind == ARTIFACT:
        what = manifest.artifact_type or manifest.config.media_type
        note = f"not a container image ({what})"
        return TagResolution(tag, digest, platform_digest, kind=ARTIFACT, created=created, note=note)
    config_digest = manifest.config.digest
    if config_digest in known_configs:
        return TagResolution(tag, digest, platform_digest, config_digest, created=created)
    try:
        layer = await proven_config(client, target, config_digest)
    except RegistryProtocolError as exc:
        return TagResolution(tag, digest, platform_digest, problem=_config_problem(config_digest, exc))
    return TagResolution(tag, digest, platform_digest, config_digest, layer, created=created)


def parse_manifest(reply: Reply, digest: str) -> mf.Manifest:
    try:
        manifest = mf.parse_manifest(reply.body, reply.headers.get("Content-Type"))
    except RegistryProtocolError as exc:
        raise RegistryProtocolError(f"manifest {digest}: {exc}", transient=False) from None
    # Schema 1 digests cover the payload without its signatures, so the body cannot be
    # checked against them; its config is hashed from the content itself (Schema1Manifest).
    if not isinstance(manifest, mf.Schema1Manifest):
        problem = mf.content_problem(reply.body, digest)
        if problem is not None:
            raise RegistryProtocolError(f"manifest {digest}: {problem}", transient=False)
    return manifest


async def proven_config(client: RegistryClient, target: Target, digest: str) -> mf.Layer:
    """The parsed config blob `digest`, proven to be in the target repository by content: its
    registry served it (GET, with the target's credentials) and the bytes hash to `digest`.

    Once per (host, repository, digest) while this process remembers that proof, and at
    most once at a time; content parsed for another repository is reused, but never without
    this repository's own bytes (a HEAD would only be its claim). No request at all for a
    digest whose algorithm cannot be verified. Raises BlobNotFoundError when the repository
    does not serve the blob; RegistryProtocolError (not transient) when the bytes do not
    prove the digest or are not an image config.
    """
    unverifiable = mf.algorithm_problem(digest)
    if unverifiable is not None:
        raise RegistryProtocolError(f"config blob {digest}: {unverifiable}", transient=False)
    key = (target.host, target.repository, digest)
    cache = client.configs
    url = f"{client.base_url(target.host)}/v2/{target.repository}/blobs/{digest}"
    lock = cache.lock(key)
    try:
        async with lock:
            layer = cache.layer(digest)
            if layer is not None and cache.is_confirmed(key):
                return layer
            reply = await client.call(target, "GET", url, "blob", limit=MAX_CONFIG_BYTES)
            problem = mf.content_problem(reply.body, digest)
            if problem is not None:
                raise RegistryProtocolError(f"config blob {digest}: {problem}", transient=False)
            if layer is None:
                try:
                    layer = mf.parse_config_blob(reply.body)
                except RegistryProtocolError as exc:
                    raise RegistryProtocolError(f"config blob {digest}: {exc}", transient=False) from None
                cache.put(digest, layer, len(reply.body))
            cache.confirm(key)
            return layer
    finally:
        cache.unlock(key, lock)
