"""Every sender's documented format → normalized events (pure functions, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core import webhook_auth as whauth
from core import webhooks as wh
from core.names import HUB_HOST
from tests.webhooks.conftest import fixture


def test_registry_tag_push() -> None:
    [ev] = wh.parse_registry(fixture("registry_push.json"))
    assert (ev.kind, ev.host, ev.repository, ev.tag) == (wh.PUSH, "registry.example.com:5000", "acme/app", "v1")
    assert ev.digest and ev.digest.startswith("sha256:")
    assert ev.dedupe_key == "registry:05ac1ec8-0fb3-4c23-b421-c891149ae60e"
    assert ev.occurred_at == datetime(2026, 11, 27, 3, 16, 49, 975234, tzinfo=UTC)  # nanoseconds cut


def test_registry_multiarch_push_is_one_tag_and_pulls_are_noise() -> None:
    events = wh.parse_registry(fixture("registry_multiarch.json"))
    assert [(e.kind, e.tag) for e in events] == [(wh.PUSH, "1.0")]
    assert events[0].digest == fixture("registry_multiarch.json")["events"][3]["target"]["digest"]


def test_registry_deletes() -> None:
    events = wh.parse_registry(fixture("registry_delete.json"))
    assert [(e.kind, e.tag, e.digest is not None) for e in events] == [
        (wh.DELETE_MANIFEST, None, True), (wh.DELETE_TAG, "v1", False)]


def test_registry_host_pinned_by_the_endpoint() -> None:
    [ev] = wh.parse_registry(fixture("registry_push.json"), host="reg.internal")
    assert ev.host == "reg.internal"


def test_dockerhub_float_timestamp_and_content_key() -> None:
    [ev] = wh.parse_dockerhub(fixture("dockerhub_push.json"))
    assert (ev.kind, ev.host, ev.repository, ev.tag) == (wh.SYNC, HUB_HOST, "acme/app", "latest")
    assert ev.occurred_at == datetime.fromtimestamp(1417566161.123456, UTC)
    again = fixture("dockerhub_push.json")
    again["repository"]["star_count"] = 5  # a second delivery of the same push
    assert wh.parse_dockerhub(again)[0].dedupe_key == ev.dedupe_key
    again["push_data"]["pushed_at"] = 1417566999
    assert wh.parse_dockerhub(again)[0].dedupe_key != ev.dedupe_key


def test_harbor_default_cloudevents_digest_tag_and_delete() -> None:
    [push] = wh.parse_harbor(fixture("harbor_push.json"))
    assert (push.kind, push.host, push.repository, push.tag) == (wh.PUSH, "harbor.example.com", "acme/app", "v2")
    assert push.occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    [ce] = wh.parse_harbor(fixture("harbor_cloudevents_push.json"))
    assert (ce.kind, ce.tag) == (wh.PUSH, "v3") and ce.dedupe_key.startswith("harbor:6c1f0b4e")
    assert wh.parse_harbor(fixture("harbor_push_by_digest.json")) == []  # tag == digest: no tag
    [gone] = wh.parse_harbor(fixture("harbor_delete.json"))
    assert (gone.kind, gone.digest) == (wh.DELETE_MANIFEST, push.digest)
    # a deleted artifact names its first tag only: still a delete of the whole digest
    named = fixture("harbor_delete.json")
    named["event_data"]["resources"][0]["tag"] = "h3"
    [artifact] = wh.parse_harbor(named)
    assert (artifact.kind, artifact.tag, artifact.digest) == (wh.DELETE_MANIFEST, None, push.digest)


def test_quay_repo_push_list_and_old_map() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    [new] = wh.parse_quay(fixture("quay_repo_push.json"), now=now)
    [old] = wh.parse_quay(fixture("quay_repo_push_old.json"), now=now)
    assert (new.kind, new.host, new.repository) == (wh.SYNC, "quay.io", "acme/app")
    assert old.kind == wh.SYNC and old.dedupe_key != new.dedupe_key
    assert wh.parse_quay(fixture("quay_repo_push.json"), now=now)[0].dedupe_key == new.dedupe_key


def test_quay_build_events() -> None:
    start = wh.parse_quay(fixture("quay_build_start.json"), event="build_start")
    assert [(e.kind, e.tag, e.build_state) for e in start] == [
        (wh.BUILD_STATE, "latest", wh.BUILDING), (wh.BUILD_STATE, "1.2", wh.BUILDING)]
    assert {(e.build_id, e.occurred_at) for e in start} == {("296ec063-5f86-4706-a469-f0a400bf9df2", None)}
    failed = wh.parse_quay(fixture("quay_build_failure.json"))  # error_message says failure
    assert {e.build_state for e in failed} == {wh.FAILED}
    with pytest.raises(wh.MalformedPayloadError, match="event"):
        wh.parse_quay(fixture("quay_build_start.json"))


def test_generic_build_event() -> None:
    [ev] = wh.parse_build(fixture("build_success.json"))
    assert (ev.host, ev.repository, ev.tag, ev.build_state) == (
        "registry.example.com", "acme/app", "v1", wh.SUCCESS)
    hub = wh.parse_build({"image": "ubuntu", "tag": "x", "status": "building", "timestamp": 1714564800})
    assert (hub[0].host, hub[0].repository, hub[0].build_id) == (HUB_HOST, "library/ubuntu", None)
    body = {"image": "a/b", "tag": "v1", "status": "success", "timestamp": 1714564800}
    [numbered] = wh.parse_build({**body, "build_id": 1234})
    [named] = wh.parse_build({**body, "build_id": "pipeline-9"})
    assert (numbered.build_id, named.build_id) == ("1234", "pipeline-9")
    assert len({numbered.dedupe_key, named.dedupe_key, wh.parse_build(body)[0].dedupe_key}) == 3


@pytest.mark.parametrize("parse, body, words", [
    (wh.parse_registry, {"events": "no"}, "events must be a list"),
    (wh.parse_registry, {"events": [{"id": "x", "action": "push", "target": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "Bad//Repo",
        "tag": "v1", "digest": "sha256:" + "a" * 64}, "request": {"host": "r.example"}}]}, "invalid"),
    (wh.parse_dockerhub, {"push_data": {"tag": "x"}}, "repository must be a JSON object"),
    (wh.parse_harbor, {"type": "PUSH_ARTIFACT", "occur_at": "yesterday", "event_data": {}}, "occur_at"),
    (wh.parse_build, {"image": "a/b", "tag": "v1", "status": "done", "timestamp": 1}, "status"),
    (wh.parse_build, {"image": "a/b", "tag": "v1", "status": "success"}, "timestamp"),
    (wh.parse_build, {"image": "a/b", "tag": "bad tag", "status": "success", "timestamp": 1}, "tag"),
    (wh.parse_build, {"image": "a/b", "tag": "v1", "status": "success", "timestamp": 1, "build_id": []}, "build_id"),
    (wh.parse_build, {"image": "a/b", "tag": "v1", "status": "success", "timestamp": 1, "build_id": True}, "build_id"),
])
def test_malformed_bodies_say_what_is_wrong(parse, body, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wh.MalformedPayloadError, match=words):
        parse(body)


def test_secrets_constant_time_helpers() -> None:
    assert whauth.bearer_ok("Bearer s3cret", ["s3cret"]) and whauth.bearer_ok("s3cret", ["s3cret"])
    assert not whauth.bearer_ok("Bearer s3cre", ["s3cret"]) and not whauth.bearer_ok(None, ["s3cret"])
    assert not whauth.bearer_ok("Bearer ", [""]) and not whauth.token_ok("", [""])
    body = b'{"a": 1}'
    assert whauth.signature_ok(body, whauth.sign(body, "k"), ["k"])
    assert not whauth.signature_ok(body + b" ", whauth.sign(body, "k"), ["k"])
    bound = {"reg.example:5000": "r2", "quay.io": "q1", "other.example": ""}
    assert whauth.accepted_hosts(bound, lambda s: s == "r2") == {"reg.example:5000"}
    assert whauth.accepted_hosts(bound, lambda s: s == "") == frozenset()  # an empty secret never matches
