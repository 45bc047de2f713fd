"""`tutum`: the old Tutum CLI's `login` and `image` commands against registry-sync.

Arguments, flags, tables and exit codes follow tutum-cli 0.21 (0 success, 2 not authorized,
3 any other failure; argparse's usage errors are 2 as before); `image sync`, `image watch`
and `--output json|table` are new. Credentials and the service URL are read as the old CLI
read them (registry_sync_client.config). Ctrl-C ends any command with 130 and a closed
output pipe (`tutum image list | head -1`) with 0, both without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from registry_sync_client import config
from registry_sync_client.cli import images, notify
from registry_sync_client.cli.images import AUTH_ERROR_EXIT, FAILURE_EXIT, OK, err, explain, out
from registry_sync_client.client import AsyncClient, __version__
from registry_sync_client.errors import AuthError, ClientError

Command = Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]
INTERRUPTED_EXIT = 130  # Ctrl-C, as a shell reports a command that SIGINT ended


FULL_NAME = "full image name, i.e. quay.io/tutum/test-repo"
TAG_REF = "image tag, format: image_name[:tag]"


def _command(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, about: str, run: Command,
             positional: tuple[str, str, str | None, str] | None = None) -> argparse.ArgumentParser:
    """A subcommand that runs `run`, takes `--output`, and its positional (dest, metavar, nargs, help)."""
    parser = parent.add_parser(name, help=about, description=about)
    if positional is not None:
        dest, metavar, nargs, text = positional
        parser.add_argument(dest, metavar=metavar, nargs=nargs, help=text)
    parser.add_argument("-o", "--output", choices=("table", "json"), default=None,
                        help="print a table (default; JSON for inspect) or JSON")
    parser.set_defaults(run=run)
    return parser


def _scope(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-j", "--jumpstarts", action="store_true", help=f"list jumpstart {what} only")
    group.add_argument("-p", "--private", action="store_true", help=f"list private {what} only")
    group.add_argument("-u", "--user", action="store_true", help=f"list user added {what} only(default)")
    group.add_argument("-a", "--all", action="store_true", help=f"list all {what}")


def _fields(parser: argparse.ArgumentParser, description: str, username: str, password: str) -> None:
    """register's and update's options: the image's fields, and --sync."""
    parser.add_argument("-d", "--description", help=description)
    parser.add_argument("-u", "--username", help=username)
    parser.add_argument("-p", "--password", help=password)
    parser.add_argument("--sync", action="store_true", help="block the command until the image's sync has finished")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tutum", description="Tutum's CLI, for registry-sync's Images API")
    parser.add_argument("-v", "--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="Tutum's CLI commands", dest="cmd")

    login = commands.add_parser("login", help="Login into Tutum", description="Verify a user name and API key "
                                "and store them in ~/.tutum")
    login.add_argument("-u", "--username", help="Tutum username")
    login.add_argument("-p", "--password", help="Tutum API key")

    image = commands.add_parser("image", help="Image-related operations", description="Image-related operations")
    sub = image.add_subparsers(title="tutum image commands", dest="subcmd")

    p = _command(sub, "list", "List user's images", images.image_list)
    p.add_argument("-q", "--quiet", action="store_true", help="print only image names")
    _scope(p, "images")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("--name", help="only the image of this name")
    p.add_argument("--registry", help="only images of this registry (host or resource URI)")
    p.add_argument("--category", help="only images of this category")

    _command(sub, "inspect", "Inspect an image", images.image_inspect, ("names", "identifier", "+", "image name"))

    p = _command(sub, "register", "Register an image from a private repository in Tutum", images.image_register,
                 ("name", "image_name", None, FULL_NAME))
    _fields(p, "Image description", "Username of the private registry", "Password of the private registry")

    p = _command(sub, "update", "Update a private image", images.image_update,
                 ("names", "image_name", "+", FULL_NAME))
    _fields(p, "new image description", "new username to authenticate with the registry",
            "new password to authenticate with the registry")

    p = _command(sub, "rm", "Deregister a private image from Tutum", images.image_rm,
                 ("names", "image_name", "+", FULL_NAME))
    p.add_argument("--sync", action="store_true", help="accepted for compatibility; removal is immediate")

    p = _command(sub, "sync", "Show an image's last sync, its error and the next run", images.image_sync,
                 ("names", "image_name", "+", "image name"))
    p.add_argument("--now", action="store_true",
                   help="sync it now (POST …/sync/), wait until that sync has finished, then show it; "
                        "exit 3 if it failed")

    p = _command(sub, "watch", "Print changes of images and tags as they happen, until interrupted "
                 "(the events stream, reconnecting on its own)", images.image_watch,
                 ("names", "image_name", "*", "only these images (NAME or NAME:TAG)"))
    p.add_argument("--sse", action="store_true", help="use Server-Sent Events instead of a WebSocket")
    p.add_argument("--max-backoff", type=float, default=10.0, help="longest wait between reconnections (s)")

    tag = sub.add_parser("tag", help="Image tag related operations", description="Image tag related operations")
    tags = tag.add_subparsers(title="tutum image tag commands", dest="tagcmd")
    p = _command(tags, "list", "List tags of user's images", images.tag_list,
                 ("names", "identifier", "*", "image name"))
    _scope(p, "images")
    _command(tags, "inspect", "Inspect an image tag", images.tag_inspect, ("refs", "identifier", "+", TAG_REF))
    p = _command(tags, "build", "Build an image tag (here: re-sync it at once)", images.tag_build,
                 ("refs", "identifier", "+", TAG_REF))
    p.add_argument("--sync", action="store_true", help="accepted for compatibility")
    notify.add_commands(commands, tags)
    return parser


# Commands that show their help when called without arguments, as the old CLI's did.
_HELP_WHEN_BARE = {("image",), ("image", "tag"), ("image", "register"), ("image", "rm"), ("image", "update"),
                   ("image", "inspect"), ("image", "sync"), ("image", "tag", "inspect"), ("image", "tag", "build"),
                   ("image", "tag", "history"), ("subscription",), ("subscription", "create"), ("subscription", "rm")}


def _with_help(argv: list[str]) -> list[str]:
    if not argv or tuple(argv) in _HELP_WHEN_BARE:
        return [*argv, "-h"]
    return argv


def _login(args: argparse.Namespace) -> int:
    username, key = args.username, args.password
    if username is None or key is None:
        if not sys.stdin.isatty():
            err("give -u/--username and -p/--password (your API key): there is no terminal to ask on")
            return FAILURE_EXIT
        username = username or input("Username: ")
        key = key or getpass.getpass("API key: ")
    base_url = config.base_url_from(os.environ)

    async def verify() -> None:
        async with AsyncClient(base_url, user=username, apikey=key) as api:
            await api.whoami()

    try:
        asyncio.run(verify())
    except AuthError:
        err(f"Login failed: {base_url} does not know that user name and API key")
        return AUTH_ERROR_EXIT
    except ClientError as exc:
        err(explain(exc))
        return FAILURE_EXIT
    path = config.write_config_file(username, key)
    out("Login succeeded!")
    if os.environ.get("TUTUM_AUTH") or (os.environ.get("TUTUM_USER") and os.environ.get("TUTUM_APIKEY")):
        err(f"note: TUTUM_AUTH or TUTUM_USER/TUTUM_APIKEY in the environment take precedence over {path}")
    return OK


async def _run(command: Command, args: argparse.Namespace) -> int:
    settings = config.load_settings()
    async with AsyncClient(settings.base_url, authorization=settings.authorization, user=settings.user) as api:
        if settings.authorization is None:
            err(f"no credentials: set TUTUM_USER and TUTUM_APIKEY, or run 'tutum login' (for {api.root})")
            return AUTH_ERROR_EXIT
        await api.whoami()  # as the old CLI did: a wrong key is told once, before anything is done
        return await command(api, args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C, also in `watch`: as a shell reports it, quietly
        return INTERRUPTED_EXIT
    except BrokenPipeError:  # the reader went away (`| head -1`): nothing more to say
        _silence_output()
        return OK


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null, so that the flush at exit does not fail again
    on the closed pipe (the way the Python documentation advises for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_help(list(sys.argv[1:] if argv is None else argv)))
    if args.cmd == "login":
        return _login(args)
    command: Command | None = getattr(args, "run", None)
    if command is None:  # `tutum image tag` with an unknown shape: argparse already said
        parser.print_help()
        return OK
    try:
        return asyncio.run(_run(command, args))
    except AuthError as exc:
        err(str(exc))
        return AUTH_ERROR_EXIT
    except ClientError as exc:
        err(explain(exc))
        return FAILURE_EXIT


def entry_point() -> None:
    sys.exit(main())
