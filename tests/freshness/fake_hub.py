"""A small fake of Docker Hub's repository API, as documented:
`GET /v2/repositories/<namespace>/<repository>/` → {"name", "namespace", "description",
"star_count", "pull_count", "is_private", ...}; 404 `{"message": "object not found"}` for a
repository it does not know.
`GET /v2/repositories/<namespace>/<repository>/tags?ordering=last_updated&page_size=N&page=P`
→ {"count", "next" (the next page's absolute URL, or null), "previous", "results": [{"name",
"last_updated", "tag_last_pushed", "digest", ...}]}, most recently updated first (`tags`).
The registry part of "the hub" is the real local registry."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # "ns/repo" -> description, star_count
        self.tags: dict[str, dict[str, str]] = {}  # "ns/repo" -> {tag: last_updated (ISO 8601)}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append(self.path)
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) == 5 and parts[:2] == ["v2", "repositories"] and parts[4] == "tags":
                    self._tags(f"{parts[2]}/{parts[3]}", parse_qs(url.query))
                    return
                meta = None
                if len(parts) == 4 and parts[:2] == ["v2", "repositories"]:
                    meta = hub.repos.get(f"{parts[2]}/{parts[3]}")
                if meta is None:
                    self._send(404, {"message": "object not found", "errinfo": {}})
                    return
                self._send(200, {
                    "user": parts[2], "name": parts[3], "namespace": parts[2],
                    "repository_type": "image", "status": 1, "is_private": False,
                    "is_automated": False, "pull_count": 1234, "last_updated": "2024-01-01T00:00:00Z",
                    "full_description": "# long text", "description": "", "star_count": 0, **meta,
                })

            def _tags(self, repo: str, query: dict[str, list[str]]) -> None:
                tags = hub.tags.get(repo)
                if tags is None:
                    self._send(404, {"message": "object not found", "errinfo": {}})
                    return
                size = min(int(query.get("page_size", ["10"])[0]), 100)
                page = int(query.get("page", ["1"])[0])
                ordering = query.get("ordering", ["last_updated"])[0]
                names = sorted(tags, key=lambda t: tags[t], reverse=ordering == "last_updated")
                chunk = names[(page - 1) * size : page * size]
                base = f"{hub.url}/v2/repositories/{repo}/tags?"

                def link(p: int) -> str | None:
                    if p < 1 or (p - 1) * size >= len(names):
                        return None
                    return base + urlencode({"ordering": ordering, "page": p, "page_size": size})

                self._send(200, {
                    "count": len(names), "next": link(page + 1), "previous": link(page - 1),
                    "results": [{
                        "creator": 1, "id": i, "images": [], "last_updated": tags[t], "last_updater": 1,
                        "last_updater_username": "fake", "name": t, "repository": 1, "full_size": 1000,
                        "v2": True, "tag_status": "active", "tag_last_pulled": None, "tag_last_pushed": tags[t],
                        "media_type": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + "0" * 64,
                    } for i, t in enumerate(chunk)],
                })

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
