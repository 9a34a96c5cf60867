"""A stdlib HTTP/1.1 server on 127.0.0.1 (free port) in a daemon thread, for the tests' scripted servers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable


def start_http_server(
    answer: Callable[[http.server.BaseHTTPRequestHandler], None], poll_interval: float = 0.5
) -> http.server.ThreadingHTTPServer:
    """Serve every GET with ``answer(handler)``; the caller shuts the returned server down."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            answer(self)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True).start()
    return httpd
