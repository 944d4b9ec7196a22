"""Shared fixtures: a local HTTP server on 127.0.0.1 that records its hits.

Helpers live in multimodal_helpers.py (a uniquely named module put on sys.path here,
since the suite runs in importlib mode where conftest itself is not importable).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from multimodal_helpers import LocalServer, Route


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    routes: dict[str, Route] = {}
    hits: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append((self.path, self.headers.get("Host", "")))
            route = routes.get(self.path)
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(route.status)
            headers = {"Content-Length": str(len(route.body)), **route.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            # The client may stop reading at its byte limit.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(route.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LocalServer(server.server_address[1], routes, hits)
    finally:
        server.shutdown()
        server.server_close()
