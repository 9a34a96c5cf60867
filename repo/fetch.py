"""Reading repository files from a directory or over HTTP, behind one small fetcher interface.

``open_repository(location)`` returns a :class:`Fetcher` for a local path or an ``http(s)://`` base URL. A
fetcher answers two questions: the bytes of a small document (bounded by ``limit``, by default
``limits.max_document_bytes``) and a stream of a blob's bytes (bounded by the size the manifest declares, so a
server can never feed us endless data). Higher layers (inspect, trust, the device) only see this interface.

:class:`HttpFetcher` turns a repository path into a URL under its base and hands the request to its
:class:`~repo.transport.Transport` (by default :class:`~repo.transport.HttpTransport`; tests inject an in-memory
repository): ``Get(url, limit)`` for a document, the same with ``blob=True`` for a blob. The transport
bounds the body, guards its rate, cuts off a stalled server or a head slower than ``limits.head_timeout`` and
names the URL in every error; the fetcher retries getting an answer under ``REQUEST_RETRY`` (connection errors,
timeouts, 500/502/503/504) and reads the body once: a document that stalls or trickles fails at once with a
:class:`NetworkError`. A document as a whole — every attempt, pauses and body included — must be in within
``limits.document_timeout`` (the ``deadline`` of its ``Get``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from lorien.repo.errors import NetworkError, NotFoundError
from lorien.repo.hashing import iter_file
from lorien.repo.layout import checked_relative_path
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from lorien.repo.transport import REQUEST_RETRY, Body, Get, HttpTransport, RetryPolicy, Transport


class Fetcher(Protocol):
    location: str

    def read_document(self, path: str, limit: int | None = None) -> bytes:
        """At most ``limit`` bytes (default: the fetcher's ``limits.max_document_bytes``)."""

    def iter_blob(self, path: str, max_bytes: int) -> Iterator[bytes]:
        """The blob's bytes as they arrive; NetworkError past ``max_bytes``."""


class DirectoryFetcher:
    def __init__(self, root: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        if not root.is_dir():
            raise NetworkError(f"{root}: repository directory does not exist")
        self.root = root
        self.location = str(root)
        self.limits = limits

    def _path(self, path: str) -> Path:
        return self.root / checked_relative_path(path, "repository path")

    def read_document(self, path: str, limit: int | None = None) -> bytes:
        limit = self.limits.max_document_bytes if limit is None else limit
        file = self._path(path)
        try:
            with open(file, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise NotFoundError(f"{file}: no such file") from None
        except OSError as error:
            raise NetworkError(f"{file}: cannot read: {error.strerror}") from None
        if len(data) > limit:
            raise NetworkError(f"{file}: larger than the {limit}-byte limit")
        return data

    def iter_blob(self, path: str, max_bytes: int) -> Iterator[bytes]:
        file = self._path(path)
        try:
            produced = 0
            for chunk in iter_file(file):
                produced += len(chunk)
                if produced > max_bytes:
                    raise NetworkError(f"{file}: larger than the {max_bytes} bytes the manifest declares")
                yield chunk
        except OSError as error:
            raise NetworkError(f"{file}: cannot read: {error.strerror}") from None


class HttpFetcher:
    """Documents and blobs under ``base_url``, through ``transport`` (default: HTTP with ``limits``)."""

    def __init__(
        self,
        base_url: str,
        limits: Limits = DEFAULT_LIMITS,
        *,
        transport: Transport | None = None,
        retry: RetryPolicy = REQUEST_RETRY,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.location = self.base_url
        self.limits = limits
        self.transport = transport or HttpTransport(limits)
        self.retry = retry

    def url(self, path: str) -> str:
        return urljoin(self.base_url, checked_relative_path(path, "repository path"))

    def _open(self, request: Get) -> Body:
        return self.retry.run(lambda: self.transport.get(request), self.transport.sleep, "request")

    def read_document(self, path: str, limit: int | None = None) -> bytes:
        limit = self.limits.max_document_bytes if limit is None else limit
        # every attempt, the body included; the transport's limits, like every other timeout it enforces
        deadline = self.transport.clock() + self.transport.limits.document_timeout
        with self._open(Get(self.url(path), limit, deadline=deadline)) as body:
            return b"".join(body)

    def iter_blob(self, path: str, max_bytes: int) -> Iterator[bytes]:
        with self._open(Get(self.url(path), max_bytes, blob=True)) as body:
            yield from body


def open_repository(location: str | Path, limits: Limits = DEFAULT_LIMITS) -> Fetcher:
    text = str(location)
    scheme = urlsplit(text).scheme
    if scheme in ("http", "https"):
        return HttpFetcher(text, limits=limits)
    if scheme and len(scheme) > 1:
        raise NetworkError(f"{text}: unsupported URL scheme {scheme!r}; use a directory or an http(s):// URL")
    return DirectoryFetcher(Path(text), limits)
