"""Pure parsing of registry documents: manifests, indexes, image configs (tag lists: tags.py).

No I/O here; every function is tested on JSON fixtures (tests/worker/fixtures).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from core.names import is_digest
from worker.registry.errors import RegistryProtocolError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
# The same list on every HEAD and GET: without the OCI types distribution answers 404 for
# OCI content, without the list type it silently serves the linux/amd64 child.
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_V1_SIGNED]
)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_V1_SIGNED, DOCKER_V1})
CREATED_ANNOTATION = "org.opencontainers.image.created"

# Reproducible builds stamp these instead of a build time: anything up to the last one is
# "unknown" (no container image was built before 1980).
_PLACEHOLDER_LIMIT = datetime(1980, 1, 1, 0, 0, 1, tzinfo=UTC)
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class Layer:
    """The Tutum "layer" of a tag, read from an image config."""

    author: str = ""
    created: datetime | None = None  # tz-aware UTC; None if missing or a placeholder
    entrypoint: str = ""  # Entrypoint as a shell command line; "" if none
    run_command: str = ""  # Cmd likewise
    envvars: list[tuple[str, str]] = field(default_factory=list)
    labels: list[tuple[str, str]] = field(default_factory=list)  # sorted by key
    ports: list[tuple[int, str]] = field(default_factory=list)  # (port, "tcp"|"udp"), sorted
    volumes: list[str] = field(default_factory=list)  # sorted


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    @property
    def platform(self) -> str:
        """"os/arch[/variant]" as in PLATFORM; an entry without a platform is linux/amd64."""
        if self.os is None and self.architecture is None:
            return "linux/amd64"
        parts = [self.os or "unknown", self.architecture or "unknown"]
        return "/".join([*parts, self.variant] if self.variant else parts)


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: list[Descriptor]
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageManifest:
    """A Docker v2 schema 2 or OCI image manifest."""

    media_type: str
    config: Descriptor
    layer_types: tuple[str, ...] = ()
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Schema1Manifest:
    """A legacy schema 1 manifest: its config is history[0].v1Compatibility."""

    media_type: str
    v1_compatibility: str  # the JSON string, kept verbatim: its hash is the config digest

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.v1_compatibility.encode()).hexdigest()

    def layer(self) -> Layer:
        try:
            data = orjson.loads(self.v1_compatibility)
        except orjson.JSONDecodeError as exc:
            raise RegistryProtocolError("schema 1 v1Compatibility is not JSON") from exc
        if not isinstance(data, dict):
            raise RegistryProtocolError("schema 1 v1Compatibility is not a JSON object")
        return parse_config(data)


Manifest = Index | ImageManifest | Schema1Manifest


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# The digest algorithms whose hash proves content (the OCI image spec registers these two).
# A digest in any other algorithm is a name this service cannot check: it proves nothing.
PROOF_ALGORITHMS: dict[str, Callable[[bytes], Any]] = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def algorithm_problem(digest: str) -> str | None:
    """None when `digest` is in an algorithm whose hash this service checks; else why not."""
    algorithm = digest.partition(":")[0]
    if algorithm in PROOF_ALGORITHMS:
        return None
    return (f"its digest algorithm {algorithm[:32]!r} is not one this service verifies "
            f"({', '.join(PROOF_ALGORITHMS)}), so no content can prove it")


def content_problem(body: bytes, digest: str) -> str | None:
    """None when `body` hashes to `digest` under sha256 or sha512 (SPEC §1: a proof is
    content, not a claim); otherwise why these bytes do not prove `digest`, as a phrase."""
    algorithm, _, encoded = digest.partition(":")
    hasher = PROOF_ALGORITHMS.get(algorithm)
    if hasher is None:
        return algorithm_problem(digest)
    if hasher(body).hexdigest() != encoded:
        return "the content served does not hash to its digest"
    return None


def load_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RegistryProtocolError(f"{what} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise RegistryProtocolError(f"{what} is not a JSON object")
    return data


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _annotations(raw: dict[str, Any]) -> dict[str, str]:
    annotations = raw.get("annotations")
    if not isinstance(annotations, dict):
        return {}
    return {str(k): str(v) for k, v in annotations.items()}


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise RegistryProtocolError(f"{what} has no digest")
    if not is_digest(raw["digest"]):
        raise RegistryProtocolError(f"{what} has a malformed digest")
    platform = raw.get("platform")
    platform = platform if isinstance(platform, dict) else {}
    return Descriptor(
        media_type=str(raw.get("mediaType") or ""),
        digest=raw["digest"],
        os=_text(platform.get("os")),
        architecture=_text(platform.get("architecture")),
        variant=_text(platform.get("variant")),
        annotations=_annotations(raw),
        artifact_type=_text(raw.get("artifactType")),
    )


def _layer_types(data: dict[str, Any]) -> tuple[str, ...]:
    layers = data.get("layers")
    if not isinstance(layers, list):
        return ()
    return tuple(str(la.get("mediaType") or "") for la in layers if isinstance(la, dict))


def parse_manifest(body: bytes, content_type: str | None = None) -> Manifest:
    """Parse any supported manifest. The media type comes from the body's `mediaType`, else
    the Content-Type header, else the document's shape. Raises RegistryProtocolError."""
    data = load_object(body, "manifest")
    media = data.get("mediaType")
    if not isinstance(media, str) or not media:
        media = (content_type or "").split(";")[0].strip()
    if media not in INDEX_TYPES | IMAGE_TYPES | SCHEMA1_TYPES:
        if data.get("schemaVersion") == 1:
            media = DOCKER_V1_SIGNED
        elif "manifests" in data:
            media = OCI_INDEX
        elif "config" in data:
            media = OCI_MANIFEST
        else:
            raise RegistryProtocolError(f"unsupported manifest type {media or 'unknown'!r}")
    if media in INDEX_TYPES:
        entries = data.get("manifests")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise RegistryProtocolError("index `manifests` is not a list")
        return Index(
            media, [_descriptor(e, "index entry") for e in entries],
            artifact_type=_text(data.get("artifactType")), annotations=_annotations(data),
        )
    if media in IMAGE_TYPES:
        return ImageManifest(
            media, _descriptor(data.get("config"), "manifest config"), _layer_types(data),
            artifact_type=_text(data.get("artifactType")), annotations=_annotations(data),
        )
    history = data.get("history")
    if not isinstance(history, list) or not history or not isinstance(history[0], dict):
        raise RegistryProtocolError("schema 1 manifest has no history")
    compat = history[0].get("v1Compatibility")
    if not isinstance(compat, str):
        raise RegistryProtocolError("schema 1 history[0].v1Compatibility is not a string")
    return Schema1Manifest(media, compat)


def is_attestation(entry: Descriptor) -> bool:
    return (entry.os == "unknown" and entry.architecture == "unknown") or (
        entry.annotations.get("vnd.docker.reference.type") == "attestation-manifest"
    )


_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}


def choose_platform(index: Index, platform: str = "linux/amd64") -> Descriptor | None:
    """The entry of `index` for `platform` ("os/arch" or "os/arch/variant"), or None.

    An entry without a platform counts as linux/amd64; attestation entries are skipped.
    Variants are loose: an exact variant wins, then an entry without one (or with the
    architecture's default, e.g. arm64/v8), then any variant; first in index order wins ties.
    """
    parts = platform.split("/")
    want_os, want_arch = parts[0], parts[1] if len(parts) > 1 else "amd64"
    want_variant = parts[2] if len(parts) > 2 else None
    default_variant = _DEFAULT_VARIANTS.get(want_arch)
    best: tuple[int, Descriptor] | None = None
    for entry in index.manifests:
        if is_attestation(entry):
            continue
        os_ = entry.os or "linux"
        arch = entry.architecture or ("amd64" if entry.os is None else None)
        if os_ != want_os or arch != want_arch:
            continue
        variant = entry.variant
        if want_variant is not None and variant == want_variant:
            rank = 0
        elif variant is None or variant == default_variant:
            rank = 1
        else:
            rank = 2
        if best is None or rank < best[0]:
            best = (rank, entry)
    return best[1] if best else None


def platforms(index: Index) -> list[str]:
    """The platforms an index offers, in index order, without attestation entries."""
    return list(dict.fromkeys(e.platform for e in index.manifests if not is_attestation(e)))


def parse_created(value: Any) -> datetime | None:
    """A tz-aware UTC datetime, or None when missing, unreadable or a reproducible-build
    placeholder (1970-01-01, 1980-01-01T00:00:01Z, 0001-01-01)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _FRACTION_RE.sub(r"\1", value.strip())  # nanoseconds → microseconds
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return None if when <= _PLACEHOLDER_LIMIT else when


def _command_line(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return shlex.join(str(v) for v in value if v is not None)
    return ""


def _ports(value: Any) -> list[tuple[int, str]]:
    ports: set[tuple[int, str]] = set()
    if isinstance(value, dict):
        for key in value:
            number, _, proto = str(key).partition("/")
            proto = (proto or "tcp").lower()
            if proto not in ("tcp", "udp") or not number.isdigit():
                continue  # ranges and sctp have no place in the Tutum wire format
            port = int(number)
            if 0 < port < 65536:
                ports.add((port, proto))
    return sorted(ports)


def parse_config(data: dict[str, Any]) -> Layer:
    """The Layer of an image config (Docker, OCI, or a schema 1 v1Compatibility). Every
    field is optional and may be null."""
    config = data.get("config")
    if not isinstance(config, dict):
        config = {}
    env: list[tuple[str, str]] = []
    raw_env = config.get("Env")
    if isinstance(raw_env, list):
        for item in raw_env:
            if isinstance(item, str) and item:
                key, _, value = item.partition("=")
                env.append((key, value))
    raw_labels = config.get("Labels")
    labels = (
        sorted((str(k), "" if v is None else str(v)) for k, v in raw_labels.items())
        if isinstance(raw_labels, dict)
        else []
    )
    raw_volumes = config.get("Volumes")
    volumes = sorted(str(k) for k in raw_volumes) if isinstance(raw_volumes, dict) else []
    author = data.get("author")
    return Layer(
        author=author if isinstance(author, str) else "",
        created=parse_created(data.get("created")),
        entrypoint=_command_line(config.get("Entrypoint")),
        run_command=_command_line(config.get("Cmd")),
        envvars=env,
        labels=labels,
        ports=_ports(config.get("ExposedPorts")),
        volumes=volumes,
    )


def parse_config_blob(body: bytes) -> Layer:
    return parse_config(load_object(body, "image config"))
