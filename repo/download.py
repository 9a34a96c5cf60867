"""Resumable, bounded, verified HTTP downloads into a ``.part`` file (the device's download client).

Data flow of :meth:`Downloader.fetch`::

    .part + .part.json (validator, url, size) from an earlier attempt?
      → GET with ``Range: bytes=N-`` and ``If-Range: <ETag or Last-Modified>`` (no validator → start at 0),
        always ``Accept-Encoding: identity`` (a compressed body would break offsets and the size bound; one
        sent anyway is refused)
      → 206 from N: append · 200: the server ignored the range or the file changed → start again at 0
        · 416 with a complete file: done · 500/502/503/504: retried like a connection error · other 4xx/5xx:
        error at once
      → never more than the declared size is read or written: a Content-Length beyond it fails before the
        body, a body without one is cut at it (both :class:`IntegrityError`, like a digest mismatch)
      → a connection error, a stall (no byte for ``limits.stall_timeout``), a body averaging below
        ``limits.min_rate`` B/s over ``limits.rate_window`` (repo._netio.RateGuard), a short body or a 5xx
        leaves the ``.part`` in place and retries (bounded, exponential backoff) from where it stopped; after
        the last attempt :class:`NetworkError` carries the last reason
      → complete: size, MD5 (mandatory) and SHA-256 (when known) are checked; a mismatch deletes the file and
        downloads again, a bounded number of times, then raises :class:`IntegrityError`

The caller owns the ``.part`` path; on success it holds exactly the verified bytes. Timeouts and rates come
from ``DownloadPolicy.limits`` (:class:`~repo.limits.Limits`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from lorien.repo._netio import (
    IDENTITY,
    RateGuard,
    TooSlow,
    announced_length,
    body_chunks,
    refuse_content_encoding,
    timeouts,
)
from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.errors import IntegrityError, NetworkError
from lorien.repo.hashing import Digests, digest_file
from lorien.repo.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})  # the server's trouble, maybe passing: retry with backoff
NET_CHUNK = 64 * 1024  # bytes read per step: a cut connection loses at most this much of what arrived


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    destination: Path  # the .part file
    size: int
    md5: str
    sha256: str | None = None


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    rate: float  # bytes per second over this attempt
    eta: float | None  # seconds

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


@dataclass
class DownloadPolicy:
    attempts: int = 6  # connection-level tries per download (each resumes)
    verify_attempts: int = 2  # whole downloads after a digest mismatch
    backoff: float = 0.5  # first pause; doubles up to max_backoff
    max_backoff: float = 8.0
    limits: Limits = DEFAULT_LIMITS  # connect/stall timeouts and the minimum rate

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) for requests, from ``limits``."""
        return timeouts(self.limits)


class _Restart(Exception):
    """The partial file cannot be continued: start again from zero."""


class Downloader:
    def __init__(
        self,
        session: requests.Session | None = None,
        policy: DownloadPolicy | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session or requests.Session()
        self.policy = policy or DownloadPolicy()
        self.on_progress = on_progress
        self.sleep = sleep

    # ------------------------------------------------------------------ public

    def fetch(self, request: DownloadRequest) -> Digests:
        """Download (or finish downloading) ``request.url`` and return the verified digests."""
        last_error = ""
        for verify_round in range(self.policy.verify_attempts):
            try:
                self._download(request)
            except IntegrityError as error:  # the server sent more than declared
                last_error = str(error)
                discard(request.destination)
                continue
            digests = digest_file(request.destination)
            problem = _mismatch(digests, request)
            if problem is None:
                _meta_path(request.destination).unlink(missing_ok=True)
                return digests
            last_error = problem
            log.warning(
                "download of %s failed verification (%s); round %d", request.url, problem, verify_round + 1
            )
            discard(request.destination)
        raise IntegrityError(f"{request.url}: {last_error} after {self.policy.verify_attempts} downloads")

    # ------------------------------------------------------------------ one download, resumed across attempts

    def _download(self, request: DownloadRequest) -> None:
        pause = self.policy.backoff
        last_error = "no attempt made"
        for attempt in range(1, self.policy.attempts + 1):
            try:
                self._attempt(request)
                return
            except _Restart as reason:
                log.info("restarting download of %s from zero: %s", request.url, reason)
                discard(request.destination)
                last_error = str(reason)
                continue  # a restart is progress, not a failure: no pause
            except (requests.RequestException, _Transient, TooSlow) as error:
                # ours already read well; a requests error needs its kind (ConnectionError, ReadTimeout, ...)
                ours = isinstance(error, (_Transient, TooSlow))
                last_error = str(error) if ours else f"{type(error).__name__}: {error}"
                log.warning("download of %s interrupted (attempt %d): %s", request.url, attempt, last_error)
            if attempt < self.policy.attempts:
                self.sleep(pause)
                pause = min(pause * 2, self.policy.max_backoff)
        raise NetworkError(f"{request.url}: download failed after {self.policy.attempts} attempts: {last_error}")

    def _attempt(self, request: DownloadRequest) -> None:
        part = request.destination
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        meta = _read_meta(part)
        if have and (
            meta.get("url") != request.url or meta.get("size") != request.size or not meta.get("validator")
        ):
            raise _Restart("the partial file has no usable validator for this URL")
        if have > request.size:
            raise _Restart(f"partial file holds {have} bytes, more than the declared {request.size}")
        headers = dict(IDENTITY)
        if have:
            headers.update({"Range": f"bytes={have}-", "If-Range": meta["validator"]})
        response = self.session.get(request.url, headers=headers, stream=True, timeout=self.policy.timeout)
        with contextlib.closing(response):
            if response.status_code == 416 and have:
                if have == request.size:
                    return  # complete already; verification decides
                raise _Restart(f"server refused the range from byte {have} (HTTP 416)")
            if response.status_code in RETRYABLE_STATUS:
                raise _Transient(f"HTTP {response.status_code} {response.reason}")
            if response.status_code >= 400:
                raise NetworkError(f"{request.url}: HTTP {response.status_code} {response.reason}")
            refuse_content_encoding(response, request.url)
            validator = _validator(response)
            if response.status_code == 206:
                start = _content_range_start(response)
                if start != have:
                    raise _Restart(f"server answered the range from byte {start} instead of {have}")
                mode = "ab"
            elif response.status_code == 200:
                if have:
                    log.info("server sent the whole file for %s (range ignored or file changed)", request.url)
                have, mode = 0, "wb"
            else:
                raise NetworkError(f"{request.url}: unexpected HTTP {response.status_code}")
            announced = announced_length(response)
            if announced is not None and announced > request.size - have:
                raise IntegrityError(
                    f"server announced {announced} bytes from byte {have}, more than the declared "
                    f"{request.size} bytes; refusing the body"
                )
            _write_meta(part, {"url": request.url, "size": request.size, "validator": validator})
            self._stream(response, part, mode, have, request)

    def _stream(
        self, response: requests.Response, part: Path, mode: str, have: int, request: DownloadRequest
    ) -> None:
        started, received = time.monotonic(), 0
        remaining = request.size - have
        guard = RateGuard(self.policy.limits)
        with open(part, mode) as sink:
            for chunk in body_chunks(response, guard, NET_CHUNK):
                if len(chunk) > remaining:
                    sink.write(chunk[:remaining])
                    raise IntegrityError(
                        f"server sent more than the declared {request.size} bytes; refusing the rest"
                    )
                sink.write(chunk)
                remaining -= len(chunk)
                received += len(chunk)
                if self.on_progress is not None:
                    elapsed = max(time.monotonic() - started, 1e-6)
                    rate = received / elapsed
                    self.on_progress(
                        Progress(request.size - remaining, request.size, rate, remaining / rate if rate else None)
                    )
            sink.flush()
        if remaining:
            raise _Transient(f"connection ended {remaining} bytes early")


class _Transient(Exception):
    """A short body or a 5xx answer: worth another attempt after a pause, resuming the ``.part``."""


def discard(part: Path) -> None:
    """Delete a partial download and its resume metadata."""
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _mismatch(digests: Digests, request: DownloadRequest) -> str | None:
    if digests.size != request.size:
        return f"size {digests.size} differs from the declared {request.size}"
    if digests.md5 != request.md5.lower():
        return f"MD5 {digests.md5} differs from the expected {request.md5.lower()}"
    if request.sha256 and digests.sha256 != request.sha256.lower():
        return f"SHA-256 {digests.sha256} differs from the expected {request.sha256.lower()}"
    return None


def _validator(response: requests.Response) -> str | None:
    """A validator usable in If-Range: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _content_range_start(response: requests.Response) -> int:
    value = response.headers.get("Content-Range", "")
    try:
        unit, _, spec = value.partition(" ")
        start = int(spec.split("-", 1)[0])
    except ValueError:
        return -1
    return start if unit == "bytes" else -1


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_meta(part: Path) -> dict:
    try:
        data = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(part: Path, meta: dict) -> None:
    if meta.get("validator") is None:
        _meta_path(part).unlink(missing_ok=True)  # cannot resume safely without one
        return
    atomic_write_bytes(_meta_path(part), json.dumps(meta).encode())
