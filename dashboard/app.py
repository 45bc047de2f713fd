"""Mounting the dashboard on the API's app: `registry-sync web` serves it at /ui/.

`mount` is the entry point `registry_sync.web` names (pyproject.toml), which the API's
`create_app` calls (api/extensions.py); the API never imports this package. The routes are
the app's own (not a sub-app), so the API's helpers that read the app (throttling, the
outage watch, task sending) work unchanged; dashboard/guard.py wraps every handler.
"""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dashboard import assets, fleet, image_page, images_page, live, signin
from dashboard.format import FILTERS
from dashboard.guard import security_headers
from dashboard.sessions import sessions_ctx


async def _home(_: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/ui/")


def mount(app: web.Application) -> None:
    """Add /ui/ to `app` (no I/O: the session store starts with the app)."""
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("dashboard", "templates"),
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    app.cleanup_ctx.append(sessions_ctx)
    app.on_response_prepare.append(security_headers)
    r = app.router
    r.add_get("/ui", _home)
    r.add_get("/ui/", images_page.images_page)
    r.add_post("/ui/", images_page.register)
    r.add_get("/ui/signin", signin.signin_form)
    r.add_post("/ui/signin", signin.signin)
    r.add_post("/ui/signout", signin.signout)
    r.add_get("/ui/fleet/", fleet.fleet_page)
    r.add_get("/ui/live/", live.live, allow_head=False)
    r.add_get("/ui/static/{file}", assets.serve)
    r.add_get("/ui/image/{name:.+}/", image_page.image_page)
    r.add_post("/ui/image/{name:.+}/", image_page.image_action)
    r.add_route("*", "/ui/{tail:.*}", signin.not_found)
