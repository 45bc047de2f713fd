"""Which tags are images (SPEC §2 "Not every tag is an image").

Signatures, attestations and SBOMs are metadata about other tags: they are never listed as
tags and never move an image's state or last_build_date, on the polling path and the
webhook path alike. This module is the one place that says which tag *names* are such
metadata, so both paths apply the same rule before anything is fetched.
"""

from __future__ import annotations

import re

# cosign: sha256-<hex>.sig / .att / .sbom; the OCI referrers fallback tag: sha256-<hex>
_METADATA_TAG_RE = re.compile(r"sha256-[0-9a-f]{64}(?:\.(?:sig|att|sbom))?")


def is_metadata_tag(tag: str) -> bool:
    """True for a tag name that names metadata about another manifest, not an image."""
    return _METADATA_TAG_RE.fullmatch(tag) is not None
