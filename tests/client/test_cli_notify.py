"""End to end: `tutum subscription create` and `tutum image tag history` against real
`registry-sync web`, `worker` (whose deliverer process sends the notifications) and `beat`
processes; the loopback receiver verifies each delivery with the standardwebhooks package."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from tests.client.conftest import REGISTRY_PASSWORD, REGISTRY_USER, ClientStack, client_stack
from tests.support.processes import wait_for
from tests.support.registry import push_image

AUTH = (REGISTRY_USER, REGISTRY_PASSWORD)


@pytest.fixture(scope="module")
def svc(postgres_dsn: str, redis_server_url: str, tutum_installed: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    home = tmp_path_factory.mktemp("home")
    with client_stack(postgres_dsn, redis_server_url, "rs_cli_notify", home, workers=True) as st:
        yield st


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    got: list[tuple[bytes, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((body, dict(self.headers)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got
    server.shutdown()
    server.server_close()


def test_subscribe_and_read_a_tags_history(svc: ClientStack, hook: tuple[str, list[Any]]) -> None:
    url, got = hook
    repo = "user1/notified"
    name = svc.name(repo)
    first = push_image(svc.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, auth=AUTH)
    created = svc.tutum("subscription", "create", url, "--events", "tag.pushed,tag.moved", "-o", "json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret"]
    listed = svc.tutum("subscription", "list")
    assert listed.returncode == 0 and url in listed.stdout

    done = svc.tutum("image", "register", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, "--sync", name)
    assert done.returncode == 0, done.stderr
    second = push_image(svc.registry.url, repo, "v1", {"created": "2024-02-01T00:00:00Z"}, auth=AUTH)
    status, _ = svc.stack.http("POST", f"/api/v1/image/{name}/tag/v1/build/", user=svc.user, key=svc.key)
    assert status == 202

    wait_for(lambda: len(got) >= 2, 30, "two deliveries")
    bodies = [standardwebhooks.Webhook(secret).verify(body, headers) for body, headers in got]
    assert [b["type"] for b in bodies] == ["tag.pushed", "tag.moved"]
    assert bodies[1]["data"]["previous_digest"] == first.digest and bodies[1]["data"]["digest"] == second.digest

    history = svc.tutum("image", "tag", "history", f"{name}:v1")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["DIGEST", "FROM", "UNTIL", "SEEN", "BY"]
    # the stack's registry notifies the service too: a webhook or the sync saw it first
    assert lines[1].startswith(second.digest) and lines[1].split()[-2] == "now"
    assert lines[1].split()[-1] in ("webhook", "poll")
    assert lines[2].startswith(first.digest)
    sub_id = json.loads(created.stdout)["id"]
    removed = svc.tutum("subscription", "rm", str(sub_id))
    assert (removed.returncode, removed.stdout) == (0, f"{sub_id}\n")
