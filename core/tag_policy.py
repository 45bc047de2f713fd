"""Which tags of an image are synced: its tag policy (an extension of the Tutum API).

`{"include": ["3.*", "latest"], "exclude": ["*-rc*"], "max_tags": 20}`, set on POST/PATCH
of an image, shown at `…/sync/`. A tag is synced when it matches an `include` glob (none
given: every tag) and no `exclude` glob (shell-style: `*`, `?`, `[…]`, case-sensitive, as
Quay's repository mirroring and Harbor's replication filters); of those, at most `max_tags`:
the most recently pushed on Docker Hub (its tags API knows), elsewhere the greatest in
natural order (`3.10` after `3.9`), which is the newest for versioned tags.

An image without a policy keeps every tag, except on Docker Hub, where the default is the
most recent HUB_DEFAULT_MAX_TAGS tags: a huge repository (`python`, `node`: thousands of
tags) can then be synced within Docker Hub's pull limit.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,128}")
MAX_PATTERNS = 50
MAX_TAGS_LIMIT = 10_000
_KEYS = ("include", "exclude", "max_tags")
_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class TagPolicy:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_tags: int | None = None

    def allows(self, tag: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(tag, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(tag, p) for p in self.exclude)

    def to_json(self) -> dict[str, Any]:
        return {"include": list(self.include), "exclude": list(self.exclude), "max_tags": self.max_tags}


def parse(data: object) -> TagPolicy:
    """A policy from its JSON form; ValueError with a sentence naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError('must be an object like {"include": ["v*"], "exclude": [], "max_tags": 20}')
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ValueError(f"has unknown key {unknown[0]!r} (known: include, exclude, max_tags)")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("include", "exclude"):
        raw = data.get(key) or []
        if not isinstance(raw, list) or len(raw) > MAX_PATTERNS:
            raise ValueError(f"{key} must be a list of at most {MAX_PATTERNS} glob patterns")
        for p in raw:
            if not isinstance(p, str) or not PATTERN.fullmatch(p):
                raise ValueError(
                    f"{key} has an invalid pattern {p!r}: tag characters and * ? [ ] !, 1-128 long"
                )
        lists[key] = tuple(raw)
    max_tags = data.get("max_tags")
    if max_tags is not None and (
        isinstance(max_tags, bool) or not isinstance(max_tags, int) or not 1 <= max_tags <= MAX_TAGS_LIMIT
    ):
        raise ValueError(f"max_tags must be a whole number from 1 to {MAX_TAGS_LIMIT}, or null")
    return TagPolicy(lists["include"], lists["exclude"], max_tags)


def effective(stored: object, *, is_hub: bool, hub_default_max_tags: int) -> TagPolicy:
    """The policy in force: the stored one, else the default (Docker Hub: the most recent
    `hub_default_max_tags` tags; elsewhere every tag). A stored policy that no longer
    parses counts as none."""
    if stored is not None:
        try:
            return parse(stored)
        except ValueError:
            pass
    return TagPolicy(max_tags=hub_default_max_tags or None) if is_hub else TagPolicy()


def natural_key(tag: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing runs of digits as numbers: 3.9 < 3.10 < latest."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBER.split(tag) if part)
