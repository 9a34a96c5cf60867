"""The one way lorien reads bytes from an untrusted server: a bounded, guarded, streamed GET, and one retry policy.

Both HTTP clients go through it — the document fetcher (repo.fetch: index.json, manifests, ``.sig`` files, blobs
for ``inspect --verify``) and the resumable downloader (repo.download: the device's blobs). One request flows::

    Get(url, limit, start, validator, blob)
      → Transport._open(url, headers)            the only method a transport implements (HttpTransport: requests;
                                                 tests: an in-memory repository). Sends ``Range: bytes=start-``
                                                 with ``If-Range: validator`` when resuming, and
                                                 ``Accept-Encoding: identity`` for blobs
      → Transport.get checks the answer          500/502/503/504 → TransientNetworkError (retried); other
                                                 4xx/5xx → NetworkError; a 416 to a range request is returned
                                                 (the caller may already hold the whole file); a 206 must start
                                                 at the byte asked for (else retried); a blob sent compressed is
                                                 refused
      → iterating the Body                       a Content-Length past ``limit`` is refused before the first
                                                 body byte (OversizeError); the chunks stop at ``limit`` (the
                                                 bytes up to it are handed over, then OversizeError); every
                                                 chunk feeds the RateGuard (``min_rate`` over ``rate_window``)
      → RetryPolicy.run(action, sleep, what)     repeats ``action`` on TransientNetworkError with capped
                                                 exponential backoff; after the last attempt a NetworkError
                                                 names the URL and the last reason

Every error names the URL. What an attempt covers is the caller's choice: the fetcher retries getting an
answer (a document that stalls mid-body fails at once, so slow retrieval stays bounded by one window); the
downloader retries whole attempts, each resuming its ``.part``. The two attempt counts, REQUEST_RETRY and
DOWNLOAD_RETRY, are defined here, next to the statuses that count as passing trouble.

Timeouts: connecting takes at most ``limits.connect_timeout``; a server silent for ``limits.stall_timeout``
is cut off (the read timeout); a server that keeps sending, but too slowly, is caught by the RateGuard, which
reads the transport's clock — so a simulated transport can trickle without sleeping.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError

from lorien.repo.errors import NetworkError, OversizeError, TransientNetworkError
from lorien.repo.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})  # the server's trouble, maybe passing: retry with backoff
READ_SIZE = 64 * 1024  # bytes asked for per read: a cut connection loses at most this much of what arrived


# ------------------------------------------------------------------------------------------------ retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the pause before a retry starts at ``backoff`` seconds and doubles up to
    ``max_backoff``. Only TransientNetworkError is retried."""

    attempts: int
    backoff: float
    max_backoff: float

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")

    def run(self, action: Callable[[], T], sleep: Callable[[float], None], what: str) -> T:
        """``action()``'s result, retrying it on TransientNetworkError; ``what`` names it in the final error."""
        pause, last = self.backoff, None
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except TransientNetworkError as error:
                last = error
                log.info("%s interrupted (attempt %d of %d): %s", what, attempt, self.attempts, error)
            if attempt < self.attempts:
                sleep(pause)
                pause = min(pause * 2, self.max_backoff)
        assert last is not None
        raise NetworkError(f"{last.url}: {what} failed after {self.attempts} attempts: {last.reason}")


REQUEST_RETRY = RetryPolicy(attempts=4, backoff=0.2, max_backoff=5.0)  # documents: getting an answer
DOWNLOAD_RETRY = RetryPolicy(attempts=6, backoff=0.5, max_backoff=8.0)  # blobs: whole attempts, each resuming


# ------------------------------------------------------------------------------------------------ rate guard


class TooSlow(Exception):
    """A window of ``rate_window`` seconds averaged below ``min_rate`` bytes/s. The message names no URL."""

    def __init__(self, received: int, elapsed: float, min_rate: int) -> None:
        super().__init__(
            f"only {received} bytes in {elapsed:.1f} s, below the minimum of {min_rate} B/s (slow or stalled "
            "server); raise limits.min_rate/rate_window if the link is really this slow"
        )


class RateGuard:
    """Call :meth:`update` with each chunk's size; it raises :class:`TooSlow` once a window is too slow.
    Each window is judged on its own, so a fast start earns no credit for a later trickle."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.min_rate, self.window = clock, limits.min_rate, limits.rate_window
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


def stall_reason(limits: Limits) -> str:
    """What a transport reports when no byte arrived for ``limits.stall_timeout``."""
    stall = limits.stall_timeout
    return f"no data for {stall:g} s, the server stalled (limits.stall_timeout={stall:g})"


# ------------------------------------------------------------------------------------------------ the primitive


@dataclass(frozen=True)
class Get:
    """One streamed GET. The body may not reach past byte ``limit`` of the file; with ``start`` the request
    resumes there, if the file still matches ``validator``. A ``blob``'s limit is the size its manifest
    declares, and it is asked for (and accepted only) uncompressed; a document may come compressed."""

    url: str
    limit: int
    start: int = 0
    validator: str | None = None
    blob: bool = False

    @property
    def bound(self) -> str:
        """Whose limit ``limit`` is, for the error that says it was passed."""
        return "the manifest declares" if self.blob else "allowed for a document"


@dataclass(frozen=True)
class Answer:
    """What :meth:`Transport._open` returns: the status line, the headers and the body, not yet read.

    ``read(n)`` returns up to ``n`` body bytes as soon as some arrived, ``b""`` at the end; it raises
    TransientNetworkError when the connection breaks or stalls. ``close()`` releases the connection."""

    status: int
    reason: str
    headers: Mapping[str, str]
    read: Callable[[int], bytes]
    close: Callable[[], None]


class Transport(ABC):
    """Implement :meth:`_open`; :meth:`get` adds the checks, the bound and the rate guard. ``clock`` and
    ``sleep`` are the transport's time: the rate guard reads one, retry pauses use the other."""

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits, self.clock, self.sleep = limits, clock, sleep

    @abstractmethod
    def _open(self, url: str, headers: dict[str, str]) -> Answer:
        """Send a GET with ``headers``; raise TransientNetworkError if no answer came for a reason that may
        pass (refused, reset, timed out), NetworkError for one that will not."""

    def get(self, request: Get) -> Body:
        """The checked answer to ``request``; iterate it for the body. Use it as a context manager.

        Raises:
            TransientNetworkError: no answer, or HTTP 500/502/503/504, or a 206 not starting at ``start``.
            NetworkError: another HTTP error, or a compressed answer to a ``blob`` request.
        """
        headers = {"Accept-Encoding": "identity"} if request.blob else {}
        if request.start:
            headers["Range"] = f"bytes={request.start}-"
            if request.validator:
                headers["If-Range"] = request.validator
        answer = self._open(request.url, headers)
        try:
            return self._checked(request, answer)
        except BaseException:
            answer.close()
            raise

    def _checked(self, request: Get, answer: Answer) -> Body:
        url, status, headers = request.url, answer.status, CaseInsensitiveDict(answer.headers)
        if status == 416 and request.start:
            return Body(self, request, answer, headers, offset=request.start)  # the caller may hold it all
        if status in RETRYABLE_STATUS:
            raise TransientNetworkError(url, f"HTTP {status} {answer.reason}")
        if status >= 400:
            raise NetworkError(f"{url}: HTTP {status} {answer.reason}")
        if status not in (200, 206):
            raise NetworkError(f"{url}: unexpected HTTP {status} {answer.reason}")
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if request.blob and encoding not in ("", "identity"):
            raise NetworkError(
                f"{url}: server sent Content-Encoding: {encoding} although asked for identity; byte ranges and "
                "declared sizes would not match — serve blobs uncompressed"
            )
        if status == 206 and (start := _content_range_start(headers.get("Content-Range", ""))) != request.start:
            raise TransientNetworkError(
                url, f"server answered the range from byte {start} instead of {request.start}"
            )
        return Body(self, request, answer, headers, offset=request.start if status == 206 else 0)


class Body:
    """An answer's body, bounded and guarded. ``status`` 200: the whole file; 206: from ``offset`` (the byte
    asked for); 416: nothing (the file holds no byte at ``offset``). ``validator`` is the strong ETag, else
    Last-Modified: what a later request may send as If-Range."""

    def __init__(
        self, transport: Transport, request: Get, answer: Answer, headers: Mapping[str, str], offset: int
    ) -> None:
        self.status, self.offset = answer.status, offset
        etag = headers.get("ETag")
        self.validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
        self._transport, self._request, self._answer, self._headers = transport, request, answer, headers

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._answer.close()

    def __iter__(self) -> Iterator[bytes]:
        """The body as it arrives; OversizeError past the bound (after the bytes up to it), a
        TransientNetworkError when the rate guard or the connection gives up."""
        if self.status == 416:
            return
        request, url = self._request, self._request.url
        allowed = request.limit - self.offset
        announced = self._headers.get("Content-Length", "")
        # a compressed body's Content-Length counts compressed bytes: only the bytes read are bounded then
        if announced.isdigit() and int(announced) > allowed and "Content-Encoding" not in self._headers:
            since = f" from byte {self.offset}" if self.offset else ""
            raise OversizeError(
                f"{url}: server announced {announced} bytes{since}, more than the {request.limit} bytes "
                f"{request.bound}"
            )
        guard, produced = RateGuard(self._transport.limits, self._transport.clock), 0
        try:
            while chunk := self._answer.read(min(READ_SIZE, allowed - produced + 1)):
                if produced + len(chunk) > allowed:
                    yield chunk[: allowed - produced]
                    raise OversizeError(f"{url}: server sent more than the {request.limit} bytes {request.bound}")
                produced += len(chunk)
                yield chunk
                guard.update(len(chunk))
        except TooSlow as error:
            raise TransientNetworkError(url, str(error)) from None
        finally:
            self.close()


def _content_range_start(value: str) -> int | None:
    unit, _, spec = value.partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


# ------------------------------------------------------------------------------------------------ over HTTP


class HttpTransport(Transport):
    """requests without retries of its own: connect within ``connect_timeout``, a read timeout of
    ``stall_timeout``, bodies read as they arrive (``read1``: a fixed-size read would wait for a whole chunk,
    so a trickling server would never be looked at)."""

    @cached_property
    def session(self) -> requests.Session:
        return requests.Session()

    def _open(self, url: str, headers: dict[str, str]) -> Answer:
        timeout = (self.limits.connect_timeout, self.limits.stall_timeout)
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise TransientNetworkError(url, f"{type(error).__name__}: {error}") from None
        except requests.RequestException as error:
            raise NetworkError(f"{url}: request failed: {error}") from None
        read = _reader(url, response, self.limits)
        return Answer(response.status_code, response.reason, response.headers, read, response.close)


def _reader(url: str, response: requests.Response, limits: Limits) -> Callable[[int], bytes]:
    raw = response.raw
    read1 = getattr(raw, "read1", None)

    def read(size: int) -> bytes:
        try:
            return read1(size, decode_content=True) if read1 is not None else raw.read(size)
        except ReadTimeoutError:
            raise TransientNetworkError(url, stall_reason(limits)) from None
        except (ProtocolError, DecodeError, SSLError) as error:
            raise TransientNetworkError(url, f"connection broken: {error}") from None

    return read
