"""A fault-injecting TCP proxy of the tests' own: forwards to an upstream server and cuts chosen connections.

Connections whose request line contains ``cut_path`` have their response cut after ``cut_after`` bytes, for
the first ``cuts`` such connections; everything else is forwarded untouched.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    def __init__(self, upstream_port: int, cut_path: str = "/blobs/", cut_after: int = 500_000, cuts: int = 1):
        self.upstream_port, self.cut_path, self.cut_after, self.cuts = upstream_port, cut_path, cut_after, cuts
        self.cut_connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

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
        request = client.recv(65536)
        cut = False
        with self._lock:
            if self.cut_path.encode() in request.split(b"\r\n", 1)[0] and self.cuts > 0:
                self.cuts -= 1
                self.cut_connections += 1
                cut = True
        upstream.sendall(request)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if cut and sent + len(data) >= self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
