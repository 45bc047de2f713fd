"""Pure parsing of manifests, indexes, configs, tag lists and Link headers, on fixtures."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.artifacts import IMAGE_CONFIG_TYPES
from worker.registry import manifests as mf
from worker.registry import tags as tg
from worker.registry.auth import parse_challenges, parse_token_response, pick_challenge
from worker.registry.errors import (
    ManifestNotFoundError,
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailableError,
    RepositoryNotFoundError,
    error_code,
    error_for_response,
    parse_retry_after,
)

FIXTURES = Path(__file__).parent / "fixtures"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_docker_v2_manifest() -> None:
    m = mf.parse_manifest(raw("docker_v2_manifest.json"))
    assert isinstance(m, mf.ImageManifest)
    assert m.media_type == mf.DOCKER_MANIFEST
    assert m.config.digest.startswith("sha256:b5b2b2c5")
    assert m.config.media_type in IMAGE_CONFIG_TYPES


def test_oci_manifest_with_and_without_media_type() -> None:
    m = mf.parse_manifest(raw("oci_manifest.json"))
    assert isinstance(m, mf.ImageManifest) and m.media_type == mf.OCI_MANIFEST
    bare = mf.parse_manifest(raw("oci_manifest_no_media_type.json"), mf.OCI_MANIFEST)
    assert isinstance(bare, mf.ImageManifest) and bare.config.digest == m.config.digest
    # no mediaType and no header: recognised by its shape
    assert isinstance(mf.parse_manifest(raw("oci_manifest_no_media_type.json")), mf.ImageManifest)


def test_docker_list_platform_choice_and_variants() -> None:
    index = mf.parse_manifest(raw("docker_list.json"))
    assert isinstance(index, mf.Index) and len(index.manifests) == 5

    def pick(platform: str) -> str | None:
        entry = mf.choose_platform(index, platform)
        return entry.digest[7:11] if entry else None

    assert pick("linux/amd64") == "4444"
    assert pick("linux/arm64") == "3333"  # v8 is arm64's default variant
    assert pick("linux/arm/v6") == "1111"
    assert pick("linux/arm/v7") == "2222"
    assert pick("linux/arm") == "2222"  # v7 is arm's default
    assert pick("windows/amd64") == "5555"
    assert pick("linux/s390x") is None


def test_oci_index_skips_attestations() -> None:
    index = mf.parse_manifest(raw("oci_index_attestation.json"))
    assert isinstance(index, mf.Index)
    assert mf.choose_platform(index, "linux/amd64").digest.startswith("sha256:bbbb")
    assert mf.choose_platform(index, "linux/arm64").digest.startswith("sha256:cccc")
    assert mf.choose_platform(index, "unknown/unknown") is None
    assert sum(mf.is_attestation(e) for e in index.manifests) == 2


def test_index_entry_without_platform_is_linux_amd64() -> None:
    index = mf.parse_manifest(raw("oci_index_no_platform.json"))
    assert mf.choose_platform(index, "linux/amd64").digest.startswith("sha256:eeee")
    assert mf.choose_platform(index, "linux/arm64") is None


def test_empty_index() -> None:
    index = mf.parse_manifest(raw("oci_index_empty.json"))
    assert isinstance(index, mf.Index) and index.manifests == []
    assert mf.choose_platform(index) is None


def test_schema1_manifest() -> None:
    body = raw("schema1.json")
    m = mf.parse_manifest(body, mf.DOCKER_V1_SIGNED)
    assert isinstance(m, mf.Schema1Manifest)
    compat = json.loads(body)["history"][0]["v1Compatibility"]
    assert m.config_digest == "sha256:" + hashlib.sha256(compat.encode()).hexdigest()
    layer = m.layer()
    assert layer.author == "Old Timer <old@example.com>"
    assert layer.created == datetime(2016, 9, 23, 18, 8, 50, 537223, tzinfo=UTC)
    assert layer.run_command == "/hello"
    assert layer.entrypoint == ""
    assert layer.envvars == [("PATH", "/usr/bin")]
    assert layer.ports == [(8080, "tcp")]
    assert layer.volumes == ["/data"]
    assert layer.labels == []


def test_full_config() -> None:
    layer = mf.parse_config_blob(raw("config_full.json"))
    assert layer.author == "Jane Doe <jane@example.com>"
    assert layer.created == datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    assert layer.entrypoint == "/docker-entrypoint.sh --log 'two words'"
    assert layer.run_command == "nginx -g 'daemon off;'"
    assert layer.envvars == [
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/bin"),
        ("GREETING", "a=b=c"),
        ("EMPTY", ""),
        ("NOVALUE", ""),
    ]
    assert layer.labels == [
        ("empty", ""),
        ("maintainer", "jane"),
        ("org.opencontainers.image.version", "1.2.3"),
    ]
    # ranges and sctp are left out; "8080" is tcp; protocols are lower-cased
    assert layer.ports == [(53, "udp"), (80, "tcp"), (443, "tcp"), (8080, "tcp")]
    assert layer.volumes == ["/data", "/var/log"]


def test_null_fields_and_placeholder_date() -> None:
    layer = mf.parse_config_blob(raw("config_nulls.json"))
    assert layer == mf.Layer()


def test_minimal_config() -> None:
    assert mf.parse_config_blob(raw("config_minimal.json")) == mf.Layer()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970-01-01T00:00:00Z", None),
        ("1980-01-01T00:00:01Z", None),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
        (12345, None),
        ("yesterday", None),
        ("2023-06-01T10:00:00Z", datetime(2023, 6, 1, 10, tzinfo=UTC)),
        ("2023-06-01T12:00:00+02:00", datetime(2023, 6, 1, 10, tzinfo=UTC)),
        ("2023-06-01T10:00:00", datetime(2023, 6, 1, 10, tzinfo=UTC)),
        ("2023-06-01T10:00:00.987654321Z", datetime(2023, 6, 1, 10, 0, 0, 987654, tzinfo=UTC)),
    ],
)
def test_parse_created(value: object, expected: datetime | None) -> None:
    assert mf.parse_created(value) == expected


def test_command_line_forms() -> None:
    def layer(cfg: object) -> mf.Layer:
        return mf.parse_config({"config": cfg})

    assert layer({"Cmd": "echo legacy string"}).run_command == "echo legacy string"
    assert layer({"Cmd": ["/bin/sh", "-c", "echo $HOME && ls"]}).run_command == (
        "/bin/sh -c 'echo $HOME && ls'"
    )
    assert layer({"Cmd": []}).run_command == ""
    assert layer(None) == mf.Layer()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"schemaVersion": 2}',
        b'{"mediaType": "text/plain"}',
        b'{"schemaVersion": 2, "config": {"digest": "nope"}}',
        b'{"schemaVersion": 1, "history": []}',
        b'{"schemaVersion": 1, "history": [{"v1Compatibility": {}}]}',
        b'{"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": {}}',
    ],
)
def test_bad_manifests_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(RegistryProtocolError):
        mf.parse_manifest(body)


def test_filter_tags() -> None:
    sig = "sha256-" + "a" * 64
    tags = [
        "latest",
        "",
        None,
        "1.0",
        "latest",
        f"{sig}.sig",
        f"{sig}.att",
        f"{sig}.sbom",
        "sha256:" + "b" * 64,
        "-bad",
        "x" * 129,
        5,
        "v1.2.3_rc-1",
        f"{sig}.other",
    ]
    assert tg.filter_tags(tags) == ["latest", "1.0", "v1.2.3_rc-1", f"{sig}.other"]
    assert tg.filter_tags(None) == []
    assert tg.parse_tags_page(b'{"name": "a/b", "tags": null}') == []
    assert tg.parse_tags_page(b'{"name": "a/b"}') == []
    with pytest.raises(RegistryProtocolError):
        tg.parse_tags_page(b'{"tags": "latest"}')


def test_next_link() -> None:
    base = "https://reg.example:5000/v2/team/app/tags/list?n=1000"
    assert tg.next_link(None, base) is None
    assert tg.next_link('<https://reg.example:5000/x>; rel="prev"', base) is None
    assert (
        tg.next_link('</v2/team/app/tags/list?n=1000&last=b>; rel="next"', base)
        == "https://reg.example:5000/v2/team/app/tags/list?n=1000&last=b"
    )
    assert tg.next_link("<list?last=c>; rel=next", base) == (
        "https://reg.example:5000/v2/team/app/tags/list?last=c"
    )
    two = '<https://reg.example:5000/p>; rel="prev", <https://reg.example:5000/n>; rel="next"'
    assert tg.next_link(two, base) == "https://reg.example:5000/n"
    with pytest.raises(RegistryProtocolError) as err:
        tg.next_link('<https://evil.example/v2/x>; rel="next"', base)
    assert not err.value.transient


def test_challenges() -> None:
    header = (
        'Bearer realm="https://auth.example/token?a=1,b=2",service="container_registry",'
        'scope="repository:x/y:pull,push", Basic realm="fallback"'
    )
    challenges = parse_challenges(header)
    assert [c.scheme for c in challenges] == ["bearer", "basic"]
    bearer = challenges[0]
    assert bearer.realm == "https://auth.example/token?a=1,b=2"
    assert bearer.params["service"] == "container_registry"
    assert bearer.params["scope"] == "repository:x/y:pull,push"
    assert pick_challenge(challenges) is bearer
    basic = parse_challenges('Basic realm="https://123.dkr.ecr.us-east-1.amazonaws.com/"')
    assert pick_challenge(basic).scheme == "basic"
    err = parse_challenges('Bearer realm="r",error="insufficient_scope",scope=x')
    assert err[0].error == "insufficient_scope" and err[0].params["scope"] == "x"
    assert parse_challenges("") == [] and pick_challenge(parse_challenges("Negotiate")) is None


def test_token_response() -> None:
    assert parse_token_response(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert parse_token_response(b'{"access_token": "a"}') == ("a", 60.0)
    assert parse_token_response(b'{"token": "t", "expires_in": 5}') == ("t", 60.0)
    for bad in (b"nope", b"[]", b'{"expires_in": 300}'):
        with pytest.raises(RegistryProtocolError):
            parse_token_response(bad)


def test_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_error_mapping() -> None:
    def err(status: int, body: bytes, kind: str = "manifest", **headers: str) -> RegistryError:
        return error_for_response(status, body, headers, where="GET r/v2/x", kind=kind)

    envelope = b'{"errors": [{"code": "%s", "message": "m", "detail": "d"}]}'
    assert isinstance(err(404, envelope % b"NAME_UNKNOWN"), RepositoryNotFoundError)
    assert isinstance(err(404, b"", kind="tags"), RepositoryNotFoundError)
    assert isinstance(err(404, envelope % b"MANIFEST_UNKNOWN"), ManifestNotFoundError)
    assert isinstance(err(404, b"404 page not found"), ManifestNotFoundError)
    assert isinstance(err(401, envelope % b"UNAUTHORIZED"), RegistryAuthError)
    assert isinstance(err(403, envelope % b"DENIED"), RegistryAuthError)
    limited = err(429, b"<html><body>HAP429</body></html>", **{"Retry-After": "12"})
    assert isinstance(limited, RateLimitedError) and limited.retry_after == 12.0
    assert limited.transient and str(limited) == "GET r/v2/x: answered 429 Too Many Requests"
    unavailable = err(503, envelope % b"UNAVAILABLE")
    assert isinstance(unavailable, RegistryUnavailableError) and unavailable.transient
    assert str(unavailable) == "GET r/v2/x: answered 503 Service Unavailable (error code UNAVAILABLE)"
    assert not err(400, b"bad").transient
    # nothing of a body but a code of the distribution spec: no message, no detail, no other code
    assert error_code(envelope % b"DENIED") == "DENIED"
    assert error_code(envelope % b"SECRET_DB01_CORP") is None and error_code(b"x" * 5000) is None
    assert str(err(400, envelope % b"NAME_INVALID")) == "GET r/v2/x: answered 400 Bad Request (error code NAME_INVALID)"
    assert str(err(599, b"m d")) == "GET r/v2/x: answered 599"
    token = err(400, envelope % b"DENIED", kind="token")  # a token service's body is not read
    assert token.code is None and str(token) == "GET r/v2/x: answered 400 Bad Request"


def test_first_names_keeps_the_first_in_code_point_order_and_no_more() -> None:
    first = tg.FirstNames(3)
    first.update(["m", "b", "z", "b"])
    assert first.names == ["b", "m", "z"] and not first.truncated
    first.update(["a", "y", "B"])
    assert first.names == ["B", "a", "b"] and first.truncated
    first.update(["c"])
    assert first.names == ["B", "a", "b"]
    assert tg.FirstNames(0).names == []


def test_artifact_fields_and_platforms() -> None:
    body = json.dumps({
        "schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
        "artifactType": "application/vnd.example+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:" + "4" * 64, "size": 2},
        "layers": [{"mediaType": "text/spdx+json", "digest": "sha256:" + "5" * 64, "size": 1}, "junk"],
        "annotations": {"org.opencontainers.image.created": "2024-06-01T10:00:00Z"},
    }).encode()
    m = mf.parse_manifest(body)
    assert isinstance(m, mf.ImageManifest)
    assert m.artifact_type == "application/vnd.example+json" and m.layer_types == ("text/spdx+json",)
    assert mf.parse_created(m.annotations[mf.CREATED_ANNOTATION]) == datetime(2024, 6, 1, 10, tzinfo=UTC)
    index = mf.parse_manifest(raw("oci_index_attestation.json"))
    assert isinstance(index, mf.Index)
    assert mf.platforms(index) == ["linux/amd64", "linux/arm64"]
    assert mf.platforms(mf.parse_manifest(raw("docker_list.json"))) == [  # type: ignore[arg-type]
        "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8", "linux/amd64", "windows/amd64"]
