"""Pure parsing of tag lists: their pages, the Link to the next page, and the cap on how
many names a sync keeps. No I/O (tests/worker/test_manifests.py)."""

from __future__ import annotations

import bisect
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

from core.artifacts import is_metadata_tag
from core.names import TAG_RE, is_digest
from worker.registry.errors import RegistryProtocolError
from worker.registry.manifests import load_object

_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;[^,]*?\brel\s*=\s*"?next"?', re.IGNORECASE)


def filter_tags(tags: Any) -> list[str]:
    """Tags in registry order, deduplicated, without empty/null entries, digest-shaped
    entries, metadata tags (core.artifacts: cosign sha256-<hex>.sig|.att|.sbom, the referrers
    fallback sha256-<hex>) and invalid names."""
    if not isinstance(tags, list):
        return []
    kept: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str) or not tag or is_digest(tag):
            continue
        if is_metadata_tag(tag) or not TAG_RE.fullmatch(tag):
            continue
        kept[tag] = None
    return list(kept)


class FirstNames:
    """The first `limit` distinct names in code-point order among all names offered, holding
    no more than `limit` of them at any time (a tag list can be endless)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.names: list[str] = []
        self.truncated = False
        self._kept: set[str] = set()

    def update(self, names: list[str]) -> None:
        for name in names:
            if name in self._kept:
                continue
            if len(self.names) >= self.limit:
                self.truncated = True
                if not self.names or name > self.names[-1]:
                    continue
                self._kept.discard(self.names.pop())
            bisect.insort(self.names, name)
            self._kept.add(name)


def parse_tags_page(body: bytes) -> list[str]:
    """The raw `tags` of a tags/list page (filtered); a null or missing list is []."""
    data = load_object(body, "tags list")
    tags = data.get("tags")
    if tags is not None and not isinstance(tags, list):
        raise RegistryProtocolError("tags list `tags` is not a list")
    return filter_tags(tags)


def next_link(header: str | None, request_url: str) -> str | None:
    """The absolute URL of the `rel="next"` Link, resolved against the request URL.
    Raises RegistryProtocolError (permanent) when it points at another host."""
    if not header:
        return None
    match = _LINK_NEXT_RE.search(header)
    if not match:
        return None
    target = urljoin(request_url, match.group(1).strip())
    here, there = urlsplit(request_url), urlsplit(target)
    if (here.scheme, here.netloc.lower()) != (there.scheme, there.netloc.lower()):
        raise RegistryProtocolError(
            f"tags list pagination points at another host ({there.netloc}); refused",
            transient=False,
        )
    return target
