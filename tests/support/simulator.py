"""An in-memory repository that is a transport (like python-tuf's ``RepositorySimulator``): fast, exact tests.

The simulator holds a repository's files as bytes (``from_directory`` loads one that ``publish`` wrote) and
answers :meth:`~lorien.repo.transport.Transport._open` the way nginx does: 200 with ``ETag`` and
``Content-Length``, 206 to ``Range: bytes=N-`` while ``If-Range`` still matches, 416 past the end, 404 for a
missing file. Everything above ``_open`` is the real code: the bound, the rate guard, the answer checks, the
retry policy, the fetcher, the downloader.

Faults are injected per path, one :class:`Fault` per request in order (then normal answers, or the last fault
for ever): an HTTP status, a connection that fails before answering or breaks after N bytes, a body that ends
early, a changed ETag, a range ignored or misplaced, extra bytes, a lying Content-Length, a compressed body, a slow or
stalled body, a slow head; ``down_until`` makes the whole repository unreachable until a simulated moment (an
outage). Time is simulated: the transport's clock advances as a slow body trickles, a stall or a retry
pause passes, so the rate guard and the backoff are exercised without sleeping. Every request is recorded
(``requests``: path and headers) and every pause (``pauses``).
"""

from __future__ import annotations

import hashlib
import http
from dataclasses import dataclass
from pathlib import Path

from lorien.repo.errors import TransientNetworkError
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.transport import Answer, Transport, stall_reason
from lorien.repo.watchdog import Deadline


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one answer; the defaults are a healthy server."""

    status: int | None = None  # answer this status with an empty body
    drop: str | None = None  # no answer: the connection fails with this reason ("ConnectionError: ...")
    cut: int | None = None  # send N body bytes, then the connection breaks
    short: int | None = None  # send N body bytes and end the body cleanly, announcing no length
    stall: int | None = None  # send N body bytes, then nothing until limits.stall_timeout passes
    rate: float | None = None  # bytes per simulated second
    etag: str | None = None  # the file changed: its ETag is this from now on (before this answer)
    ignore_range: bool = False  # answer 200 with the whole file to a range request
    range_from: int | None = None  # answer a range request with a 206 from this byte instead of the one asked
    extra: bytes = b""  # sent after the file, with no Content-Length (an endless body, in effect)
    length: int | None = None  # the Content-Length announced instead of the true one
    encoding: str | None = None  # a Content-Encoding header (the body is unchanged)
    corrupt: bool = False  # the first byte is flipped
    head_delay: float = 0.0  # simulated seconds the status line and headers take to arrive


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]


class RepositorySimulator(Transport):
    BASE = "http://repo.test/"

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, clock=lambda: self.now, sleep=self._pause)
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.now = 0.0
        self.down_until = 0.0  # an outage: every request fails to connect until this simulated time
        self.pauses: list[float] = []
        self.requests: list[Seen] = []
        self._faults: dict[str, list[Fault]] = {}
        self._forever: dict[str, Fault] = {}

    @classmethod
    def from_directory(cls, root: Path, limits: Limits = DEFAULT_LIMITS) -> RepositorySimulator:
        simulator = cls(limits)
        for file in sorted(root.rglob("*")):
            if file.is_file():
                simulator.add(file.relative_to(root).as_posix(), file.read_bytes())
        return simulator

    def add(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.etags[path] = f'"{hashlib.sha256(data).hexdigest()[:16]}"'

    def url(self, path: str) -> str:
        return self.BASE + path

    def blob_requests(self) -> list[str]:
        """The paths of the blobs requested so far, in order (repeats included)."""
        return [seen.path for seen in self.requests if seen.path.startswith("blobs/")]

    def inject(self, path: str, *faults: Fault, forever: bool = False) -> None:
        """The next requests for ``path`` meet ``faults`` in order; with ``forever`` the last one stays."""
        *once, last = faults
        self._faults[path] = list(once if forever else faults)
        if forever:
            self._forever[path] = last

    def _pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    def _next_fault(self, path: str) -> Fault:
        queue = self._faults.get(path)
        return queue.pop(0) if queue else self._forever.get(path, Fault())

    def _open(self, url: str, headers: dict[str, str], head: Deadline, whole: Deadline | None) -> Answer:
        path = url.removeprefix(self.BASE)
        self.requests.append(Seen(path, dict(headers)))
        if self.now < self.down_until:
            raise TransientNetworkError(url, "ConnectionError: connection refused")
        fault = self._next_fault(path)
        if fault.drop:
            raise TransientNetworkError(url, fault.drop)
        self.now += fault.head_delay  # the transport's deadline checks see the time pass
        if fault.etag:
            self.etags[path] = fault.etag
        if fault.status or path not in self.files:
            status = fault.status or 404
            return Answer(status, http.HTTPStatus(status).phrase, {"Content-Length": "0"}, _eof, _nothing)
        data = self.files[path]
        if fault.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        status, start, reply = 200, 0, {"ETag": self.etags[path]}
        wanted = headers.get("Range")
        if wanted and not fault.ignore_range and headers.get("If-Range") in (None, self.etags[path]):
            start = (
                int(wanted.removeprefix("bytes=").split("-")[0]) if fault.range_from is None else fault.range_from
            )
            if start >= len(data):
                return Answer(
                    416, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"}, _eof, _nothing
                )
            status, reply["Content-Range"] = 206, f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:] + fault.extra
        if fault.length is not None or not (fault.extra or fault.short is not None):
            reply["Content-Length"] = str(len(body) if fault.length is None else fault.length)
        if fault.encoding:
            reply["Content-Encoding"] = fault.encoding
        return Answer(
            status, http.HTTPStatus(status).phrase, reply, _Stream(self, url, body, fault).read, _nothing
        )


class _Stream:
    """A body as the fault lets it arrive, advancing the simulator's clock as it goes."""

    def __init__(self, simulator: RepositorySimulator, url: str, body: bytes, fault: Fault) -> None:
        self.simulator, self.url, self.fault, self.sent, self.began = simulator, url, fault, 0, simulator.now
        ends = [n for n in (fault.cut, fault.short, fault.stall) if n is not None]
        self.body = body[: min(ends)] if ends else body

    def read(self, size: int) -> bytes:
        fault = self.fault
        if fault.rate:
            size = min(size, max(1, int(fault.rate / 10)))  # a tenth of a second's worth per read
        chunk = self.body[self.sent : self.sent + size]
        self.sent += len(chunk)
        if fault.rate:
            self.simulator.now = self.began + self.sent / fault.rate
        if chunk or fault.short is not None:
            return chunk
        if fault.cut is not None:
            raise TransientNetworkError(self.url, f"connection broken after {self.sent} bytes")
        if fault.stall is not None:
            self.simulator.now += self.simulator.limits.stall_timeout
            raise TransientNetworkError(self.url, stall_reason(self.simulator.limits))
        return b""


def _eof(_size: int) -> bytes:
    return b""


def _nothing() -> None:
    return None
