"""The two bare apps the read benchmark compares the API with (run as their own processes):

- `constant`: bare aiohttp answering every image path with a constant JSON body of the size
  the API answers (a list page for the collection, a detail for anything else): the ceiling
  of the framework on this machine;
- `lookup`: bare aiohttp + asyncpg doing the same look-up the API does for an image or a tag
  (api/queries.py GET_IMAGE_SQL; GET_IMAGE_OF_SQL for a tag, whose path reads both ways; the
  same pool settings) and answering the row as JSON: the ceiling of framework + database.

    python -m bench.baselines constant PORT DETAIL_FILE LIST_FILE [--workers N]
    python -m bench.baselines lookup PORT DSN ACCOUNT_ID [--workers N]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
from aiohttp import web

from api.queries import GET_IMAGE_OF_SQL, GET_IMAGE_SQL
from api.server import run_processes
from bench.common import HOST
from core.db import create_pool

POOL = web.AppKey("pool", asyncpg.Pool)


def _constant(port: int, detail: bytes, listing: bytes, reuse_port: bool) -> None:
    async def detail_handler(_: web.Request) -> web.Response:
        return web.Response(body=detail, content_type="application/json")

    async def list_handler(_: web.Request) -> web.Response:
        return web.Response(body=listing, content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", list_handler)
    app.router.add_get("/api/v1/image/", list_handler)
    app.router.add_get("/api/v1/image/{tail:.+}", detail_handler)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, reuse_port=reuse_port)


def _lookup(port: int, dsn: str, account_id: int, reuse_port: bool) -> None:
    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await create_pool(dsn, min_size=2, max_size=10, stateless=True)
        yield
        await app[POOL].close()

    def dump(row: asyncpg.Record) -> bytes:
        return orjson.dumps(dict(row), default=str)

    async def handler(request: web.Request) -> web.Response:
        tail = request.match_info["tail"].removesuffix("/")
        name, sep, tag = tail.rpartition("/tag/")
        # as the API: the whole image for its detail, the image with its tag for one of its tags
        pool = request.app[POOL]
        body = await (pool.fetchrow(GET_IMAGE_OF_SQL, account_id, tail, name, tag) if sep
                      else pool.fetchrow(GET_IMAGE_SQL, account_id, tail))
        if body is None or (sep and body["tag_name"] is None):
            raise web.HTTPNotFound()
        return web.Response(body=dump(body), content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(pool)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/image/{tail:.+}", handler)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, reuse_port=reuse_port)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("kind", choices=("constant", "lookup"))
    p.add_argument("port", type=int)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    if args.kind == "constant":
        target, params = _constant, (args.port, Path(args.a).read_bytes(), Path(args.b).read_bytes())
    else:
        target, params = _lookup, (args.port, args.a, int(args.b))  # type: ignore[assignment]
    if args.workers <= 1:
        target(*params, False)  # type: ignore[operator]
    else:
        run_processes(target, (*params, True), args.workers)


if __name__ == "__main__":
    main()
