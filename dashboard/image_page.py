"""`/ui/image/<name>/`: one image as the API shows it to the account (api/queries.py
get_image, sync_status), its tags with their layer summary and sync problems, and the
buttons that re-sync, edit and delete it through the API's own code (api/images.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from api import images, queries
from api.bodies import ImagePatch, parse_body
from api.errors import ApiError, BadRequestError, NotFoundError
from api.keys import POOL, SETTINGS
from api.params import MAX_CURSOR
from api.queries import TAG_COLUMNS, Conn
from core.accounts import Account
from dashboard.format import path
from dashboard.guard import Ctx, page, redirect, render

TAGS_PER_PAGE = 100

# The tags of an image the caller was shown by get_image (visibility is the image's), with the
# API's tag columns (the layer through the tag's proven config) and what a person needs more:
# the digest the tag points at, its build date and its own sync problem.
_TAGS = f"""
SELECT {TAG_COLUMNS}, t.manifest_digest, t.build_date, t.pushed_at, t.sync_error, t.sync_note
  FROM tags AS t LEFT JOIN layers AS l ON l.config_digest = t.config_digest
"""
TAG_ROWS_SQL = _TAGS + """ WHERE t.image_id = $1 AND t.name COLLATE "C" > $2 ORDER BY t.name COLLATE "C" LIMIT $3"""


async def tag_rows(conn: Conn, image_id: int, after: str = "", limit: int = TAGS_PER_PAGE) -> list[asyncpg.Record]:
    """Up to `limit` tags by name after `after` (one more tells that more follow)."""
    return list(await conn.fetch(TAG_ROWS_SQL, image_id, after, limit))


ONE_TAG_SQL = _TAGS + " WHERE t.image_id = $1 AND t.name = $2"


async def one_tag(conn: Conn, image_id: int, tag: str) -> asyncpg.Record | None:
    return await conn.fetchrow(ONE_TAG_SQL, image_id, tag)


def writable(account: Account, image: asyncpg.Record) -> bool:
    try:
        images.check_writable(account, image)
    except ApiError:
        return False
    return True


async def visible_image(ctx: Ctx) -> asyncpg.Record:
    """The image of the path as the account sees it; 404 (never 403) otherwise."""
    name = ctx.request.match_info["name"]
    image = await queries.get_image(ctx.request.app[POOL], ctx.user.id, name)
    if image is None:
        raise NotFoundError(f"There is no image '{name}' that you can see.")
    return image


async def image_context(app: web.Application, account: Account, image: asyncpg.Record,
                        after: str = "") -> dict[str, Any]:
    """What the image page shows of `image` (also its live fragments, dashboard/live.py)."""
    pool = app[POOL]
    rows = await tag_rows(pool, image["id"], after, TAGS_PER_PAGE + 1)
    status = await queries.sync_status(pool, image["id"])
    interval = status["sync_interval"] or app[SETTINGS].sync_interval_seconds
    return {
        "image": image, "tags": rows[:TAGS_PER_PAGE], "more_tags": len(rows) > TAGS_PER_PAGE,
        "tags_after": after, "sync": status, "poll_minutes": round(interval / 60, 1),
        "writable": writable(account, image),
    }


@page()
async def image_page(ctx: Ctx) -> web.StreamResponse:
    image = await visible_image(ctx)
    q = ctx.request.query
    after = q.get("after", "")
    if len(after) > MAX_CURSOR:
        raise BadRequestError("after is a tag name from the page's links")
    env_tag = q.get("env")  # env values are shown only when asked for, for one tag
    values = await image_context(ctx.request.app, ctx.user, image, after)
    env_row = await one_tag(ctx.request.app[POOL], image["id"], env_tag) if env_tag else None
    return render(ctx, "image.html", **values, env_tag=env_tag if env_row else None, env_row=env_row,
                  confirm=q.get("confirm") == "delete", done=q.get("done"), error=None,
                  form={"description": image["description"]})


@page()
async def image_action(ctx: Ctx) -> web.StreamResponse:
    """The image page's forms: `action` = resync, edit or delete (delete needs `confirm`)."""
    image = await visible_image(ctx)
    app, action = ctx.request.app, ctx.field("action")
    base = f"/ui/image/{path(image['name'])}/"
    try:
        images.check_writable(ctx.user, image)
        if action == "resync":
            await images.request_resync(app, ctx.user, image)
            return redirect(f"{base}?done=resync")
        if action == "edit":
            # empty credential fields keep the stored ones (a PATCH that leaves them out)
            data: dict[str, Any] = {"description": ctx.field("description")}
            data.update({k: ctx.field(k) for k in ("username", "password") if ctx.field(k)})
            await images.change_image(app, ctx.user, image, parse_body(ImagePatch, data))
            return redirect(f"{base}?done=edit")
        if action == "delete":
            if ctx.field("confirm") != "yes":
                return redirect(f"{base}?confirm=delete")
            await images.remove_image(app, image)
            return redirect(f"/ui/?done=deleted&image={path(image['name'])}")
        raise BadRequestError("unknown action")
    except ApiError as exc:
        values = await image_context(app, ctx.user, image)
        return render(ctx, "image.html", status=exc.status, **values, env_tag=None, env_row=None, confirm=False,
                      done=None, error=exc.message,
                      form={"description": ctx.field("description") or image["description"],
                            "username": ctx.field("username")})
