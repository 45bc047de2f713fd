"""Build states from Quay's build API end to end: real `web`, `worker` and `beat` processes,
the real registry behind a loopback stand-in for a Quay host (tests/support/quay.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import unique
from tests.support.processes import Stack, wait_for
from tests.support.quay import QuayStandIn, quay_build
from tests.support.registry import RegistryServer, push_image

BUILD_POLL_SECONDS = 3.0
QUAY_SECRET = "quay-e2e-secret-0123456789"
BUILD_TOKEN = "quay-app-token-e2e-9f8e7d6c"  # the stand-in's repository is public: sent, never needed


@pytest.fixture
def quay(registry: RegistryServer) -> Iterator[QuayStandIn]:
    with QuayStandIn(registry) as stand_in:
        yield stand_in


def test_build_states_follow_quays_build_api_without_webhooks(stack: Stack, quay: QuayStandIn) -> None:
    key = stack.account("alice")
    repo = f"{unique('quaye2e')}/app"
    name = f"{quay.host}/{repo}"
    push_image(quay.registry.url, repo, "latest", {"created": "2024-01-01T00:00:00Z"})
    old, new, newest = unique("old"), unique("new"), unique("newest")
    quay.script(repo, [quay_build(old, "complete", repository=repo)])
    stack.env.update(
        INSECURE_REGISTRIES=f"{stack.env['INSECURE_REGISTRIES']},{quay.host}", QUAY_HOSTS=quay.host,
        BUILD_POLL_SECONDS=str(BUILD_POLL_SECONDS), SYNC_INTERVAL_SECONDS="3600", SYNC_INTERVAL_MIN="3600",
        WEBHOOK_SECRETS=f"quay@{quay.host}={QUAY_SECRET}",
    )
    stack.start("web")
    worker = stack.start("worker")
    beat = stack.start("beat")
    wait_for(lambda: stack.up(), 60, "the API to answer")
    wait_for(lambda: "ready" in worker.output(), 90, "the worker to be ready")

    def tag_state() -> str | None:
        status, tag = stack.http("GET", f"/api/v1/image/{name}/tag/latest/", user="alice", key=key)
        return tag["state"] if status == 200 else None

    status, _ = stack.http("POST", "/api/v1/image/", user="alice", key=key,
                           body={"name": name, "build_token": BUILD_TOKEN})
    assert status == 201
    wait_for(lambda: tag_state() == "Success", 30, "the first sync")

    # a build starts; the user asks for a re-sync: the build shows
    quay.script(repo, [quay_build(new, "building", repository=repo), quay_build(old, "complete", repository=repo)])
    status, _ = stack.http("POST", f"/api/v1/image/{name}/tag/latest/build/", user="alice", key=key)
    assert status == 202
    wait_for(lambda: tag_state() == "Building", 30, "the re-sync to read the running build")
    _, image = stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key)
    assert image["state"] == "Building"
    # while it runs, the scheduler has the builds read again every BUILD_POLL_SECONDS
    wait_for(lambda: beat.events("beat.build_polls_queued"), BUILD_POLL_SECONDS + 5,
             "the scheduler to queue a read of the running build")

    # it completes: no webhook, no request, the poll alone within BUILD_POLL_SECONDS (+ 1 s)
    push_image(quay.registry.url, repo, "latest", {"created": "2024-06-01T00:00:00Z"})
    quay.script(repo, [quay_build(new, "complete", repository=repo), quay_build(old, "complete", repository=repo)])
    completed = time.monotonic()
    wait_for(lambda: tag_state() == "Success", BUILD_POLL_SECONDS + 1, "the poll to see the build complete")
    assert time.monotonic() - completed <= BUILD_POLL_SECONDS + 1
    # and the sync that follows reads what it pushed
    wait_for(lambda: stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key)[1]["last_build_date"]
             == "Sat, 1 Jun 2024 00:00:00 +0000", 30, "the sync of the completed build's push")

    # a newer build fails: polled while it runs, Failed when it errors, its error at …/sync/
    quay.script(repo, [quay_build(newest, "pulling", repository=repo), *quay.builds[repo]])
    stack.http("POST", f"/api/v1/image/{name}/tag/latest/build/", user="alice", key=key)
    wait_for(lambda: tag_state() == "Building", 30, "the newest build to show")
    quay.script(repo, [quay_build(newest, "error", error="step 2/5: COPY failed", repository=repo),
                       *quay.builds[repo][1:]])
    wait_for(lambda: tag_state() == "Failed", BUILD_POLL_SECONDS + 1, "the poll to see the build fail")
    _, status_body = stack.http("GET", f"/api/v1/image/{name}/sync/", user="alice", key=key)
    assert status_body["error"] is None
    assert status_body["builds"]["recent"][0] == {**status_body["builds"]["recent"][0], "id": newest,
                                                  "state": "Failed", "error": "step 2/5: COPY failed"}
    assert status_body["builds"]["next_poll_at"] is None

    # Quay's webhook of the older build, delivered late: nothing changes
    body = {"build_id": new, "docker_tags": ["latest"], "repository": repo, "namespace": repo.split("/")[0],
            "name": "app", "docker_url": name, "trigger_kind": "github"}
    status, _ = stack.http("POST", f"/api/v1/webhooks/quay/{QUAY_SECRET}/?event=build_success",
                           body=body)
    assert status == 202
    note = wait_for(lambda: stack.sql("SELECT note FROM webhook_events WHERE build_id = $1 AND status = 'done'",
                                      new), 20, "the webhook to be applied")
    assert "later build" in str(note)
    assert tag_state() == "Failed"
    _, image = stack.http("GET", f"/api/v1/image/{name}/", user="alice", key=key)
    assert image["state"] == "Failed"
    assert quay.authorization[repo] == f"Bearer {BUILD_TOKEN}"
    for service in stack.services:
        assert BUILD_TOKEN not in service.output(), f"the build token leaked into {service.args[0]}'s log"
