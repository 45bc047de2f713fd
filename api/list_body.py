"""A list response `{"meta": {…}, "objects": [{…}, …]}` written object by object, so that
its memory stays bounded whatever the objects hold (SPEC §4: every response, list pages
included, has a memory bound).

The bytes are exactly those of `orjson.dumps(serializers.envelope(...))`. While they fit in
LIST_BUFFER_BYTES they are kept and answered as one body, with its ETag and 304s as before
(api/etag.py); that is every page of ordinary images. A larger list (images with thousands
of tags each: a page may hold 1,000 images of MAX_TAGS_PER_IMAGE tags, 700 MB) is streamed
instead, chunked, in pieces of about FLUSH_BYTES, each written only once the client has taken
the previous ones (aiohttp drains the socket), and without an ETag: that would need the whole
body first. A streamed response that fails half-way has its connection closed before its
final chunk (the error is answered as usual when nothing was sent yet), so a client never
takes a partial list for a whole one.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import orjson
import structlog
from aiohttp import web

FLUSH_BYTES = 256 * 1024  # a streamed list is written in pieces of about this size


class ListBody:
    def __init__(self, request: web.Request, meta: dict[str, Any], buffer_bytes: int) -> None:
        """`meta`: the list's `meta` object (serializers.list_meta)."""
        self._request = request
        self._limit = buffer_bytes
        self._pieces: list[bytes] = [b'{"meta":', orjson.dumps(meta), b',"objects":[']
        self._size = sum(len(p) for p in self._pieces)
        self._first = True
        self._stream: web.StreamResponse | None = None

    async def __aenter__(self) -> ListBody:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """An error once the stream has started: the status line is gone, so the connection
        is closed mid-body (the client sees a transfer cut short) and the error goes on to be
        logged; the answer the error middleware makes of it can no longer be sent."""
        if exc is not None and self._stream is not None and self._request.transport is not None:
            self._request.transport.close()

    async def add(self, obj: dict[str, Any]) -> None:
        """Append one object (written out once the pieces kept pass the bound)."""
        data = orjson.dumps(obj)
        if not self._first:
            self._pieces.append(b",")
            self._size += 1
        self._first = False
        self._pieces.append(data)
        self._size += len(data)
        if self._stream is None and self._size > self._limit:
            self._stream = await self._start()
        if self._stream is not None and self._size >= FLUSH_BYTES:
            await self._flush(self._stream)

    async def finish(self) -> web.StreamResponse:
        """The response: one body when everything fit the buffer, else the end of the stream."""
        self._pieces.append(b"]}")
        if self._stream is None:
            return web.Response(body=b"".join(self._pieces), content_type="application/json")
        await self._flush(self._stream)
        await self._stream.write_eof()
        return self._stream

    async def _start(self) -> web.StreamResponse:
        # Middlewares cannot add headers once the stream has started: the request id is set
        # here (api/request_log.py binds it), the caching rule is api/etag.py's without an ETag.
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        headers = {"Cache-Control": "private, no-cache"}
        if request_id:
            headers["X-Request-ID"] = str(request_id)
        stream = web.StreamResponse(headers=headers)
        stream.content_type = "application/json"
        # no length: aiohttp sends HTTP/1.1 chunked (HTTP/1.0: until the connection closes)
        await stream.prepare(self._request)
        return stream

    async def _flush(self, stream: web.StreamResponse) -> None:
        data = b"".join(self._pieces)
        self._pieces, self._size = [], 0
        if self._request.method != "HEAD":  # the headers of a GET, no body
            await stream.write(data)
