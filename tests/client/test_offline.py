"""The client's parts that need no service: where credentials come from (the old SDK's
precedence and ~/.tutum), name:tag parsing, the old CLI's table layout, and the rule that
the client imports none of the service's packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from registry_sync_client import load_settings, parse_reference, write_config_file
from registry_sync_client.cli.render import details, table
from registry_sync_client.config import basic
from registry_sync_client.models import Event, Image, SyncStatus

PACKAGE = Path(__file__).resolve().parents[2] / "registry_sync_client"
SERVICE_PACKAGES = {"api", "worker", "core", "cli"}


def test_the_client_imports_none_of_the_service_packages() -> None:
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & SERVICE_PACKAGES, f"{path} imports {roots & SERVICE_PACKAGES}"
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, registry_sync_client, registry_sync_client.cli.main;"
         "print(sorted({m.split('.')[0] for m in sys.modules}))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert not set(eval(loaded)) & SERVICE_PACKAGES  # noqa: S307 - our own subprocess's repr of a list


def test_credentials_follow_the_old_sdk_precedence(tmp_path: Path) -> None:
    config = tmp_path / ".tutum"
    host = {"TUTUM_REST_HOST": "http://api.example:8000/"}
    assert load_settings({}, config).authorization is None
    assert load_settings({}, config).base_url == "http://127.0.0.1:8000/api/v1/"
    assert load_settings(host, config).base_url == "http://api.example:8000/api/v1/"
    assert load_settings({**host, "TUTUM_BASE_URL": "https://b.example/x/api/v1"}, config).base_url == \
        "https://b.example/x/api/v1/"

    config.write_text("[auth]\nuser = old\napikey = k0\n")
    assert load_settings({}, config).authorization == "ApiKey old:k0"
    write_config_file("filed", "k1", config)
    assert config.stat().st_mode & 0o777 == 0o600
    assert load_settings({}, config).authorization == basic("filed", "k1")
    assert load_settings({}, config).user == "filed"
    env = {"TUTUM_USER": "env", "TUTUM_PASS": "k2"}
    assert load_settings(env, config).authorization == basic("env", "k2")
    env["TUTUM_APIKEY"] = "k3"
    assert load_settings(env, config).authorization == basic("env", "k3")
    env["TUTUM_AUTH"] = "ApiKey whole:header"
    assert load_settings(env, config).authorization == "ApiKey whole:header"
    assert "k3" not in repr(load_settings(env, config))

    # One of the old CLI's login paths wrote the value in quotes; a broken file is ignored.
    config.write_text(f'[auth]\nbasic_auth = "{basic("q", "k4").split()[1]}"\n')
    assert load_settings({}, config).authorization == basic("q", "k4")
    config.write_text("not an ini file")
    assert load_settings({}, config).authorization is None


@pytest.mark.parametrize(("ref", "expected"), [
    ("ubuntu", ("ubuntu", "latest")),
    ("ubuntu:14.04", ("ubuntu", "14.04")),
    ("127.0.0.1:5000/user1/image1", ("127.0.0.1:5000/user1/image1", "latest")),
    ("127.0.0.1:5000/user1/image1:v2", ("127.0.0.1:5000/user1/image1", "v2")),
    ("[2001:db8::1]:5000/team/app", ("[2001:db8::1]:5000/team/app", "latest")),
])
def test_name_and_tag_split_at_the_right_colon(ref: str, expected: tuple[str, str]) -> None:
    assert parse_reference(ref) == expected


def test_tables_are_laid_out_as_tabulate_plain_did() -> None:
    # The old CLI printed tabulate(rows, headers, stralign="left", tablefmt="plain").
    assert table(["NAME", "#TAG", "IN_USE"], [["tutum/hello-world", 1, "no"], ["a", 12, None]]) == (
        "NAME                 #TAG  IN_USE\n"
        "tutum/hello-world       1  no\n"
        "a                      12"
    )
    assert table(["NAME", "TAG"], []) == "NAME    TAG"


def test_unknown_fields_are_kept_and_printed() -> None:
    status = SyncStatus.from_json({
        "image": "/api/v1/image/team/app/", "error": None, "syncing": False,
        "tag_problems": [{"tag": "v1", "problem": "no linux/amd64 manifest"}],
        "tag_policy": {"include": "v*", "exclude": None},
    })
    assert status.image == "team/app" and status.extra["tag_policy"] == {"include": "v*", "exclude": None}
    assert details(status.raw).splitlines() == [
        "image         /api/v1/image/team/app/",
        "error         -",
        "syncing       no",
        "tag_problems  tag=v1  problem=no linux/amd64 manifest",
        "tag_policy    include: v*",
        "              exclude: -",
    ]
    image = Image.from_json({"name": "team/tag/app", "tags": ["/api/v1/image/team/tag/app/tag/latest/"],
                             "last_build_date": "Fri, 8 Nov 2013 00:22:26 +0000", "future_field": 1})
    assert image.tags == ("latest",) and image.last_build_date is not None
    assert image.last_build_date.isoformat() == "2013-11-08T00:22:26+00:00" and image.raw["future_field"] == 1
    event = Event.from_json({"type": "imagetag", "action": "update", "state": "Building",
                             "resource_uri": "/api/v1/image/team/tag/app/tag/v1/"})
    assert (event.image, event.tag, event.full_name) == ("team/tag/app", "v1", "team/tag/app:v1")
