"""`/ui/`: the images an account sees (dashboard/listing.py), its state counts, and the form
that registers an image through the API's own code (api/images.py register_image)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from api import images, pages
from api.bodies import ImageCreate, parse_body
from api.errors import ApiError, BadRequestError
from api.keys import POOL
from api.params import MAX_CURSOR, Page
from core.names import HUB_HOST
from dashboard import listing
from dashboard.format import path
from dashboard.guard import Ctx, page, redirect, render
from dashboard.listing import NAME_MAX, STATES, View

REGISTRIES_LISTED = 100


def parse_view(query: MultiMapping[str]) -> View:
    """The page's view from its query string; 400 naming a malformed parameter."""
    mine = query.get("scope", "mine") != "all"
    sort = query.get("sort", "name")
    if sort not in ("name", "built"):
        raise BadRequestError("sort is 'name' or 'built'", field="sort")
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise BadRequestError(f"state is one of {', '.join(STATES)}", field="state")
    prefix = (query.get("name") or "").strip().lower() or None
    if prefix is not None and (len(prefix) > NAME_MAX or not prefix.isascii() or not prefix.isprintable()):
        raise BadRequestError("a name filter is the start of an image name", field="name")
    registry = query.get("registry") or None
    if registry is not None and (len(registry) > NAME_MAX or "/" in registry):
        raise BadRequestError("registry is a registry host", field="registry")
    after, before = query.get("after") or None, query.get("before") or None
    for cursor in (after, before):
        if cursor is not None and (len(cursor) > MAX_CURSOR or "\x00" in cursor):
            raise BadRequestError("after and before are cursors from the page's links", field="after")
    return View(mine, sort, prefix, state, registry, after, None if after else before)


def view_query(v: View, **changes: Any) -> str:
    """The query string of `v` with `changes` (None drops a parameter), for links."""
    values: dict[str, Any] = {"scope": None if v.mine else "all", "sort": None if v.sort == "name" else v.sort,
                              "name": v.prefix, "state": v.state, "registry": v.registry}
    values.update(changes)
    return urlencode({k: val for k, val in values.items() if val})


async def _page(ctx: Ctx, *, status: int = 200, form: dict[str, str] | None = None,
                form_error: str | None = None, form_field: str | None = None) -> web.Response:
    pool = ctx.request.app[POOL]
    try:
        view = parse_view(ctx.request.query)
    except BadRequestError as exc:
        view, status, form_error, form_field = View(), 400, exc.message, None
    try:
        result = await listing.list_view(pool, ctx.user.id, view)
    except listing.BadCursorError:
        raise BadRequestError("that page link is not valid any more; start from the first page") from None
    counts = await listing.own_state_counts(pool, ctx.user.id)
    registries = await pages.list_registries(pool, ctx.user.id, HUB_HOST, Page(REGISTRIES_LISTED))
    filtered = bool(view.prefix or view.state or view.registry) or not view.mine
    return render(
        ctx, "images.html", status=status, view=view, result=result, counts=counts, states=STATES,
        registries=[r["host"] for r in registries.rows], filtered=filtered, view_query=view_query,
        live_query=view_query(view, after=view.after, before=view.before),
        form=form or {}, form_error=form_error, form_field=form_field,
        own_total=sum(counts.values()), cap=listing.STATE_COUNT_CAP, done=ctx.request.query.get("done"),
    )


@page()
async def images_page(ctx: Ctx) -> web.StreamResponse:
    return await _page(ctx)


@page()
async def register(ctx: Ctx) -> web.StreamResponse:
    """The register form: the API's registration, so every rule of POST /api/v1/image/ holds."""
    form = {k: ctx.field(k) for k in ("name", "username", "password", "description")}
    data: dict[str, Any] = {"name": form["name"].strip(), "description": form["description"]}
    # an empty credential field is one the form leaves out (the API then says what is missing)
    data.update({k: form[k] for k in ("username", "password") if form[k]})
    try:
        if not data["name"]:
            raise BadRequestError("Enter the name of the image, as you would pull it.", field="name")
        body = parse_body(ImageCreate, data)
        image = await images.register_image(ctx.request.app, ctx.user, body)
    except ApiError as exc:
        form.pop("password")
        return await _page(ctx, status=exc.status, form=form, form_error=exc.message,
                           form_field=exc.detail.get("field"))
    return redirect(f"/ui/image/{path(image['name'])}/?done=registered")

