"""`tutum image …`: the old CLI's image commands, plus `sync` and `watch`.

Each command takes the client and the parsed arguments and returns the exit code. A command
given several names goes through all of them, prints each failure on stderr and exits
non-zero if any failed, as the old CLI did.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from registry_sync_client.cli import render
from registry_sync_client.client import AsyncClient, parse_reference
from registry_sync_client.errors import AuthError, ClientError, NotFoundError, UnreachableError
from registry_sync_client.models import Event, Image, SyncStatus

OK = 0
AUTH_ERROR_EXIT = 2  # the old CLI's TUTUM_AUTH_ERROR_EXIT_CODE
FAILURE_EXIT = 3  # the old CLI's EXCEPTION_EXIT_CODE
SYNC_WAIT_SECONDS = 120.0

LIST_HEADERS = ("NAME", "#TAG", "IN_USE", "PRIVATE", "TUTUM_BUILD", "DESCRIPTION")
TAG_HEADERS = ("NAME", "TAG")


def out(text: str) -> None:
    print(text, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def explain(exc: ClientError) -> str:
    """The sentence for a failure; an unreachable service also says where its URL comes from."""
    if isinstance(exc, UnreachableError):
        return f"{exc} (the service's URL comes from TUTUM_REST_HOST)"
    return str(exc)


def missing_image(name: str) -> str:
    """What the old CLI printed for a name no image has (scripts grep it)."""
    return f"Cannot find an image with the identifier '{name}'"


async def each(names: Iterable[str], action: Callable[[str], Awaitable[None]], *, images: bool = True) -> int:
    """Run `action` for every name; report each failure; the exit code of the whole. With
    `images` (the names are image names), a 404 is told in the old CLI's words."""
    code = OK
    for name in names:
        try:
            await action(name)
        except AuthError:
            raise  # the same for every name: reported once by main
        except NotFoundError as exc:
            err(missing_image(name) if images else explain(exc))
            code = FAILURE_EXIT
        except ClientError as exc:
            err(explain(exc))
            code = FAILURE_EXIT
    return code


def _scope(args: argparse.Namespace) -> dict[str, Any]:
    """The old CLI's list scope: -j jumpstarts, -p private, -a all, else (-u) the caller's."""
    if args.jumpstarts:
        return {"jumpstart": True}
    if args.private:
        return {"is_private_image": True}
    if args.all:
        return {}
    return {"is_user_image": True}


def _description(text: str, no_trunc: bool) -> str:
    return text if no_trunc or len(text) <= 40 else text[:36] + " ..."


async def image_list(api: AsyncClient, args: argparse.Namespace) -> int:
    filters = _scope(args)
    for key in ("name", "registry", "category"):
        if getattr(args, key) is not None:
            filters[key] = getattr(args, key)
    images = await api.list_images(**filters)
    if args.quiet:
        for image in images:
            out(image.name)
    elif args.output == "json":
        out(render.to_json([i.raw for i in images]))
    else:
        rows: list[list[render.Cell]] = [
            [i.name, len(i.tags), render.yes_no(i.in_use), render.yes_no(i.is_private_image),
             render.yes_no(i.build_source), _description(i.description, args.no_trunc)]
            for i in images
        ]
        out(render.table(LIST_HEADERS, rows))
    return OK


def _show(obj: dict[str, Any], output: str | None) -> None:
    out(render.details(obj) if output == "table" else render.to_json(obj))


async def image_inspect(api: AsyncClient, args: argparse.Namespace) -> int:
    async def one(name: str) -> None:
        _show((await api.get_image(name)).raw, args.output)

    return await each(args.names, one)


def _credentials(username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """Both or neither: the one missing is asked for on a terminal, as the old CLI did."""
    if (username is None) == (password is None):
        return username, password
    if not sys.stdin.isatty():
        raise ClientError("give both -u/--username and -p/--password of the registry")
    if username is None:
        print("Please input username of the registry:")
        username = input("Username: ")
    else:
        print("Please input password of the registry:")
        password = getpass.getpass()
    return username, password


async def _wait_for_sync(api: AsyncClient, name: str, since: datetime | None) -> SyncStatus:
    """Poll `…/sync/` until a sync newer than `since` finished (or failed)."""
    def done(status: SyncStatus) -> bool:
        finished = _last_finished(status)
        return finished is not None and (since is None or finished > since)

    return await _wait_until(api, name, done)


async def _wait_until(api: AsyncClient, name: str, done: Callable[[SyncStatus], bool]) -> SyncStatus:
    """Poll `…/sync/` until `done(status)` and no sync runs; ClientError after SYNC_WAIT_SECONDS."""
    deadline = time.monotonic() + SYNC_WAIT_SECONDS
    while True:
        status = await api.sync_status(name)
        if done(status) and not status.syncing:
            return status
        if time.monotonic() > deadline:
            raise ClientError(f"image '{name}': no sync finished within {SYNC_WAIT_SECONDS:g} s")
        await asyncio.sleep(0.25)


def _last_finished(status: SyncStatus) -> datetime | None:
    """When the last sync ended, successful or not."""
    return max((t for t in (status.last_synced_at, status.error_at) if t is not None), default=None)


def _failed(status: SyncStatus) -> bool:
    """The last sync that finished failed (its error is newer than the last success)."""
    if status.error is None:
        return False
    return status.last_synced_at is None or (status.error_at is not None and status.error_at >= status.last_synced_at)


async def _report(api: AsyncClient, image: Image, args: argparse.Namespace, since: datetime | None,
                  wait: bool) -> None:
    """Print what the old CLI printed (the name), or the object; after the sync when `wait`."""
    if wait:
        status = await _wait_for_sync(api, image.name, since)
        if _failed(status):
            raise ClientError(f"image '{image.name}': sync failed: {status.error}")
        image = await api.get_image(image.name)
    out(render.to_json(image.raw) if args.output == "json" else image.name)


async def image_register(api: AsyncClient, args: argparse.Namespace) -> int:
    username, password = _credentials(args.username, args.password)
    image = await api.register_image(args.name, username=username, password=password,
                                     description=args.description)
    await _report(api, image, args, None, wait=args.sync)
    return OK


async def image_update(api: AsyncClient, args: argparse.Namespace) -> int:
    async def one(name: str) -> None:
        # Only new credentials queue a sync; a new description has nothing to wait for.
        wait = args.sync and (args.username is not None or args.password is not None)
        since = _last_finished(await api.sync_status(name)) if wait else None
        image = await api.update_image(name, username=args.username, password=args.password,
                                       description=args.description)
        await _report(api, image, args, since, wait)

    return await each(args.names, one)


async def image_rm(api: AsyncClient, args: argparse.Namespace) -> int:
    async def one(name: str) -> None:
        await api.delete_image(name)
        out(render.to_json({"name": name, "deleted": True}) if args.output == "json" else name)

    return await each(args.names, one)


async def tag_list(api: AsyncClient, args: argparse.Namespace) -> int:
    images: list[Image] = []

    async def one(name: str) -> None:
        images.append(await api.get_image(name))

    if args.names:
        code = await each(args.names, one)
    else:
        images, code = await api.list_images(**_scope(args)), OK
    if args.output == "json":
        out(render.to_json({i.name: list(i.tags) for i in images}))
    else:
        out(render.table(TAG_HEADERS, [[i.name, ", ".join(sorted(i.tags))] for i in images]))
    return code


async def tag_inspect(api: AsyncClient, args: argparse.Namespace) -> int:
    async def one(ref: str) -> None:
        _show((await api.get_tag(*parse_reference(ref))).raw, args.output)

    return await each(args.refs, one, images=False)


async def tag_build(api: AsyncClient, args: argparse.Namespace) -> int:
    async def one(ref: str) -> None:
        tag = await api.build_tag(*parse_reference(ref))
        out(render.to_json(tag.raw) if args.output == "json" else tag.full_name)

    return await each(args.refs, one, images=False)


async def image_sync(api: AsyncClient, args: argparse.Namespace) -> int:
    """Show the sync status; with --now, request a sync first and show it once it finished
    (a failed sync is shown, then told on stderr, and the exit code is 3)."""
    shown = 0

    async def one(name: str) -> None:
        nonlocal shown
        if args.now:
            await api.sync_now(name)  # the requested sync has finished when `sync_requested` is false again
            status = await _wait_until(api, name, lambda status: not status.sync_requested)
        else:
            status = await api.sync_status(name)
        if args.output == "json":
            out(render.to_json(status.raw))
        else:
            out(("\n" if shown else "") + render.details(status.raw))
            shown += 1
        if args.now and _failed(status):
            raise ClientError(f"image '{name}': sync failed: {status.error}")

    return await each(args.names, one)


def _matches(event: Event, names: set[str], refs: set[tuple[str, str]]) -> bool:
    if not names and not refs:
        return True
    return event.image in names or (event.tag is not None and (event.image, event.tag) in refs)


async def image_watch(api: AsyncClient, args: argparse.Namespace) -> int:
    """Follow the events stream until interrupted; reconnects on its own."""
    names: set[str] = set()
    refs: set[tuple[str, str]] = set()

    async def check(ref: str) -> None:
        name, tag = parse_reference(ref, default_tag="")
        await api.get_image(name)  # an unknown name is a 404 now, not silence forever
        if tag:
            refs.add((name, tag))
        else:
            names.add(name)

    if (code := await each(args.names, check)) != OK:
        return code

    def status(state: str, detail: str) -> None:
        err(f"{'watching' if state == 'connected' else state} {detail}")

    if args.output != "json":
        out(render.event_header())
    async with api.events(transport="sse" if args.sse else "websocket", on_status=status,
                          max_backoff=args.max_backoff) as events:
        async for event in events:
            if _matches(event, names, refs):
                out(render.to_json_line(event.raw) if args.output == "json" else render.event_line(event))
    return OK
