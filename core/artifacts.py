"""Which tags are images (SPEC §2 "Not every tag is an image").

Signatures, attestations and SBOMs are metadata about other tags: they are never listed as
tags and never move an image's state or last_build_date, on the polling path and the
webhook path alike. Other OCI artifacts (a Helm chart, anything whose config is not an image
config) are tags without a layer. This module is the one place that says so, twice:

- by *name* (`is_metadata_tag`), before anything is fetched: cosign's tag scheme and the
  OCI referrers fallback tag;
- by *content* (`manifest_kind`), once a manifest is read: its `artifactType`, its config
  media type and its layers' media types.

Media types, from the projects that define them: cosign (sigstore/cosign specs/
SIGNATURE_SPEC.md, ATTESTATION_SPEC.md, SBOM_SPEC.md, BUNDLE_SPEC.md, pkg/types/media.go),
the in-toto attestation framework and DSSE, the Notary Project (notaryproject/specifications
specs/signature-specification.md), and the OCI image spec (artifact guidance, the empty
descriptor).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# cosign: sha256-<hex>.sig / .att / .sbom; the OCI referrers fallback tag: sha256-<hex>
_METADATA_TAG_RE = re.compile(r"sha256-[0-9a-f]{64}(?:\.(?:sig|att|sbom))?")

IMAGE, ARTIFACT, METADATA = "image", "artifact", "metadata"

IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json"}
)

# Exact media types of metadata, compared without parameters (`;version=0.2`).
_METADATA_TYPES = frozenset(
    {
        "application/vnd.dsse.envelope.v1+json",  # DSSE envelope (cosign attestations)
        "application/vnd.in-toto+json",  # in-toto statements (cosign, buildkit attestations)
        "text/spdx",
        "text/spdx+json",
        "text/spdx+xml",
        "application/spdx+json",
        "application/vnd.cyclonedx",
        "application/vnd.cyclonedx+json",
        "application/vnd.cyclonedx+xml",
        "application/vnd.syft+json",
        "application/vnd.cncf.notary.signature",  # Notary Project (notation) signatures
        "application/vnd.cncf.notary.v2.signature",  # its ORAS-era artifact type
        "application/vnd.cncf.notary.config.v2+json",  # and its config type
    }
)
# Families of metadata types: every cosign type (simplesigning payloads, the OCI 1.1
# `artifact.sig` / `artifact.sbom` artifact types), every sigstore bundle version
# (`bundle+json;version=0.2`, `bundle.v0.3+json`), in-toto predicates.
_METADATA_PREFIXES = (
    "application/vnd.dev.cosign.",
    "application/vnd.dev.sigstore.bundle",
    "application/vnd.in-toto.",
)


def is_metadata_tag(tag: str) -> bool:
    """True for a tag name that names metadata about another manifest, not an image."""
    return _METADATA_TAG_RE.fullmatch(tag) is not None


def is_metadata_type(media_type: str | None) -> bool:
    """True for the media type of a signature, an attestation, an SBOM or a sigstore bundle."""
    if not media_type:
        return False
    base = media_type.split(";")[0].strip().lower()
    return base in _METADATA_TYPES or base.startswith(_METADATA_PREFIXES)


def manifest_kind(
    *, artifact_type: str | None, config_type: str | None, layer_types: Iterable[str]
) -> str:
    """IMAGE, ARTIFACT or METADATA for an image manifest (Docker v2 / OCI).

    METADATA when its `artifactType` or config media type is a metadata type, or when it has
    layers and every one of them is (cosign keeps an image config type on its signature and
    attestation manifests; only their layers tell). IMAGE when the config is an image config
    (or has no media type, as in old Docker manifests). Anything else is an ARTIFACT.
    """
    if is_metadata_type(artifact_type) or is_metadata_type(config_type):
        return METADATA
    layers = list(layer_types)
    if layers and all(is_metadata_type(t) for t in layers):
        return METADATA
    if not config_type or config_type in IMAGE_CONFIG_TYPES:
        return IMAGE
    return ARTIFACT


def index_kind(*, artifact_type: str | None, entry_artifact_types: Iterable[str | None]) -> str:
    """METADATA for an index that is itself metadata or lists only metadata (a referrers
    list pushed under another name), else IMAGE (its platform entry decides the rest)."""
    if is_metadata_type(artifact_type):
        return METADATA
    types = list(entry_artifact_types)
    if types and all(is_metadata_type(t) for t in types):
        return METADATA
    return IMAGE
