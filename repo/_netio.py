"""Reading HTTP bodies from untrusted servers: the one place both HTTP clients (repo.fetch, repo.download) get
their timeouts, their slow-retrieval defence and their body reader from.

* :func:`timeouts` — the requests ``timeout`` pair from :class:`~repo.limits.Limits`: ``connect_timeout`` to
  open the connection, ``stall_timeout`` without a single byte (a server that stops sending is cut off by it).
* :class:`RateGuard` — a server that keeps sending, but too slowly, is not caught by a read timeout. The guard
  measures the bytes received over consecutive windows of ``rate_window`` seconds and raises :class:`TooSlow`
  when one averages below ``min_rate`` bytes/s (a fast start earns no credit for a later trickle).
* :func:`body_chunks` — the body as it arrives (``read1``), checked by the guard after every chunk. Reading
  fixed-size chunks (``iter_content``) would block until a whole chunk has arrived, so a trickling server
  would never be looked at. urllib3 errors become the requests exceptions ``iter_content`` raises; a stall
  becomes ``requests.ReadTimeout`` saying so.
* :func:`refuse_content_encoding` — blob and range requests ask for ``Accept-Encoding: identity``
  (:data:`IDENTITY`); a body the server compressed anyway would not match byte offsets or declared sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import requests
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError

from lorien.repo.errors import NetworkError
from lorien.repo.limits import Limits

IDENTITY = {"Accept-Encoding": "identity"}


def timeouts(limits: Limits) -> tuple[float, float]:
    """(connect, read) timeout for requests: read is the longest wait for a single byte."""
    return (limits.connect_timeout, limits.stall_timeout)


class TooSlow(Exception):
    """A window of ``rate_window`` seconds averaged below ``min_rate`` bytes/s. The message names no URL."""

    def __init__(self, received: int, elapsed: float, min_rate: int) -> None:
        super().__init__(
            f"only {received} bytes in {elapsed:.1f} s, below the minimum of {min_rate} B/s (slow or stalled "
            "server); raise limits.min_rate/rate_window if the link is really this slow"
        )
        self.received, self.elapsed, self.min_rate = received, elapsed, min_rate


class RateGuard:
    """Call :meth:`update` with each chunk's size; it raises :class:`TooSlow` once a window is too slow."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self.min_rate, self.window = limits.min_rate, limits.rate_window
        self._start, self._received = clock(), 0

    def update(self, count: int) -> None:
        self._received += count
        now = self.clock()
        elapsed = now - self._start
        if elapsed < self.window:
            return
        if self._received < self.min_rate * elapsed:
            raise TooSlow(self._received, elapsed, self.min_rate)
        self._start, self._received = now, 0  # next window


def body_chunks(response: requests.Response, guard: RateGuard, size: int) -> Iterator[bytes]:
    """Up to ``size`` bytes at a time, as soon as they arrive; the guard sees every chunk after it is used."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    try:
        while True:
            chunk = read1(size, decode_content=True) if read1 is not None else raw.read(size)
            if not chunk:
                return
            yield chunk
            guard.update(len(chunk))
    except ReadTimeoutError:
        stall = guard.limits.stall_timeout
        raise requests.ReadTimeout(
            f"no data for {stall:g} s, the server stalled (limits.stall_timeout={stall:g})"
        ) from None
    except ProtocolError as error:
        raise requests.exceptions.ChunkedEncodingError(error) from None
    except DecodeError as error:
        raise requests.exceptions.ContentDecodingError(error) from None
    except SSLError as error:
        raise requests.exceptions.SSLError(error) from None


def announced_length(response: requests.Response) -> int | None:
    """The body length the server announced (``Content-Length``), or None when it gave none we can read."""
    announced = response.headers.get("Content-Length", "")
    return int(announced) if announced.isdigit() else None


def refuse_content_encoding(response: requests.Response, url: str) -> None:
    """NetworkError (and the connection closed) when the body of a blob or range request is compressed despite
    ``Accept-Encoding: identity``."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        response.close()
        raise NetworkError(
            f"{url}: server sent Content-Encoding: {encoding} although asked for identity; byte ranges and "
            "declared sizes would not match — serve blobs uncompressed"
        )
