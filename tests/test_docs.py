"""The examples of README.md and docs/client.md run top to bottom in one shell session, as a
reader would run them, against `registry-sync dev` and a local registry.

Every fenced block whose language is `sh`, `bash`, `shell`, `python` or `py` runs, in the
order of DOCS and of the page: a new example is picked up by itself. Other fences (output
samples, JSON) are text. An HTML comment right above a fence changes what is done with it:

- `<!-- docs-test: service (why) -->`: the block starts the service (README's first command:
  it creates a venv, installs the project and runs `registry-sync dev`). The test checks it
  ends with `registry-sync dev`, and starts that command itself, in the background, from the
  venv it runs in (creating and installing a venv is not the test's business): on a free
  port, with this test's database and Redis, `--insecure-registry` for the local registry
  and `--offline` (tests send packets only to loopback; no example reads a catalog image).
- `<!-- docs-test: skip (why) -->`: not run; the reason is required (README's second
  command: the test suite itself, which would run this test again).
- `<!-- docs-test: until-interrupt -->`: a command that runs until Ctrl-C (`tutum image
  watch`, the events-stream examples). It is started, left running until it has printed a
  line (at most a few seconds; it must still be running then), then sent SIGINT as a
  terminal's Ctrl-C would (to its process group); it must end with status 130 (or 0), and
  without a traceback.

A block that would run `pytest` or install anything without a marker fails the test.

The session: a temporary folder stands for the checkout (its `.venv` is a link to the venv
running the tests; `.data` is dev's DATA_DIR, so `$(cat .data/demo_key)` works), HOME is a
temporary folder, PATH is this machine's without the venv (only what the examples put on it),
and `curl` is a wrapper that adds `--fail-with-body --silent --show-error`: an answer of 400
or more (a name already registered) fails the example. Shell blocks run in bash with `-e -o
pipefail`; variables and the working directory carry over from block to block (`set -a`,
then `export -p`), as in one shell. Python blocks run with the venv's python in that
environment. Placeholders of what dev prints are filled in: `<key>` (the `demo` key), port
8000 (dev's port) and `127.0.0.1:5000` (the local registry's random port). The local
registry holds a `v1` tag of every repository the examples name on it: the reader's images.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.registry import RegistryServer, push_image
from tests.support.services import free_port
from tests.test_dev import KEY_RE, START_TIMEOUT, Dev, _env, empty_database, fresh_redis  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/client.md")
RUN = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
MARKS = ("service", "skip", "until-interrupt")
FENCE_RE = re.compile(
    r"(?:^<!--\s*docs-test:\s*(?P<mark>[\w-]+)(?P<why>[^>]*?)\s*-->\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```",
    re.M | re.S,
)
DOCS_REGISTRY = "127.0.0.1:5000"
BLOCK_TIMEOUT = 120.0
INTERRUPT_AFTER = 5.0  # seconds to wait for a first line from a block that runs until Ctrl-C


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str  # "sh" or "python"
    mark: str | None
    why: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks() -> list[Block]:
    """The runnable blocks of DOCS, in order."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for m in FENCE_RE.finditer(text):
            lang = RUN.get(m["lang"])
            if lang is None:
                assert m["mark"] is None, f"{doc}: a docs-test mark above a fence that is not run"
                continue
            mark = m["mark"]
            assert mark in (None, *MARKS), f"{doc}: unknown docs-test mark {mark!r}"
            line = text.count("\n", 0, m.start("body"))
            found.append(Block(doc, line, lang, mark, (m["why"] or "").strip(" ()"), m["body"]))
    return found


def test_every_example_is_run_or_says_why_not() -> None:
    found = blocks()
    assert [b.mark for b in found if b.doc == "README.md"][:2] == ["service", "skip"]
    for b in found:
        if b.mark == "skip":
            assert b.why, f"{b.where}: say why the block is skipped"
        if b.mark is None:
            assert not re.search(r"\bpytest\b|pip install|venv ", b.body), (
                f"{b.where} would install or run the test suite: mark it")
    service = [b for b in found if b.mark == "service"]
    assert len(service) == 1 and service[0].body.strip().endswith("registry-sync dev")
    assert sum(1 for b in found if b.mark is None) >= 6


class Session:
    """One shell session in `home` (the stand-in checkout): state carried between blocks."""

    def __init__(self, cwd: Path, env: dict[str, str], subs: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.subs = subs
        self.state = cwd.parent / "session"
        self.state.mkdir()
        (self.state / "env").write_text("")
        (self.state / "cwd").write_text(str(cwd))
        self.count = 0

    def script(self, block: Block) -> Path:
        """The block as a bash script: the session's state in, the block, the state out."""
        self.count += 1
        body = block.body
        for placeholder, value in self.subs.items():
            body = body.replace(placeholder, value)
        if block.lang == "python":
            code = self.state / f"block{self.count}.py"
            code.write_text(body)
            body = f"exec .venv/bin/python {shlex.quote(str(code))}\n"
        state = shlex.quote(str(self.state))
        path = self.state / f"block{self.count}.sh"
        path.write_text(
            f"set -a\n. {state}/env\ncd \"$(cat {state}/cwd)\"\nset -e -o pipefail\n"
            f"{body}\n"
            f"export -p > {state}/env.next && mv {state}/env.next {state}/env && pwd > {state}/cwd\n"
        )
        return path

    def run(self, block: Block) -> str:
        done = subprocess.run(["bash", str(self.script(block))], env=self.env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT, check=False)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{block.where} failed ({done.returncode}):\n{block.body}\n---\n{output}"
        assert "Traceback" not in output, f"{block.where}:\n{output}"
        return output

    def run_until_interrupt(self, block: Block) -> str:
        proc = subprocess.Popen(["bash", str(self.script(block))], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        output = []
        try:
            output.append(lines.get(timeout=INTERRUPT_AFTER))
        except queue.Empty:
            pass
        time.sleep(0.5)  # settle: connected, waiting for changes
        still = proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the foreground process group
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        reader.join(10)
        stdout.close()
        while not lines.empty():
            output.append(lines.get())
        text = "".join(output)
        assert still, f"{block.where} ended before Ctrl-C:\n{text}"
        assert code in (130, 0), f"{block.where} ended with {code} on Ctrl-C:\n{text}"
        assert "Traceback" not in text, f"{block.where}:\n{text}"
        return text


@pytest.fixture
def local_registry() -> Iterator[RegistryServer]:
    with RegistryServer() as reg:  # anonymous, no notifications: as a reader's first registry
        yield reg


def test_the_examples_run_in_order_in_one_shell(
    tmp_path: Path, empty_database: str, redis_url: str, local_registry: RegistryServer,  # noqa: F811
) -> None:
    found = blocks()
    # the reader's images: every repository the examples name on the local registry
    repos = sorted({m for b in found if b.mark is None
                    for m in re.findall(re.escape(DOCS_REGISTRY) + r"/([a-z0-9._/-]+[a-z0-9])", b.body)})
    repos = [r.split("/tag/")[0].removesuffix("/sync") for r in repos]
    for repo in sorted(set(repos)):
        push_image(local_registry.url, repo, "v1", {"created": "2024-01-01T00:00:00Z"}, layers=0)

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(sys.prefix)
    redis_db_url = fresh_redis(redis_url, "dev")
    dev = Dev(_env(checkout / ".data", DATABASE_URL=empty_database, REDIS_URL=redis_db_url), free_port(),
              "--insecure-registry", local_registry.host, "--offline")
    try:
        key = dev.wait_for(KEY_RE, START_TIMEOUT).group(1)
        venv_bin = str(Path(sys.prefix) / "bin")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        curl = bin_dir / "curl"
        curl.write_text('#!/bin/sh\nexec /usr/bin/curl --fail-with-body --silent --show-error "$@"\n')
        curl.chmod(0o755)
        path = [str(bin_dir), *(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)]
        env = {"PATH": os.pathsep.join(path), "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
               "TMPDIR": str(tmp_path)}
        subs = {"<key>": key, "127.0.0.1:8000": f"127.0.0.1:{dev.port}", DOCS_REGISTRY: local_registry.host}
        session = Session(checkout, env, subs)
        ran = []
        for block in found:
            if block.mark in ("service", "skip"):
                continue
            if block.mark == "until-interrupt":
                session.run_until_interrupt(block)
            else:
                session.run(block)
            ran.append(block.where)
        print(f"ran {len(ran)} examples: {', '.join(ran)}")
        code, _ = dev.terminate()
    finally:
        dev.kill()
    assert code == 0, dev.output()
