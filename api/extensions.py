"""Routes that other packages add to the API's app, without the API importing them.

A package names a function `mount(app)` under the entry-point group `registry_sync.web`
(pyproject.toml); `create_app` calls every one of them once, after its own routes. The
dashboard (dashboard/app.py) mounts `/ui/` this way, so the dependency goes one way only:
the dashboard imports the API's queries, never the reverse. No setting switches it: an
installed package that names the group is mounted.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from aiohttp import web

GROUP = "registry_sync.web"


def mount_all(app: web.Application) -> None:
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        entry.load()(app)
