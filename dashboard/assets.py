"""The dashboard's static files, served by the service itself (no CDN, no build step).

Everything in dashboard/static/ is read once when the app is made and served from memory at
`/ui/static/<file>`. Pages link them as `/ui/static/<file>?v=<content hash>`, so a browser
may keep them for a year (`immutable`) and a changed file is a new URL.

Vendored, unmodified, with their licences beside them (VENDORED pins them; a test checks
the bytes): htmx 2 and its Server-Sent Events extension, from the npm registry packages
`htmx.org` and `htmx-ext-sse` (`npm pack htmx.org@2.0.11`, `npm pack htmx-ext-sse@2.2.4`,
`dist/htmx.min.js` and `dist/sse.min.js`).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/ui/static/"

# file -> (npm package, version, sha256 of the file as the package ships it)
VENDORED = {
    "htmx-2.0.11.min.js": ("htmx.org", "2.0.11", "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"),
    "htmx-ext-sse-2.2.4.min.js": (
        "htmx-ext-sse", "2.2.4", "98a46496de0c3605fbffdce9167ba427bdd9553184f83f149c261891a92c0136"),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str


def _load() -> dict[str, Asset]:
    out = {}
    for path in sorted(STATIC_DIR.iterdir()):
        body = path.read_bytes()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        out[path.name] = Asset(body, ctype, hashlib.sha256(body).hexdigest()[:12])
    return out


ASSETS = _load()


def url(name: str) -> str:
    """The versioned URL of a static file (KeyError for a file that is not there)."""
    return f"{STATIC_PREFIX}{name}?v={ASSETS[name].version}"


async def serve(request: web.Request) -> web.Response:
    asset = ASSETS.get(request.match_info["file"])
    if asset is None:
        raise web.HTTPNotFound()
    return web.Response(body=asset.body, headers={"Content-Type": asset.content_type})
