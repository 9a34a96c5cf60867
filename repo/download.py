"""Resumable, bounded, verified downloads into a ``.part`` file (the device's download client).

Data flow of :meth:`Downloader.fetch`, over the transport (repo.transport: ``Get`` → answer checks → bounded,
rate-guarded body)::

    .part + .part.json (validator, url, size) from an earlier attempt, for this URL and size, with a validator
    that is a short visible-ASCII strong ETag or HTTP date (``transport.usable_validator``; no other is kept)?
      → yes: Get(url, size, start=N, validator) — ``Range: bytes=N-`` and ``If-Range``; no: start at 0 (a
        .part without a usable record is discarded). Always ``Accept-Encoding: identity`` (a compressed body
        would break offsets and the size bound; one sent anyway is refused)
      → 206 from N: append · 200: the server ignored the range or the file changed → write from 0
        · 416 with a complete file: done (a shorter one is discarded, the next attempt starts at 0)
        · another 4xx to the resuming request (ResumeRefused): the .part is discarded and the file asked for
          once more from 0 · 500/502/503/504: retried like a connection error · other 4xx/5xx: error at once
      → an answer stating that the whole file is shorter than declared (a 200's Content-Length, the total of a
        206's or 416's Content-Range) is a wrong file, not a broken connection: SizeMismatchError, counted like
        a digest mismatch (downloaded once more, then IntegrityError), never retried for the retry budget
      → never more than the declared size is read or written: a Content-Length beyond it fails before the
        body, a body without one is cut at it (OversizeError: the file is downloaded once more like a digest
        mismatch, then IntegrityError)
      → a connection error, a stall (no byte for ``limits.stall_timeout``), a body averaging below
        ``limits.min_rate`` B/s over ``limits.rate_window``, a short body or a 5xx leaves the ``.part`` in
        place; ``policy.retry`` (DOWNLOAD_RETRY: a time budget of 3600 s of pauses, backoff 0.5 s doubling to
        60 s; the device's ``[retry]`` table) runs the next attempt from where it stopped, after telling
        ``on_progress`` that it waits (``Progress.waiting``); once the budget is spent :class:`NetworkError`
        carries the last reason
      → complete: size, MD5 (mandatory) and SHA-256 (when known) are checked; a mismatch deletes the file and
        downloads again, ``policy.verify_attempts`` times in all, then raises :class:`IntegrityError`

The caller owns the ``.part`` path; on success it holds exactly the verified bytes. Timeouts and rates come
from the transport's :class:`~repo.limits.Limits` (the default transport is built from ``policy.limits``).
``policy.max_rate`` caps the bytes per second: after each chunk the download waits (on the transport's
``sleep``) until the bytes received fit within the cap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.errors import (
    IntegrityError,
    OversizeError,
    ResumeRefused,
    SizeMismatchError,
    TransientNetworkError,
)
from lorien.repo.hashing import Digests, digest_file
from lorien.repo.headers import usable_validator
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.transport import (
    DOWNLOAD_RETRY,
    Body,
    Get,
    HttpTransport,
    RetryPolicy,
    Transport,
    Waiting,
)

log = logging.getLogger(__name__)


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
    waiting: Waiting | None = None  # set while the download waits to retry (done: what the .part holds)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


@dataclass(frozen=True)
class DownloadPolicy:
    retry: RetryPolicy = DOWNLOAD_RETRY  # attempts per download, each resuming the .part
    verify_attempts: int = 2  # whole downloads after a digest mismatch or an oversized body
    limits: Limits = DEFAULT_LIMITS  # for the default transport: connect/stall timeouts, the minimum rate
    max_rate: int = 0  # bytes per second a download may use (the device's max_download_rate); 0: no cap


class Downloader:
    def __init__(
        self,
        *,
        policy: DownloadPolicy | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.policy = policy or DownloadPolicy()
        self.on_progress = on_progress
        self.transport = transport or HttpTransport(self.policy.limits)

    def fetch(self, request: DownloadRequest) -> Digests:
        """Download (or finish downloading) ``request.url`` and return the verified digests.

        Raises:
            IntegrityError: every download had the wrong size or digest, or was longer than declared.
            NetworkError: the last attempt of a download failed, or the server answered an HTTP error.
        """
        last_error = ""
        for verify_round in range(self.policy.verify_attempts):
            try:
                self.policy.retry.run(
                    lambda: self._attempt(request), self.transport.sleep, "download", self._on_wait(request)
                )
            except (OversizeError, SizeMismatchError) as error:
                last_error = str(error)
                discard(request.destination)
                continue
            digests = digest_file(request.destination)
            problem = _mismatch(digests, request)
            if problem is None:
                _meta_path(request.destination).unlink(missing_ok=True)
                return digests
            last_error = f"{request.url}: {problem}"
            log.warning(
                "download of %s failed verification (%s); round %d", request.url, problem, verify_round + 1
            )
            discard(request.destination)
        raise IntegrityError(f"{last_error} after {self.policy.verify_attempts} downloads")

    def _on_wait(self, request: DownloadRequest) -> Callable[[Waiting], None] | None:
        """Tell ``on_progress`` that the download waits for its next attempt."""
        on_progress = self.on_progress
        if on_progress is None:
            return None
        part = request.destination

        def on_wait(waiting: Waiting) -> None:
            done = part.stat().st_size if part.exists() else 0
            on_progress(Progress(done, request.size, 0.0, None, waiting))

        return on_wait

    def _attempt(self, request: DownloadRequest) -> None:
        part = request.destination
        part.parent.mkdir(parents=True, exist_ok=True)
        have, validator = _resumable(request)
        with self._open(request, have, validator) as body:
            if body.total is not None and body.total < request.size:  # more is refused as OversizeError
                discard(part)
                raise SizeMismatchError(
                    f"{request.url}: the server's file has {body.total} bytes, fewer than the declared size "
                    f"{request.size}"
                )
            if body.status == 416:
                if have == request.size:
                    return  # complete already; verification decides
                discard(part)
                raise TransientNetworkError(request.url, f"server refused the range from byte {have} (HTTP 416)")
            if have and body.status == 200:
                log.info("server sent the whole file for %s (range ignored or file changed)", request.url)
            _write_meta(part, {"url": request.url, "size": request.size, "validator": body.validator})
            self._stream(body, request)

    def _open(self, request: DownloadRequest, have: int, validator: str | None) -> Body:
        """The answer to a request from byte ``have``; a 4xx to a resuming request discards the ``.part`` and
        asks once more from zero (a 4xx to that is an error)."""
        try:
            return self.transport.get(Get(request.url, request.size, start=have, validator=validator, blob=True))
        except ResumeRefused as error:
            log.warning("%s; discarding the %d bytes downloaded and starting again from zero", error, have)
            discard(request.destination)
            return self.transport.get(Get(request.url, request.size, blob=True))

    def _stream(self, body: Body, request: DownloadRequest) -> None:
        clock = self.transport.clock
        started, received = clock(), 0
        remaining = request.size - body.offset
        with open(request.destination, "ab" if body.offset else "wb") as sink:
            for chunk in body:
                sink.write(chunk)
                remaining -= len(chunk)
                received += len(chunk)
                if self.policy.max_rate:  # the cap: wait until the bytes so far fit within it
                    ahead = received / self.policy.max_rate - (clock() - started)
                    if ahead > 0:
                        self.transport.sleep(ahead)
                if self.on_progress is not None:
                    rate = received / max(clock() - started, 1e-6)
                    self.on_progress(
                        Progress(request.size - remaining, request.size, rate, remaining / rate if rate else None)
                    )
        if remaining:
            raise TransientNetworkError(request.url, f"connection ended {remaining} bytes early")


def _resumable(request: DownloadRequest) -> tuple[int, str | None]:
    """(bytes of the ``.part`` to resume after, their validator); a ``.part`` that cannot be continued is
    discarded and the download starts at 0."""
    part = request.destination
    have = part.stat().st_size if part.exists() else 0
    if not have:
        return 0, None
    meta = _read_meta(part)
    validator = meta.get("validator")
    # an older lorien kept any validator: one an honest server refuses would make every resume fail
    usable = meta.get("url") == request.url and meta.get("size") == request.size and usable_validator(validator)
    if not usable or have > request.size:
        why = "no usable validator for this URL" if not usable else f"{have} bytes, more than {request.size}"
        log.info("restarting download of %s from zero: the partial file has %s", request.url, why)
        discard(part)
        return 0, None
    return have, validator


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
