"""The one rule of which tags are images (core/artifacts.py): by name and by content."""

from __future__ import annotations

import pytest

from core.artifacts import (
    ARTIFACT,
    IMAGE,
    METADATA,
    index_kind,
    is_metadata_tag,
    is_metadata_type,
    manifest_kind,
)

HEX = "ab" * 32
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY = "application/vnd.oci.empty.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
HELM = "application/vnd.cncf.helm.config.v1+json"


@pytest.mark.parametrize(
    ("tag", "metadata"),
    [
        (f"sha256-{HEX}.sig", True), (f"sha256-{HEX}.att", True), (f"sha256-{HEX}.sbom", True),
        (f"sha256-{HEX}", True),  # the OCI referrers fallback tag
        (f"sha256-{HEX}.txt", False), ("sha256-abc.sig", False), ("latest", False), ("v1.sig", False),
    ],
)
def test_metadata_tag_names(tag: str, metadata: bool) -> None:
    assert is_metadata_tag(tag) is metadata


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.cosign.artifact.sbom.v1+json",
        "application/vnd.dsse.envelope.v1+json",
        "application/vnd.in-toto+json",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "text/spdx", "text/spdx+json", "application/spdx+json",
        "application/vnd.cyclonedx", "application/vnd.cyclonedx+json", "application/vnd.syft+json",
        "application/vnd.cncf.notary.signature",
        "Application/Vnd.In-Toto+JSON",  # media types are case-insensitive
    ],
)
def test_metadata_media_types(media_type: str) -> None:
    assert is_metadata_type(media_type)


@pytest.mark.parametrize(
    "media_type", [None, "", OCI_CONFIG, DOCKER_CONFIG, OCI_LAYER, EMPTY, "application/jose+json",
                   "application/vnd.cncf.helm.config.v1+json"],
)
def test_other_media_types(media_type: str | None) -> None:
    assert not is_metadata_type(media_type)


@pytest.mark.parametrize(
    ("artifact_type", "config_type", "layers", "kind"),
    [
        (None, DOCKER_CONFIG, [OCI_LAYER, OCI_LAYER], IMAGE),
        (None, OCI_CONFIG, [], IMAGE),
        (None, "", [OCI_LAYER], IMAGE),  # no config media type: an old Docker manifest
        # cosign keeps an image config type: its layers tell
        (None, OCI_CONFIG, ["application/vnd.dev.cosign.simplesigning.v1+json"], METADATA),
        (None, OCI_CONFIG, ["application/vnd.dsse.envelope.v1+json"], METADATA),
        (None, OCI_CONFIG, ["text/spdx+json", "application/vnd.cyclonedx+json"], METADATA),
        # a metadata layer beside image layers does not hide an image
        (None, OCI_CONFIG, [OCI_LAYER, "text/spdx+json"], IMAGE),
        (BUNDLE, EMPTY, [BUNDLE], METADATA),
        ("application/vnd.cncf.notary.signature", EMPTY, ["application/jose+json"], METADATA),
        (None, "application/vnd.cncf.notary.signature", ["application/cose"], METADATA),
        (None, HELM, ["application/vnd.cncf.helm.chart.content.v1.tar+gzip"], ARTIFACT),
        ("application/vnd.example.thing", EMPTY, ["application/octet-stream"], ARTIFACT),
        (None, "application/vnd.wasm.config.v1+json", ["application/vnd.wasm.content.layer.v1+wasm"], ARTIFACT),
    ],
)
def test_manifest_kind(artifact_type: str | None, config_type: str, layers: list[str], kind: str) -> None:
    assert manifest_kind(artifact_type=artifact_type, config_type=config_type, layer_types=layers) == kind


def test_index_kind() -> None:
    bundle = "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert index_kind(artifact_type=None, entry_artifact_types=[bundle, bundle]) == METADATA
    assert index_kind(artifact_type=bundle, entry_artifact_types=[None]) == METADATA
    assert index_kind(artifact_type=None, entry_artifact_types=[None, None]) == IMAGE
    assert index_kind(artifact_type=None, entry_artifact_types=[bundle, None]) == IMAGE
    assert index_kind(artifact_type=None, entry_artifact_types=[]) == IMAGE
