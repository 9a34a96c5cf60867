"""The one way lorien reads bytes from an untrusted server: a bounded, guarded, streamed GET, and one retry policy.

Both HTTP clients go through it — the document fetcher (repo.fetch: index.json, manifests, ``.sig`` files, blobs
for ``inspect --verify``) and the resumable downloader (repo.download: the device's blobs). One request flows::

    Get(url, limit, start, validator, blob, deadline)
      → Transport._open(url, headers, head, whole)  the only method a transport implements (HttpTransport:
                                                 requests; tests: an in-memory repository). Sends ``Range:
                                                 bytes=start-`` with ``If-Range: validator`` when resuming, and
                                                 ``Accept-Encoding: identity`` for blobs, and the
                                                 transport's ``identity`` as User-Agent when it has one
      → Transport.get checks the answer          the head must be complete within ``limits.head_timeout`` (else
                                                 TransientNetworkError), and before the request's ``deadline``;
                                                 500/502/503/504 → TransientNetworkError (retried); another 4xx
                                                 to a resuming request → ResumeRefused (the downloader starts
                                                 from zero); other 4xx/5xx → NetworkError; a 416 to a range
                                                 request is returned (the caller may already hold the whole
                                                 file); a 206 must start at the byte asked for (else retried); a
                                                 blob sent compressed is refused; Content-Length and
                                                 Content-Range must be plain ASCII numbers (repo.headers)
      → iterating the Body                       a Content-Length past ``limit`` is refused before the first
                                                 body byte (OversizeError); the chunks stop at ``limit`` (the
                                                 bytes up to it are handed over, then OversizeError); every
                                                 chunk feeds the RateGuard (``min_rate`` over ``rate_window``)
                                                 and is checked against the ``deadline``
      → RetryPolicy.run(action, sleep, what)     repeats ``action`` on TransientNetworkError with capped
                                                 exponential backoff, for a number of attempts or a time budget;
                                                 then a NetworkError names the URL and the last reason

Every error names the URL. What an attempt covers is the caller's choice: the fetcher retries getting an
answer (a document that stalls mid-body fails at once, so slow retrieval stays bounded by one window), and a
document as a whole has ``limits.document_timeout``; the downloader retries whole attempts, each resuming its
``.part``. The two policies, REQUEST_RETRY (4 attempts) and DOWNLOAD_RETRY (a time budget of 3600 s of pauses,
which the device's ``[retry]`` table replaces), are defined here, next to the statuses that count as passing
trouble.

Timeouts: connecting takes at most ``limits.connect_timeout``; a server silent for ``limits.stall_timeout``
is cut off (the read timeout); a server that keeps sending, but too slowly, is caught by the RateGuard, which
reads the transport's clock — so a simulated transport can trickle without sleeping. A per-read timeout never
catches a head (or a document) that trickles a byte at a time: ``get`` checks the deadlines on the clock after
every step, and HttpTransport's watchdog (repo.watchdog) shuts the socket down when one passes, so a blocked
read returns at the deadline.
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

from lorien.repo.errors import NetworkError, NotFoundError, OversizeError, ResumeRefused, TransientNetworkError
from lorien.repo.headers import content_range_start, content_range_total, header_number, usable_validator
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.watchdog import Deadline, Watchdog, watched_session

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})  # the server's trouble, maybe passing: retry with backoff
READ_SIZE = 64 * 1024  # bytes asked for per read: a cut connection loses at most this much of what arrived


# ------------------------------------------------------------------------------------------------ retry policy


@dataclass(frozen=True)
class Waiting:
    """What a policy reports before a pause: attempt ``attempt`` comes in ``pause`` seconds; the last one failed
    for ``reason`` (the device shows ``connection lost, retry 3 in 16 s``)."""

    attempt: int
    pause: float
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    """Retries TransientNetworkError (nothing else); the pause before a retry starts at ``backoff`` seconds and
    doubles up to ``max_backoff``. Bounded by ``attempts`` (tries in all), or by ``budget``: the pauses add up to
    at most that many seconds — a time budget, so an outage shorter than it is waited out however many attempts
    that takes, and the next pause that would pass it ends the retries instead."""

    attempts: int | None
    backoff: float
    max_backoff: float
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.attempts is None and self.budget is None:
            raise ValueError("RetryPolicy needs attempts or a budget")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        if self.budget is not None and self.backoff <= 0:
            raise ValueError("RetryPolicy with a budget needs a positive backoff, or it would never spend it")

    def run(
        self,
        action: Callable[[], T],
        sleep: Callable[[float], None],
        what: str,
        on_wait: Callable[[Waiting], None] | None = None,
    ) -> T:
        """``action()``'s result, retrying it on TransientNetworkError; ``what`` names it in the final error,
        ``on_wait`` hears of every pause before it starts."""
        pause, waited, attempt = self.backoff, 0.0, 0
        while True:
            attempt += 1
            try:
                return action()
            except TransientNetworkError as error:
                last = error
                log.info("%s interrupted (attempt %d): %s", what, attempt, error)  # the final error says it once
            if self.attempts is not None and attempt >= self.attempts:
                raise NetworkError(f"{last.url}: {what} failed after {attempt} attempts: {last.reason}")
            if self.budget is not None and waited + pause > self.budget:
                raise NetworkError(
                    f"{last.url}: {what} failed after {attempt} attempts and {waited:g} s of waiting (retry budget "
                    f"{self.budget:g} s): {last.reason}"
                )
            if on_wait is not None:
                on_wait(Waiting(attempt + 1, pause, last.reason))
            sleep(pause)
            waited += pause
            pause = min(pause * 2, self.max_backoff)


REQUEST_RETRY = RetryPolicy(attempts=4, backoff=0.2, max_backoff=5.0)  # documents: getting an answer
# blobs: whole attempts, each resuming; a time budget (the device's [retry] table sets it)
DOWNLOAD_RETRY = RetryPolicy(attempts=None, backoff=0.5, max_backoff=60.0, budget=3600.0)


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
    declares, and it is asked for (and accepted only) uncompressed; a document may come compressed. With
    ``deadline`` (the transport's clock; the fetcher sets it ``limits.document_timeout`` after a document's first
    attempt) the whole answer must be in by then."""

    url: str
    limit: int
    start: int = 0
    validator: str | None = None
    blob: bool = False
    deadline: float | None = None

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
    """Implement :meth:`_open`; :meth:`get` adds the checks, the bound, the rate guard and the deadlines. ``clock``
    and ``sleep`` are the transport's time: the rate guard and the deadlines read one, retry pauses use the
    other. ``identity``, when set, gives the ``User-Agent`` of every request (the device names itself there)."""

    identity: Callable[[], str] | None = None

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits, self.clock, self.sleep = limits, clock, sleep

    @abstractmethod
    def _open(self, url: str, headers: dict[str, str], head: Deadline, whole: Deadline | None) -> Answer:
        """Send a GET with ``headers``; raise TransientNetworkError if no answer came for a reason that may
        pass (refused, reset, timed out), NetworkError for one that will not. A transport that can block may
        interrupt itself at ``head`` (the status line and headers) and ``whole`` (the body) and raise their
        ``error``; :meth:`get` checks both on the clock after every step anyway."""

    def get(self, request: Get) -> Body:
        """The checked answer to ``request``; iterate it for the body. Use it as a context manager.

        Raises:
            TransientNetworkError: no answer, or no complete head within ``limits.head_timeout``, or HTTP
                500/502/503/504, or a 206 not starting at ``start``.
            ResumeRefused: another 4xx answer to a request with ``start``.
            NetworkError: another HTTP error, a compressed answer to a ``blob`` request, a malformed
                Content-Length or Content-Range, or the request's ``deadline`` passed.
        """
        headers = {"Accept-Encoding": "identity"} if request.blob else {}
        if self.identity is not None:
            headers["User-Agent"] = self.identity()
        if request.start:
            headers["Range"] = f"bytes={request.start}-"
            if request.validator:
                headers["If-Range"] = request.validator
        head, whole = self._deadlines(request)
        if whole is not None and self.clock() >= whole.at:
            raise whole.error(request.url)
        answer = self._open(request.url, headers, head, whole)
        try:
            if self.clock() > head.at:
                raise head.error(request.url)
            return self._checked(request, answer, whole)
        except BaseException:
            answer.close()
            raise

    def _deadlines(self, request: Get) -> tuple[Deadline, Deadline | None]:
        limits, now = self.limits, self.clock()
        head = Deadline(
            now + limits.head_timeout, "a complete response head", "head_timeout", limits.head_timeout, True
        )
        if request.deadline is None:
            return head, None
        whole = Deadline(
            request.deadline, "the whole document", "document_timeout", limits.document_timeout, transient=False
        )
        return (whole if whole.at < head.at else head), whole

    def _checked(self, request: Get, answer: Answer, whole: Deadline | None) -> Body:
        url, status, headers = request.url, answer.status, CaseInsensitiveDict(answer.headers)
        if status == 416 and request.start:
            return Body(self, request, answer, headers, request.start, whole)  # the caller may hold it all
        if status in RETRYABLE_STATUS:
            raise TransientNetworkError(url, f"HTTP {status} {answer.reason}")
        if 400 <= status < 500 and request.start:
            raise ResumeRefused(
                f"{url}: HTTP {status} {answer.reason} to a request resuming at byte {request.start}"
            )
        if status in (403, 404, 410):
            raise NotFoundError(f"{url}: HTTP {status} {answer.reason}")
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
        if status == 206 and (start := content_range_start(url, headers.get("Content-Range"))) != request.start:
            raise TransientNetworkError(
                url, f"server answered the range from byte {start} instead of {request.start}"
            )
        return Body(self, request, answer, headers, request.start if status == 206 else 0, whole)


class Body:
    """An answer's body, bounded and guarded. ``status`` 200: the whole file; 206: from ``offset`` (the byte
    asked for); 416: nothing (the file holds no byte at ``offset``). ``validator`` is the strong ETag, else
    Last-Modified, if it is one a later request may send as If-Range (:func:`usable_validator`), else None.
    ``total`` is the whole file's size as the server states it (a 200's Content-Length, the total of a 206's or
    416's Content-Range), None when it does not say."""

    def __init__(
        self,
        transport: Transport,
        request: Get,
        answer: Answer,
        headers: Mapping[str, str],
        offset: int,
        whole: Deadline | None,
    ) -> None:
        self.status, self.offset = answer.status, offset
        self.length = header_number(request.url, headers, "Content-Length")
        self.total = _stated_total(answer.status, self.length, headers)
        etag, modified = headers.get("ETag"), headers.get("Last-Modified")
        self.validator = etag if usable_validator(etag) else modified if usable_validator(modified) else None
        self._transport, self._request, self._answer, self._headers = transport, request, answer, headers
        self._whole = whole

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._answer.close()

    def __iter__(self) -> Iterator[bytes]:
        """The body as it arrives; OversizeError past the bound (after the bytes up to it), a
        TransientNetworkError when the rate guard or the connection gives up, the whole deadline's error when it
        passes."""
        if self.status == 416:
            return
        request, url, clock = self._request, self._request.url, self._transport.clock
        allowed = request.limit - self.offset
        # a compressed body's Content-Length counts compressed bytes: only the bytes read are bounded then
        if self.length is not None and self.length > allowed and "Content-Encoding" not in self._headers:
            since = f" from byte {self.offset}" if self.offset else ""
            raise OversizeError(
                f"{url}: server announced {self.length} bytes{since}, more than the {request.limit} bytes "
                f"{request.bound}"
            )
        guard, produced = RateGuard(self._transport.limits, clock), 0
        try:
            while chunk := self._answer.read(min(READ_SIZE, allowed - produced + 1)):
                if produced + len(chunk) > allowed:
                    yield chunk[: allowed - produced]
                    raise OversizeError(f"{url}: server sent more than the {request.limit} bytes {request.bound}")
                produced += len(chunk)
                yield chunk
                guard.update(len(chunk))
                if self._whole is not None and clock() > self._whole.at:
                    raise self._whole.error(url)
        except TooSlow as error:
            raise TransientNetworkError(url, str(error)) from None
        finally:
            self.close()


# ------------------------------------------------------------------------------------------------ over HTTP


class HttpTransport(Transport):
    """requests without retries of its own: connect within ``connect_timeout``, a read timeout of
    ``stall_timeout``, bodies read as they arrive (``read1``: a fixed-size read would wait for a whole chunk,
    so a trickling server would never be looked at). A :class:`~repo.watchdog.Watchdog` shuts the socket down
    when the head (or a document's whole answer) misses its deadline, which no per-read timeout can catch."""

    @cached_property
    def session(self) -> requests.Session:
        return watched_session()

    def _open(self, url: str, headers: dict[str, str], head: Deadline, whole: Deadline | None) -> Answer:
        watchdog = Watchdog()
        watchdog.arm(head, head.at - self.clock())
        try:
            response = self._send(url, headers, watchdog)
            if watchdog.fired is not None:  # the shut socket ended the head early, as if it were complete
                response.close()
                raise watchdog.fired.error(url)
        except BaseException:
            watchdog.disarm()  # never leave a timer that could shut a pooled connection someone reuses
            raise
        if whole is None:
            watchdog.disarm()
        else:
            watchdog.arm(whole, whole.at - self.clock())

        def close() -> None:
            watchdog.disarm()
            response.close()

        read = _reader(url, response, self.limits, watchdog)
        return Answer(response.status_code, response.reason, response.headers, read, close)

    def _send(self, url: str, headers: dict[str, str], watchdog: Watchdog) -> requests.Response:
        timeout = (self.limits.connect_timeout, self.limits.stall_timeout)
        try:
            with watchdog.sending():
                return self.session.get(url, headers=headers, stream=True, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as error:
            if watchdog.fired is not None:
                raise watchdog.fired.error(url) from None
            raise TransientNetworkError(url, f"{type(error).__name__}: {error}") from None
        except requests.RequestException as error:
            raise NetworkError(f"{url}: request failed: {error}") from None


def _reader(url: str, response: requests.Response, limits: Limits, watchdog: Watchdog) -> Callable[[int], bytes]:
    raw = response.raw
    read1 = getattr(raw, "read1", None)

    def read(size: int) -> bytes:
        try:
            data = read1(size, decode_content=True) if read1 is not None else raw.read(size)
        except ReadTimeoutError:
            raise TransientNetworkError(url, stall_reason(limits)) from None
        except (ProtocolError, DecodeError, SSLError) as error:
            if watchdog.fired is not None:
                raise watchdog.fired.error(url) from None
            raise TransientNetworkError(url, f"connection broken: {error}") from None
        if watchdog.fired is not None:
            raise watchdog.fired.error(url)  # the shut socket read as an end of file
        if not data:
            watchdog.disarm()  # the connection may go back to the pool now
        return data

    return read


def _stated_total(status: int, length: int | None, headers: Mapping[str, str]) -> int | None:
    """The whole file's size as an answer states it, or None; a compressed 200's Content-Length counts other bytes."""
    if status == 200:
        return None if headers.get("Content-Encoding", "identity").strip().lower() != "identity" else length
    return content_range_total(headers.get("Content-Range")) if status in (206, 416) else None
