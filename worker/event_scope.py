"""Which images a webhook event may change (SPEC §1, §3): the scope of its sender.

An event names a (registry host, repository); the images it is about are those registered
for exactly that pair whose access is proven (`access_proven`: their own credentials, or
anonymous access, were accepted there). Of those:
- an event from an operator receiver (`account_id` NULL) is a fact for all of them: its
  secret is bound to that host (api/webhooks.py). A build event changes none of the shared
  catalog's: builds are the sender's, never the catalog's.
- an event from an account receiver is a fact for that account's own images; for every other
  image (another account's, the catalog's) it is a hint: the image is synced at once with
  its own credentials, which reads the registry's truth (a tag the registry still lists stays,
  whatever the event said). Build states cannot be read back from a registry: a build event
  changes the sender's own images and no other.
- the image's tag policy (include/exclude) decides for a tag as in the sync; its max_tags
  needs the whole tag list and is left to the sync.

An unproven image learns nothing from an event; but if its registry last said the repository
does not exist (registered before its first push), or it has not finished a sync yet, the
event makes its sync due at once: with its own credentials, that sync proves access and reads
the tags, or fails as before. An image whose credentials were refused is not synced again by
events, so its owner cannot learn another account's push times from its sync log.

A push, sync or build event from an operator receiver on the service's own registry
(TUTUM_REGISTRY_HOST) with no proven image creates one for the account named by the
repository's first path component, proven (the service runs that registry).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import structlog

from core import webhooks as wh
from core.artifacts import is_metadata_tag
from core.names import HUB_HOST, InvalidNameError, parse_image_name
from core.registries import ensure_registry
from core.settings import Settings
from core.tag_policy import TagPolicy, effective

log = structlog.get_logger("worker.event_scope")

Place = tuple[str, str]  # (registry host, repository)


@dataclass(frozen=True)
class Image:
    id: int
    owner_id: int | None  # None: the shared catalog
    policy: TagPolicy


@dataclass(frozen=True)
class Reach:
    """What one event may do: change `facts`, make `hints` look; else `note` says why not
    (`applied`: the event still counts as done, e.g. unproven images are synced instead)."""

    facts: list[int] = field(default_factory=list)
    hints: list[int] = field(default_factory=list)
    note: str | None = None
    applied: bool = False


# The images of the events' (host, repository) pairs, locked in id order (worker/locks.py):
# one statement, so the flags read are those of the locked rows.
MATCH_IMAGES_SQL = """
SELECT i.id, r.host, i.repository, i.access_proven, i.tag_policy, i.owner_id
  FROM images AS i JOIN registries AS r ON r.id = i.registry_id
  JOIN unnest($1::text[], $2::text[]) AS w (host, repository)
    ON r.host = w.host AND i.repository = w.repository
 ORDER BY i.id
   FOR UPDATE OF i
"""
# Unproven images that may just be waiting for their repository to exist (see above).
REQUEST_PROOF_SQL = """
UPDATE images SET sync_requested_at = now(), next_sync_at = LEAST(next_sync_at, now())
 WHERE id = ANY ($1::bigint[]) AND NOT access_proven
   AND (sync_error IS NULL OR sync_error LIKE 'RepositoryNotFoundError:%')
RETURNING id
"""


ACCOUNT_SQL = "SELECT id FROM accounts WHERE username = $1"
# The owner's image on the service's own registry: created, or proven if it was there.
OWN_IMAGE_SQL = """
INSERT INTO images (name, owner_id, registry_id, repository, is_private_image, next_sync_at, access_proven)
VALUES ($1, $2, $3, $4, true, now(), true)
ON CONFLICT ON CONSTRAINT images_owner_name_key DO UPDATE SET access_proven = true
RETURNING id
"""


class Scope:
    """The images of one batch's events, locked, and the rule above (`reach`)."""

    def __init__(self) -> None:
        self.images: dict[Place, list[Image]] = {}
        self.proving: dict[Place, int] = {}  # unproven images synced for their proof
        self.notes: dict[Place, str] = {}  # why the own registry got no image
        self.to_sync: list[int] = []

    @classmethod
    async def lock(cls, conn: asyncpg.Connection, settings: Settings, events: list[asyncpg.Record]) -> Scope:
        """Lock the images of the events' places, create those of the own registry, request
        the proofs (in `to_sync`: run after the commit)."""
        scope = cls()
        places = sorted({(e["host"], e["repository"]) for e in events})
        matched = await conn.fetch(MATCH_IMAGES_SQL, [p[0] for p in places], [p[1] for p in places])
        for m in matched:
            if m["access_proven"]:
                policy = effective(m["tag_policy"], is_hub=m["host"] == HUB_HOST, hub_default_max_tags=0)
                scope.images.setdefault((m["host"], m["repository"]), []).append(Image(m["id"], m["owner_id"], policy))
        await scope._create_on_own_registry(conn, settings, events)
        unproven = [m["id"] for m in matched if not m["access_proven"]]
        scope.to_sync = [r["id"] for r in await conn.fetch(REQUEST_PROOF_SQL, unproven)] if unproven else []
        for m in matched:
            if m["id"] in scope.to_sync:
                place = (m["host"], m["repository"])
                scope.proving[place] = scope.proving.get(place, 0) + 1
        return scope

    def reach(self, ev: asyncpg.Record) -> Reach:
        """The images `ev` changes (facts) and those it makes look (hints), by the rule of
        the module's docstring."""
        place: Place = (ev["host"], ev["repository"])
        kind, tag, sender = ev["kind"], ev["tag"], ev["account_id"]
        if kind in (wh.PUSH, wh.BUILD_STATE) and tag and is_metadata_tag(tag):
            return Reach(note=f"{tag} names a signature, attestation or SBOM, not an image tag")
        images = self.images.get(place, [])
        if not images:
            if n := self.proving.get(place):
                return Reach(note=f"no image with proven access; {n} unproven image(s) of the repository are"
                                  " synced instead", applied=True)
            return Reach(note=self.notes.get(place) or f"no image with proven access to {place[0]}/{place[1]}"
                                                       " is registered")
        if kind in (wh.PUSH, wh.BUILD_STATE) and tag:
            images = [i for i in images if i.policy.allows(tag)]
            if not images:
                return Reach(note=f"the tag policy of every image of the repository excludes {tag}")
        if sender is None:
            facts = [i.id for i in images if kind != wh.BUILD_STATE or i.owner_id is not None]
            hints: list[int] = []
        else:
            facts = [i.id for i in images if i.owner_id == sender]
            hints = [i.id for i in images if i.owner_id != sender] if kind != wh.BUILD_STATE else []
        if facts:
            return Reach(facts, hints)
        if hints:
            return Reach([], hints, f"a hint for {len(hints)} image(s) of others: synced with their own credentials",
                         applied=True)
        if kind == wh.BUILD_STATE:
            return Reach(note="a build event changes only its sender's own images, never the shared catalog")
        return Reach(note="no image of the sender's with proven access is registered")

    async def _create_on_own_registry(
        self, conn: asyncpg.Connection, settings: Settings, events: Iterable[asyncpg.Record],
    ) -> None:
        """Create (or mark proven) the owner's image for each repository of the service's own
        registry that an operator's push, sync or build event names and no proven image has
        (SPEC §1); a note per repository that has no owning account."""
        own = settings.tutum_registry_host.strip().lower()
        wanted = sorted({
            (e["host"], e["repository"]) for e in events
            if own and e["host"] == own and e["account_id"] is None and e["kind"] in (wh.PUSH, wh.SYNC, wh.BUILD_STATE)
        } - set(self.images))
        for host, repository in wanted:  # in name order: concurrent batches insert alike
            owner = repository.split("/", 1)[0]
            account_id = await conn.fetchval(ACCOUNT_SQL, owner)
            if account_id is None:
                self.notes[(host, repository)] = (
                    f"repository {repository} on the service's registry: no account named {owner!r}")
                log.warning("webhook.unknown_account", repository=repository, account=owner)
                continue
            try:
                name = parse_image_name(f"{host}/{repository}")
            except InvalidNameError as exc:
                self.notes[(host, repository)] = f"not a valid image name: {exc}"
                continue
            registry_id = await ensure_registry(conn, name.host, settings)
            image_id = await conn.fetchval(OWN_IMAGE_SQL, name.name, account_id, registry_id, name.repository)
            self.images[(host, repository)] = [Image(image_id, account_id, TagPolicy())]
            log.info("webhook.image_created", image=name.name, account=owner)

