"""Image paths carry names with slashes, so routing is by suffix (SPEC §1 Names).

`…/<name>/`                → the image
`…/<name>/tag/`            → its tags
`…/<name>/tag/<tag>/`      → one tag
`…/<name>/tag/<tag>/build/`→ re-sync one tag at top priority
`…/<name>/tag/<tag>/history/` → every digest the tag pointed at (api/history.py)
`…/<name>/sync/`           → sync status (an extension: last sync, its error, next run);
                              POST: re-sync the image at top priority

A path that reads both ways (`team/tag/app` is an image name, and tag `app` of `team`) is
the image when an image of the full name exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from core.names import ImageName, InvalidNameError, is_valid_tag, parse_image_name

COLLECTION, IMAGE, TAG_LIST, TAG, BUILD, SYNC = "collection", "image", "tags", "tag", "build", "sync"
HISTORY = "history"

ALLOWED: dict[str, tuple[str, ...]] = {
    COLLECTION: ("GET", "POST"),
    IMAGE: ("GET", "PATCH", "DELETE"),
    TAG_LIST: ("GET",),
    TAG: ("GET",),
    BUILD: ("POST",),
    SYNC: ("GET", "POST"),
    HISTORY: ("GET",),
}


@dataclass(frozen=True)
class Target:
    kind: str
    image: ImageName | None = None
    tag: str | None = None


def _name(parts: list[str]) -> ImageName | None:
    try:
        return parse_image_name("/".join(parts))
    except InvalidNameError:
        return None


@lru_cache(maxsize=8192)
def candidates(tail: str) -> tuple[tuple[Target, ...], str | None]:
    """Readings of the path after /api/v1/image/, full-name reading first.

    Returns (readings, problem): when no reading is valid, `problem` says why the name is not.
    Cached (the answer depends on the path alone): the handler and the metrics label of one
    request read it twice, and clients read the same images again and again.
    """
    tail = tail.removesuffix("/")
    if not tail:
        return (Target(COLLECTION),), None
    parts = tail.split("/")
    readings: list[Target] = []
    problem = None
    try:
        readings.append(Target(IMAGE, parse_image_name(tail)))
    except InvalidNameError as exc:
        problem = str(exc)
    n = len(parts)
    if n >= 2 and parts[-1] == "tag" and (img := _name(parts[:-1])):
        readings.append(Target(TAG_LIST, img))
    if n >= 2 and parts[-1] == "sync" and (img := _name(parts[:-1])):
        readings.append(Target(SYNC, img))
    if n >= 3 and parts[-2] == "tag" and is_valid_tag(parts[-1]) and (img := _name(parts[:-2])):
        readings.append(Target(TAG, img, parts[-1]))
    if (
        n >= 4 and parts[-1] == "build" and parts[-3] == "tag" and is_valid_tag(parts[-2])
        and (img := _name(parts[:-3]))
    ):
        readings.append(Target(BUILD, img, parts[-2]))
    if (
        n >= 4 and parts[-1] == "history" and parts[-3] == "tag" and is_valid_tag(parts[-2])
        and (img := _name(parts[:-3]))
    ):
        readings.append(Target(HISTORY, img, parts[-2]))
    return tuple(readings), problem
