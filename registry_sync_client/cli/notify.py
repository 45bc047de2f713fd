"""`tutum image tag history NAME:TAG` and `tutum subscription create|list|rm`: the tag
history and the notification subscriptions (registry-sync's extensions)."""

from __future__ import annotations

import argparse

from registry_sync_client.cli import render
from registry_sync_client.cli.images import OK, each, out
from registry_sync_client.client import AsyncClient, parse_reference
from registry_sync_client.notify_models import Subscription

HISTORY_HEADERS = ("DIGEST", "FROM", "UNTIL", "SEEN BY")
SUBSCRIPTION_HEADERS = ("ID", "URL", "EVENTS", "IMAGE", "TAGS", "ENABLED")


async def tag_history(api: AsyncClient, args: argparse.Namespace) -> int:
    name, tag = parse_reference(args.ref)
    entries = [e async for e in api.tag_history(name, tag)]
    if args.output == "json":
        out(render.to_json([e.raw for e in entries]))
    else:
        out(render.table(HISTORY_HEADERS, [[e.digest, e.raw.get("from") or "", e.raw.get("until") or "now",
                                            e.observed_via] for e in entries]))
    return OK


def _row(s: Subscription) -> list[str]:
    return [str(s.id), s.url, ",".join(s.events), s.image or "(own images)", s.tag_pattern or "*",
            "yes" if s.enabled else f"no: {s.disabled_reason}"]


async def subscription_create(api: AsyncClient, args: argparse.Namespace) -> int:
    sub = await api.create_subscription(args.url, args.events.split(","), image=args.image, tag_pattern=args.tags)
    if args.output == "json":
        out(render.to_json(sub.raw))
    else:
        out(render.table(SUBSCRIPTION_HEADERS, [_row(sub)]))
        out(f"secret (shown once; verify each delivery's signature with it): {sub.secret}")
    return OK


async def subscription_list(api: AsyncClient, args: argparse.Namespace) -> int:
    subs = [s async for s in api.subscriptions()]
    if args.output == "json":
        out(render.to_json([s.raw for s in subs]))
    else:
        out(render.table(SUBSCRIPTION_HEADERS, [_row(s) for s in subs]))
    return OK


async def subscription_rm(api: AsyncClient, args: argparse.Namespace) -> int:
    async def one(ident: str) -> None:
        await api.delete_subscription(int(ident))
        out(ident)

    return await each(args.ids, one)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 tags: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`image tag history` under `tags`, `subscription …` under `commands`."""
    p = tags.add_parser("history", help="Every digest an image tag pointed at, newest first")
    p.add_argument("ref", metavar="identifier", help="image tag, format: image_name[:tag]")
    _output(p, tag_history)
    sub = commands.add_parser("subscription", help="Signed notifications of image changes",
                              description="Signed notifications (Standard Webhooks) of image changes")
    cmds = sub.add_subparsers(title="tutum subscription commands", dest="subcmd")
    p = cmds.add_parser("create", help="Send changes to a URL; prints the signing secret once")
    p.add_argument("url", help="http(s) endpoint")
    p.add_argument("--events", default="tag.pushed,tag.moved,tag.deleted,image.state,sync.failing",
                   help="comma-separated: tag.pushed, tag.moved, tag.deleted, image.state, sync.failing")
    p.add_argument("--image", help="only this image (needed for catalog images; default: your own images)")
    p.add_argument("--tags", help="only tags matching this glob, i.e. 'v*'")
    _output(p, subscription_create)
    _output(cmds.add_parser("list", help="List your subscriptions"), subscription_list)
    p = cmds.add_parser("rm", help="Remove subscriptions")
    p.add_argument("ids", metavar="id", nargs="+", type=int, help="subscription id")
    _output(p, subscription_rm)


def _output(parser: argparse.ArgumentParser, run: object) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default=None, help="print a table or JSON")
    parser.set_defaults(run=run)

