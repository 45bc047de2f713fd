"""Push webhooks: sender formats → normalized events (sender authentication is in
core/webhook_auth.py, the readers of single fields in core/payload_fields.py).

Pure functions shared by the API (which authenticates, parses and stores events) and the
worker (which applies them). Each parser takes the decoded JSON body and returns the
events worth storing, each with a `dedupe_key`: the sender's event id where it has one, else
a hash of the fields that identify one delivery (REGISTRY-NOTES, "Webhooks we receive").
Noise (pulls, blob pushes, manifests pushed by digest without a tag) yields no event.
A body that is not what the sender documents raises MalformedPayloadError, whose message is
a sentence for the sender's operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from core.names import HUB_HOST, InvalidNameError, is_digest, parse_image_name
from core.payload_fields import MalformedPayloadError as MalformedPayloadError
from core.payload_fields import build_id as _build_id
from core.payload_fields import content_key as _content_key
from core.payload_fields import digest as _digest
from core.payload_fields import listed as _list
from core.payload_fields import load_json as load_json
from core.payload_fields import normalize_target as normalize_target
from core.payload_fields import obj as _obj
from core.payload_fields import parse_time as parse_time
from core.payload_fields import tag as _tag
from core.payload_fields import text as _str

# Receivers (also the `source` column of webhook_events).
REGISTRY, DOCKERHUB, HARBOR, QUAY, BUILD = "registry", "dockerhub", "harbor", "quay", "build"
GITHUB = "github"
SOURCES = (REGISTRY, DOCKERHUB, HARBOR, QUAY, BUILD, GITHUB)

# What an event asks for (the `kind` column).
PUSH = "push"  # a tag now points at `digest`
DELETE_TAG = "delete_tag"  # `tag` is gone
DELETE_MANIFEST = "delete_manifest"  # every tag pointing at `digest` is gone
DELETE_REPOSITORY = "delete_repository"  # every tag is gone
SYNC = "sync"  # something was pushed (no digest known): sync the image now
BUILD_STATE = "build"  # `tag`'s build state is `build_state` since `occurred_at`
KINDS = (PUSH, DELETE_TAG, DELETE_MANIFEST, DELETE_REPOSITORY, SYNC, BUILD_STATE)

BUILDING, SUCCESS, FAILED = "Building", "Success", "Failed"
# over without a result of its own (Quay's cancelled build): the tag shows what the registry has
ENDED = "ended"
GENERIC_STATUSES = {"building": BUILDING, "success": SUCCESS, "failed": FAILED}
QUAY_BUILD_EVENTS = {
    "build_queued": BUILDING,
    "build_start": BUILDING,
    "build_success": SUCCESS,
    "build_failure": FAILED,
    "build_cancelled": ENDED,  # stopped: as the build API's `cancelled` (worker/builds.py)
}
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})
# Quay's repo_push carries neither an id nor a time: identical bodies within this many
# seconds are one delivery (its effect, a sync, is idempotent anyway).
QUAY_DEDUPE_WINDOW_SECONDS = 60
SIGNATURE_HEADERS = ("X-Signature-256", "X-Hub-Signature-256")

@dataclass(frozen=True)
class WebhookEvent:
    source: str
    dedupe_key: str
    kind: str
    host: str  # registry host as in image names; HUB_HOST for Docker Hub
    repository: str  # path on the registry: team/app, library/ubuntu
    tag: str | None = None
    digest: str | None = None
    build_state: str | None = None
    occurred_at: datetime | None = None  # the sender's time; None: when the database stores it
    # this event's own fields as the sender gave them, for the record: never a whole body that
    # names many events (one request may name up to WEBHOOK_MAX_EVENTS)
    payload: Mapping[str, Any] = field(default_factory=dict)
    build_id: str | None = None  # the sender's build id: events of one build only move forward


# ------------------------------------------------------------------ CNCF distribution


def parse_registry(body: Any, *, host: str | None = None) -> list[WebhookEvent]:
    """A CNCF distribution notification envelope `{"events": [...]}`.

    The registry host is `host` when the receiver gives one (an operator receiver's bound
    host; an account receiver's `?host=`), else the event's `request.host` (the Host header
    the pusher used), else the host of `target.url`.
    """
    envelope = _obj(body, "the body")
    events = _list(envelope.get("events"), "events")
    out: list[WebhookEvent] = []
    for i, raw in enumerate(events):
        what = f"events[{i}]"
        ev = _obj(raw, what)
        action = _str(ev, "action", what)
        if action not in ("push", "delete"):
            continue  # pull, mount: not a change
        event_id = _str(ev, "id", what)
        target = _obj(ev.get("target"), f"{what}.target")
        media = target.get("mediaType")
        if action == "push" and media not in MANIFEST_TYPES:
            continue  # blob upload
        raw_request = ev.get("request")
        request: dict[str, Any] = raw_request if isinstance(raw_request, dict) else {}
        where = host or request.get("host") or urlsplit(str(target.get("url") or "")).netloc
        if not where:
            raise MalformedPayloadError(f"{what} names no registry host (request.host or target.url)")
        repo = _str(target, "repository", f"{what}.target")
        assert repo is not None
        where, repo = normalize_target(where, repo, what)
        tag = _tag(_str(target, "tag", f"{what}.target", required=False), f"{what}.target.tag")
        digest = _digest(_str(target, "digest", f"{what}.target", required=False), f"{what}.target.digest")
        if action == "push":
            if digest is None:
                raise MalformedPayloadError(f"{what}: a manifest push without target.digest")
            if tag is None:
                continue  # a platform manifest pushed by digest: not a tag
            kind = PUSH
        elif tag is not None:
            kind, digest = DELETE_TAG, None
        elif digest is not None:
            kind = DELETE_MANIFEST
        else:
            kind = DELETE_REPOSITORY
        out.append(WebhookEvent(
            REGISTRY, f"{REGISTRY}:{event_id}", kind, where, repo, tag, digest,
            occurred_at=parse_time(ev.get("timestamp"), f"{what}.timestamp"), payload=ev,
        ))
    return out


# ------------------------------------------------------------------ Docker Hub


def parse_dockerhub(body: Any, *, host: str | None = None) -> list[WebhookEvent]:
    """A Docker Hub repository webhook: a tag was pushed (no digest, no deletes)."""
    doc = _obj(body, "the body")
    push = _obj(doc.get("push_data"), "push_data")
    repo_obj = _obj(doc.get("repository"), "repository")
    repo_name = _str(repo_obj, "repo_name", "repository")
    assert repo_name is not None
    where, repo = normalize_target(host or HUB_HOST, repo_name, "repository.repo_name")
    tag = _tag(_str(push, "tag", "push_data", required=False), "push_data.tag")
    pushed_at = parse_time(push.get("pushed_at"), "push_data.pushed_at")
    # Several deliveries of one push are identical in these fields.
    key = _content_key(DOCKERHUB, where, repo, tag, push.get("pushed_at"))
    return [WebhookEvent(DOCKERHUB, key, SYNC, where, repo, tag, None, occurred_at=pushed_at, payload=doc)]


# ------------------------------------------------------------------ Harbor


_HARBOR_TYPES = {
    "PUSH_ARTIFACT": PUSH, "DELETE_ARTIFACT": DELETE_MANIFEST,
    "harbor.artifact.pushed": PUSH, "harbor.artifact.deleted": DELETE_MANIFEST,
}


def parse_harbor(body: Any, *, host: str | None = None) -> list[WebhookEvent]:
    """Harbor v2, default format or CloudEvents (`specversion`). A deleted artifact is a
    delete of its digest (Harbor names only the artifact's first tag). Other event types
    (scans, quotas, replication) are not changes of tags and yield nothing."""
    doc = _obj(body, "the body")
    cloud = "specversion" in doc
    event_type = _str(doc, "type", "the body")
    if cloud:
        event_id = _str(doc, "id", "the body")
        occurred = parse_time(doc.get("time"), "time")
        data = _obj(doc.get("data"), "data")
    else:
        event_id = None
        occurred = parse_time(doc.get("occur_at"), "occur_at")
        data = _obj(doc.get("event_data"), "event_data")
    kind = _HARBOR_TYPES.get(event_type or "")
    if kind is None:
        return []
    repo_obj = _obj(data.get("repository"), "event_data.repository")
    full = _str(repo_obj, "repo_full_name", "event_data.repository", required=False)
    if full is None:
        ns = _str(repo_obj, "namespace", "event_data.repository")
        name = _str(repo_obj, "name", "event_data.repository")
        full = f"{ns}/{name}"
    resources = _list(data.get("resources"), "event_data.resources")
    out: list[WebhookEvent] = []
    for i, raw in enumerate(resources):
        what = f"event_data.resources[{i}]"
        res = _obj(raw, what)
        digest = _digest(_str(res, "digest", what), f"{what}.digest")
        raw_tag = _str(res, "tag", what, required=False)
        # Harbor puts the digest in `tag` when the artifact was pushed by digest.
        tag = None if raw_tag is None or raw_tag == digest or is_digest(raw_tag) else _tag(raw_tag, f"{what}.tag")
        url = (_str(res, "resource_url", what, required=False) or "").split("://", 1)[-1]
        where = host or (url.split("/", 1)[0] if "/" in url else None)
        if not where:
            raise MalformedPayloadError(f"{what}.resource_url names no registry host")
        where, repo = normalize_target(where, full, "event_data.repository.repo_full_name")
        if kind == PUSH and tag is None:
            continue  # pushed by digest: not a tag
        key = (
            f"{HARBOR}:{event_id}:{i}" if event_id
            else _content_key(HARBOR, event_type, doc.get("occur_at"), where, repo, digest, tag)
        )
        # A deleted artifact names only its first tag: every tag at its digest is gone.
        own = {"type": event_type, "id": event_id, "time": doc.get("time" if cloud else "occur_at"),
               "repository": full, "resource": {"digest": digest, "tag": raw_tag, "resource_url": url}}
        out.append(WebhookEvent(
            HARBOR, key, kind, where, repo, tag if kind == PUSH else None, digest,
            occurred_at=occurred, payload=_bounded(own),
        ))
    return out


# ------------------------------------------------------------------ Quay


def parse_quay(
    body: Any, *, host: str | None = None, event: str | None = None, now: datetime | None = None,
) -> list[WebhookEvent]:
    """Quay `repo_push` (→ a sync) and build notifications (→ build states of docker_tags).

    Quay's bodies do not name their event: a build notification's URL must say which one
    (`?event=build_success`), except failures, which carry `error_message`."""
    doc = _obj(body, "the body")
    repo_name = _str(doc, "repository", "the body")
    assert repo_name is not None
    docker_url = _str(doc, "docker_url", "the body", required=False) or ""
    where = host or (docker_url.split("/", 1)[0] if "/" in docker_url else "quay.io")
    where, repo = normalize_target(where, repo_name, "repository")
    build_id = _build_id(doc.get("build_id"), "build_id")
    if event not in (None, "", "repo_push") and event not in QUAY_BUILD_EVENTS:
        raise MalformedPayloadError(f"unknown Quay event {event!r}")
    if build_id is None:
        updated = doc.get("updated_tags")
        if updated is None:
            raise MalformedPayloadError("a repo_push needs updated_tags (a list, or a map in old payloads)")
        # Old payloads send a {tag: image id} map.
        tags = list(updated) if isinstance(updated, dict | list) else None
        if tags is None or not all(isinstance(t, str) for t in tags):
            raise MalformedPayloadError("updated_tags must be a list of tags or a {tag: id} map")
        for t in tags:
            _tag(t, "updated_tags")
        bucket = int((now or datetime.now(UTC)).timestamp()) // QUAY_DEDUPE_WINDOW_SECONDS
        key = _content_key(QUAY, where, repo, sorted(tags), bucket)
        return [WebhookEvent(QUAY, key, SYNC, where, repo, None, None, payload=doc)]
    phase = _quay_phase(doc, event)
    tags = _list(doc.get("docker_tags"), "docker_tags")
    out = []
    for t in tags:
        if not isinstance(t, str):
            raise MalformedPayloadError("docker_tags must be a list of tags")
        tag = _tag(t, "docker_tags")
        key = f"{QUAY}:build:{build_id}:{phase}:{tag}"
        # No time in the body: the database's receipt time orders it (occurred_at None).
        own = {"repository": repo_name, "docker_url": docker_url, "build_id": build_id, "event": phase,
               "tag": tag}
        out.append(WebhookEvent(
            QUAY, key, BUILD_STATE, where, repo, tag, None, QUAY_BUILD_EVENTS[phase],
            payload=_bounded(own), build_id=build_id,
        ))
    return out


def _quay_phase(doc: Mapping[str, Any], event: str | None) -> str:
    if event in QUAY_BUILD_EVENTS:
        assert event is not None
        return event
    if doc.get("error_message"):
        return "build_failure"
    raise MalformedPayloadError(
        "a Quay build notification needs its event: configure the URL with "
        "?event=build_queued|build_start|build_success|build_failure|build_cancelled"
    )


# ------------------------------------------------------------------ generic build event


def parse_build(body: Any) -> list[WebhookEvent]:
    """`{"image", "tag", "status": "building"|"success"|"failed", "timestamp", "build_id"?}`.
    With a `build_id`, the events of one build only move forward and a build first seen
    later wins; without one, the newest timestamp wins."""
    doc = _obj(body, "the body")
    image = _str(doc, "image", "the body")
    try:
        name = parse_image_name(image)
    except InvalidNameError as exc:
        raise MalformedPayloadError(f"image: {exc}") from None
    tag = _tag(_str(doc, "tag", "the body"), "tag")
    status = _str(doc, "status", "the body")
    if status not in GENERIC_STATUSES:
        raise MalformedPayloadError("status must be one of building, success, failed")
    occurred = parse_time(doc.get("timestamp"), "timestamp")
    if occurred is None:
        raise MalformedPayloadError("timestamp is missing")
    build_id = _build_id(doc.get("build_id"), "build_id")
    key = _content_key(BUILD, name.host, name.repository, tag, status, occurred.isoformat(), build_id)
    return [WebhookEvent(
        BUILD, key, BUILD_STATE, name.host, name.repository, tag, None, GENERIC_STATUSES[status],
        occurred_at=occurred, payload=doc, build_id=build_id,
    )]


# ------------------------------------------------------------------ GitHub (ghcr.io)

GITHUB_HOST = "ghcr.io"
GITHUB_PUSH_ACTIONS = ("published", "updated")
_FULL_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def parse_github(body: Any, *, host: str | None = None) -> list[WebhookEvent]:
    """A GitHub `registry_package` event (the caller checked X-GitHub-Event). Actions
    `published` and `updated` of a container version with a tag → a push of that tag at
    `ghcr.io/<owner>/<package name>`; a version without a tag (a platform manifest of a
    multi-arch push) and other packages (npm, maven…) yield nothing. A tag whose digest is not
    a full digest (GitHub's documented example has a short one) → a sync of the image."""
    doc = _obj(body, "the body")
    if doc.get("action") not in GITHUB_PUSH_ACTIONS:
        return []
    package = _obj(doc.get("registry_package"), "registry_package")
    version = _obj(package.get("package_version"), "registry_package.package_version")
    meta = version.get("container_metadata")
    if not isinstance(meta, dict):
        return []  # not a container package
    raw_tag = meta.get("tag")
    tag_obj: dict[str, Any] = raw_tag if isinstance(raw_tag, dict) else {}
    what = "registry_package.package_version.container_metadata.tag"
    tag = _tag(_str(tag_obj, "name", what, required=False), f"{what}.name")
    if tag is None:
        return []
    owner = _obj(package.get("owner"), "registry_package.owner")
    login = _str(owner, "login", "registry_package.owner")
    name = _str(package, "name", "registry_package")
    where, repo = normalize_target(host or GITHUB_HOST, f"{login}/{name}".lower(), "registry_package")
    digest = _str(tag_obj, "digest", what, required=False)
    kind = PUSH if digest is not None and _FULL_DIGEST.fullmatch(digest) else SYNC
    if kind == SYNC:
        digest = None
    key = _content_key(GITHUB, doc.get("action"), where, repo, tag, digest, version.get("id"))
    return [WebhookEvent(GITHUB, key, kind, where, repo, tag, digest, payload=doc)]


# A text field kept for the record is cut here: an event's record stays small whatever the body.
RECORD_TEXT_MAX = 500


def _bounded(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An event's own fields for the record (the `payload` column), long texts cut."""
    return {k: v[:RECORD_TEXT_MAX] if isinstance(v, str) else (_bounded(v) if isinstance(v, dict) else v)
            for k, v in fields.items()}


def unique_events(events: Iterable[WebhookEvent]) -> list[WebhookEvent]:
    """Drop repeated dedupe keys within one body, keeping the first."""
    seen: dict[str, WebhookEvent] = {}
    for ev in events:
        seen.setdefault(ev.dedupe_key, ev)
    return list(seen.values())
