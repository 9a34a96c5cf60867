"""A fault-injecting TCP proxy (``bench/fleet.py`` and the tests): forwards to an upstream server, cuts chosen
responses.

For every connection, ``decide(first request line)`` returns None (forward untouched) or the number of response
bytes after which the connection is closed. The default decider cuts the first ``cuts`` connections whose
request line contains ``cut_path`` after ``cut_after`` bytes. ``delivered`` counts response bytes passed on
for ``cut_path`` requests (what devices really received).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class CuttingProxy:
    def __init__(
        self,
        upstream_port: int,
        cut_path: str = "/blobs/",
        cut_after: int = 500_000,
        cuts: int = 1,
        decide: Callable[[bytes], int | None] | None = None,
    ) -> None:
        self.upstream_port, self.cut_path, self.cut_after, self.cuts = upstream_port, cut_path, cut_after, cuts
        self.decide = decide or self._first_cuts
        self.cut_connections = self.connections = self.delivered = 0
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _first_cuts(self, request_line: bytes) -> int | None:
        if self.cut_path.encode() in request_line and self.cuts > 0:
            self.cuts -= 1
            return self.cut_after
        return None

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        try:
            request = client.recv(65536)
            request_line = request.split(b"\r\n", 1)[0]
            counted = self.cut_path.encode() in request_line
            with self._lock:
                self.connections += 1
                cut_at = self.decide(request_line)
            upstream.sendall(request)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            sent = 0
            while data := upstream.recv(65536):
                if cut_at is not None and sent + len(data) >= cut_at:
                    client.sendall(data[: cut_at - sent])
                    with self._lock:
                        self.cut_connections += 1
                        self.delivered += (cut_at - sent) if counted else 0
                    break
                client.sendall(data)
                sent += len(data)
                if counted:
                    with self._lock:
                        self.delivered += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                upstream.sendall(data)
