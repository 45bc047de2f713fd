"""A small fake of Docker Hub's repository API, as documented:
`GET /v2/repositories/<namespace>/<repository>/` → {"name", "namespace", "description",
"star_count", "pull_count", "is_private", ...}; 404 `{"message": "object not found"}` for a
repository it does not know. The registry part of "the hub" is the real local registry."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # "ns/repo" -> description, star_count
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append(self.path)
                parts = self.path.strip("/").split("/")
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
