"""End to end: the installed `tutum` command against real `registry-sync web`, `worker` and
`beat` processes and a real docker-registry with htpasswd auth (one stack for the module).

The seed document's five command lines run verbatim, `registry.local` being the local
registry's host: `127.0.0.1:<port>/user1/image1`.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.client.conftest import (
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    TUTUM,
    ClientStack,
    client_stack,
    new_account,
)
from tests.conftest import unique
from tests.support.processes import wait_for
from tests.support.registry import push_image
from tests.support.services import free_port

AUTH = (REGISTRY_USER, REGISTRY_PASSWORD)
LIST_HEADER = "NAME    #TAG    IN_USE    PRIVATE    TUTUM_BUILD    DESCRIPTION"


@pytest.fixture(scope="module")
def svc(postgres_dsn: str, redis_server_url: str, tutum_installed: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    home = tmp_path_factory.mktemp("home")
    with client_stack(postgres_dsn, redis_server_url, "rs_cli", home, workers=True) as st:
        yield st


def _synced(svc: ClientStack, name: str, tags: list[str]) -> None:
    def done() -> bool:
        status, image = svc.stack.http("GET", f"/api/v1/image/{name}/", user=svc.user, key=svc.key, timeout=5)
        return status == 200 and image["state"] == "Success" and [t.split("/")[-2] for t in image["tags"]] == tags

    wait_for(done, 30, f"{name} synced with tags {tags}")


def test_the_seed_command_lines_verbatim(svc: ClientStack) -> None:
    name = svc.name("user1/image1")
    push_image(svc.registry.url, "user1/image1", "latest", {"created": "2024-01-01T00:00:00Z"}, auth=AUTH)
    user = unique("seed")  # an account with no images yet, whatever ran before
    svc = dataclasses.replace(svc, user=user, key=new_account(svc.stack.env["DATABASE_URL"], user))

    listed = svc.shell("tutum image list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, LIST_HEADER + "\n", "")

    registered = svc.shell(f"tutum image register -u username -p password {name}")
    assert (registered.returncode, registered.stdout, registered.stderr) == (0, f"{name}\n", "")
    _synced(svc, name, ["latest"])  # the registry accepted the credentials given with -u/-p
    listed = svc.shell("tutum image list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [
        "NAME" + " " * len(name) + "#TAG  IN_USE    PRIVATE    TUTUM_BUILD    DESCRIPTION",
        f"{name}       1  no        yes        no",
    ]

    inspected = svc.shell(f"tutum image inspect {name}")
    assert inspected.returncode == 0, inspected.stderr
    image = json.loads(inspected.stdout)
    assert image["name"] == name and image["state"] == "Success" and image["is_private_image"] is True
    assert image["tags"] == [f"/api/v1/image/{name}/tag/latest/"]
    assert "password" not in inspected.stdout and "username" not in image

    updated = svc.shell(f'tutum image update -d "New image description" {name}')
    assert (updated.returncode, updated.stdout) == (0, f"{name}\n")
    assert json.loads(svc.tutum("image", "inspect", name).stdout)["description"] == "New image description"
    assert "New image description" in svc.tutum("image", "list").stdout

    removed = svc.shell(f"tutum image rm {name}")
    assert (removed.returncode, removed.stdout) == (0, f"{name}\n")
    gone = svc.tutum("image", "inspect", name)
    assert gone.returncode == 3 and gone.stdout == ""
    assert gone.stderr.strip() == f"Cannot find an image with the identifier '{name}'"  # the old CLI's words


def test_tags_lists_and_sync_status(svc: ClientStack) -> None:
    repo = "user1/tagged"
    name = svc.name(repo)
    push_image(svc.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z", "author": "me"}, auth=AUTH)
    push_image(svc.registry.url, repo, "v2", {"created": "2024-02-01T00:00:00Z"}, auth=AUTH)
    done = svc.tutum("image", "register", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, "-d", "two tags", "--sync",
                     name)
    assert (done.returncode, done.stdout) == (0, f"{name}\n"), done.stderr
    _synced(svc, name, ["v1", "v2"])

    tags = svc.tutum("image", "tag", "list", name)
    assert tags.returncode == 0
    assert tags.stdout.splitlines() == ["NAME" + " " * (len(name) - 2) + "TAG", f"{name}  v1, v2"]

    tag = svc.tutum("image", "tag", "inspect", f"{name}:v1")
    assert tag.returncode == 0, tag.stderr
    body = json.loads(tag.stdout)
    assert body["full_name"] == f"{name}:v1" and body["state"] == "Success"

    def layer() -> dict | None:
        return svc.stack.http("GET", f"/api/v1/image/{name}/tag/v1/", user=svc.user, key=svc.key)[1]["layer"]

    wait_for(layer, 20, "the tag's layer")
    assert json.loads(svc.tutum("image", "tag", "inspect", f"{name}:v1").stdout)["layer"]["author"] == "me"
    missing = svc.tutum("image", "tag", "inspect", f"{name}:nope", f"{name}:v2")
    assert missing.returncode == 3
    assert f"image '{name}' has no tag 'nope'" in missing.stderr
    assert json.loads(missing.stdout)["full_name"] == f"{name}:v2"  # the other name still printed

    quiet = svc.tutum("image", "list", "-q")
    assert name in quiet.stdout.splitlines() and "NAME" not in quiet.stdout
    as_json = json.loads(svc.tutum("image", "list", "--output", "json").stdout)
    assert [i["name"] for i in as_json if i["name"] == name] == [name]
    assert svc.tutum("image", "list", "-j").stdout == LIST_HEADER + "\n"  # no jumpstarts here
    assert name in svc.tutum("image", "list", "-a", "--name", name).stdout

    sync = svc.tutum("image", "sync", name)
    assert sync.returncode == 0, sync.stderr
    fields = {line.split()[0] for line in sync.stdout.splitlines() if line and not line.startswith(" ")}
    assert {"image", "state", "last_synced_at", "next_sync_at", "error"} <= fields
    assert json.loads(svc.tutum("image", "sync", "-o", "json", name).stdout)["error"] is None


class Watch:
    """`tutum image watch …` in the background, its stdout and stderr lines collected."""

    def __init__(self, svc: ClientStack, *names: str) -> None:
        self.proc = subprocess.Popen([str(TUTUM), "image", "watch", "--max-backoff", "0.5", *names],
                                     env=svc.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line.rstrip("\n"))

    def wait_line(self, lines: list[str], text: str, count: int = 1, timeout: float = 20) -> str:
        def seen() -> list[str]:
            found = [line for line in lines if text in line]
            return found if len(found) >= count else []

        found = wait_for(seen, timeout, f"{text!r} from watch; stdout={self.out} stderr={self.err}")
        return found[count - 1]  # type: ignore[index]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        for reader in self.readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()
        return code


def test_watch_prints_pushes_as_they_happen_and_reconnects(svc: ClientStack) -> None:
    repo = "user1/watched"
    name = svc.name(repo)
    push_image(svc.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, auth=AUTH)
    assert svc.tutum("image", "register", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, name).returncode == 0
    _synced(svc, name, ["v1"])
    watch = Watch(svc, name)
    try:
        watch.wait_line(watch.err, "watching http://")
        assert watch.out[0].split() == ["TIME", "STATE", "CHANGE", "NAME"]
        push_image(svc.registry.url, repo, "v2", {"created": "2024-02-01T00:00:00Z"}, auth=AUTH)
        line = watch.wait_line(watch.out, f"{name}:v2")
        assert line[33:].split() == ["Success", "tag", "created", f"{name}:v2"]
        assert parsedate_to_datetime(line[:31].strip()).year >= 2024  # when it changed, RFC 2822

        svc.restart_web()  # the stream drops; watch connects again by itself
        watch.wait_line(watch.err, "reconnecting")
        watch.wait_line(watch.err, "watching http://", count=2, timeout=30)
        push_image(svc.registry.url, repo, "v3", {"created": "2024-03-01T00:00:00Z"}, auth=AUTH)
        watch.wait_line(watch.out, f"{name}:v3")
        assert all(name in line for line in watch.out[1:]), watch.out  # only the image watched
    finally:
        code = watch.stop()
    assert code == 130, watch.err  # Ctrl-C, as a shell reports it
    assert not any("Traceback" in line for line in watch.err), watch.err


def test_errors_say_what_to_do(svc: ClientStack) -> None:
    wrong = svc.tutum("image", "list", env=svc.env(TUTUM_APIKEY="not-the-key"))
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert "check TUTUM_USER/TUTUM_APIKEY" in wrong.stderr

    missing = svc.name("user1/never-registered")
    other = svc.name("user1/another-missing")
    not_found = svc.tutum("image", "inspect", missing, other)
    assert not_found.returncode == 3
    assert not_found.stderr.splitlines() == [f"Cannot find an image with the identifier '{missing}'",
                                             f"Cannot find an image with the identifier '{other}'"]
    assert svc.tutum("image", "rm", missing).returncode == 3

    url = f"http://127.0.0.1:{free_port()}"
    refused = svc.tutum("image", "list", env=svc.env(TUTUM_REST_HOST=url))
    assert refused.returncode == 3
    assert f"cannot reach {url}/api/v1/auth/: connection refused" in refused.stderr

    anonymous = svc.env()
    del anonymous["TUTUM_USER"], anonymous["TUTUM_APIKEY"]
    nobody = svc.tutum("image", "list", env=anonymous)
    assert nobody.returncode == 2 and "TUTUM_USER and TUTUM_APIKEY" in nobody.stderr

    bad = svc.tutum("image", "register", "Not A Name")
    assert bad.returncode == 3 and "invalid image name" in bad.stderr


def test_login_writes_the_config_file_that_later_commands_read(svc: ClientStack, tmp_path: Path) -> None:
    env = {**svc.env(HOME=str(tmp_path))}
    del env["TUTUM_USER"], env["TUTUM_APIKEY"]
    failed = svc.tutum("login", "-u", svc.user, "-p", "wrong-key", env=env)
    assert failed.returncode == 2 and not (tmp_path / ".tutum").exists()

    ok = svc.tutum("login", "-u", svc.user, "-p", svc.key, env=env)
    assert (ok.returncode, ok.stdout) == (0, "Login succeeded!\n"), ok.stderr
    config = tmp_path / ".tutum"
    assert config.read_text().startswith("[auth]\nbasic_auth = ")
    assert config.stat().st_mode & 0o777 == 0o600
    assert svc.tutum("image", "list", env=env).returncode == 0  # credentials from ~/.tutum

    # The environment wins over the file, and TUTUM_AUTH over everything, as in the old CLI.
    assert svc.tutum("image", "list", env={**env, "TUTUM_USER": svc.user, "TUTUM_APIKEY": "x"}).returncode == 2
    header = f"ApiKey {svc.user}:{svc.key}"
    assert svc.tutum("image", "list", env={**env, "TUTUM_USER": svc.user, "TUTUM_APIKEY": "x",
                                           "TUTUM_AUTH": header}).returncode == 0


def test_sync_flag_waits_for_the_registry_to_answer(svc: ClientStack) -> None:
    repo = "user1/checked"
    name = svc.name(repo)
    push_image(svc.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, auth=AUTH)
    refused = svc.tutum("image", "register", "-u", REGISTRY_USER, "-p", "not-the-password", "--sync", name)
    assert refused.returncode == 3 and refused.stdout == ""
    assert f"image '{name}': sync failed: " in refused.stderr and "401" in refused.stderr

    fixed = svc.tutum("image", "update", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, "--sync", name)
    assert (fixed.returncode, fixed.stdout) == (0, f"{name}\n"), fixed.stderr
    status = json.loads(svc.tutum("image", "sync", "--output", "json", name).stdout)
    assert status["error"] is None and status["last_synced_at"] is not None


def test_sync_now_and_a_closed_pipe_and_ctrl_c_end_quietly(svc: ClientStack, tmp_path: Path) -> None:
    repo = "user1/piped"
    name = svc.name(repo)
    assert svc.tutum("image", "register", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, name).returncode == 0
    missing = svc.tutum("image", "sync", "--now", name)  # not pushed yet: the sync says so
    assert missing.returncode == 3 and "repository not found: push it, or check the name" in missing.stdout
    assert f"image '{name}': sync failed: " in missing.stderr
    push_image(svc.registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, auth=AUTH)
    now = svc.tutum("image", "sync", "--now", "-o", "json", name)
    assert now.returncode == 0, now.stderr
    assert json.loads(now.stdout)["error"] is None
    _synced(svc, name, ["v1"])

    # the reader of the output goes away before anything is written: rc 0, nothing on stderr
    for args in (["image", "sync", name], ["image", "list"], ["image", "inspect", name]):
        proc = subprocess.Popen([str(TUTUM), *args], env=svc.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        with proc.stderr:
            stderr = proc.stderr.read()
        assert (proc.wait(30), stderr) == (0, ""), args
    piped = svc.shell(f"bash -o pipefail -c 'tutum image sync {name} | head -1'")
    assert (piped.returncode, piped.stderr) == (0, "") and piped.stdout.startswith("image ")

    # the blocking client's events(): Ctrl-C ends the program with 130, no traceback
    script = tmp_path / "follow.py"
    script.write_text(
        "from registry_sync_client import Client\n"
        "with Client.from_env() as api:\n"
        "    for event in api.events(on_status=lambda state, detail: print(state, flush=True)):\n"
        "        print(event.full_name, flush=True)\n")
    proc = subprocess.Popen([sys.executable, str(script)], env=svc.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (130, "")
