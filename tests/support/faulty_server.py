"""A small HTTP file server of the tests' own that misbehaves on purpose (http.server in a thread).

Serves a directory with Range support and a strong ETag, and can: cut the connection after N body bytes (for
the first ``cuts`` responses), ignore Range headers (answer 200 with the whole file), change its ETag on every
request (as if the file were replaced between requests), stall before sending, or be down (no answer) for a
while from the first blob request on.
"""

from __future__ import annotations

import http.server
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.http_thread import start_http_server


@dataclass
class Faults:
    cut_after: int | None = None  # body bytes sent before the connection is dropped
    cuts: int = 1  # how many responses get cut
    ignore_range: bool = False
    rotate_etag: bool = False
    delay: float = 0.0  # seconds to wait before answering blob requests
    outage: float = 0.0  # seconds, from the first blob request, in which blob requests get no answer
    requests: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (path, Range, If-Range)
    agents: list[str | None] = field(default_factory=list)  # the User-Agent of every request, in order


class FaultyServer:
    def __init__(self, root: Path, faults: Faults | None = None) -> None:
        self.root = root
        self.faults = faults or Faults()
        self._etag_counter = 0
        self._outage_began: float | None = None
        self.httpd = start_http_server(self._handle)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _etag(self, path: Path) -> str:
        stat = path.stat()
        if self.faults.rotate_etag:
            self._etag_counter += 1
            return f'"{stat.st_size}-{stat.st_mtime_ns}-{self._etag_counter}"'
        return f'"{stat.st_size}-{stat.st_mtime_ns}"'

    def _down(self) -> bool:
        if not self.faults.outage:
            return False
        if self._outage_began is None:
            self._outage_began = time.monotonic()
        return time.monotonic() - self._outage_began < self.faults.outage

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        faults = self.faults
        relative = handler.path.split("?", 1)[0].lstrip("/")
        range_header, if_range = handler.headers.get("Range"), handler.headers.get("If-Range")
        self.faults.agents.append(handler.headers.get("User-Agent"))
        faults.requests.append((relative, range_header, if_range))
        path = (self.root / relative).resolve()
        if not path.is_file() or self.root.resolve() not in path.parents:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if relative.startswith("blobs/") and self._down():
            handler.close_connection = True  # the connection closes without an answer: the link is down
            return
        data = path.read_bytes()
        etag = self._etag(path)
        start, status = 0, 200
        if range_header and not faults.ignore_range and (if_range is None or if_range == etag):
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            status = 206
        body = data[start:]
        if relative.startswith("blobs/") and faults.delay:
            time.sleep(faults.delay)
        handler.send_response(status)
        handler.send_header("ETag", etag)
        handler.send_header("Content-Length", str(len(body)))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if relative.startswith("blobs/") and faults.cut_after is not None and faults.cuts > 0:
            faults.cuts -= 1
            handler.wfile.write(body[: faults.cut_after])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)
