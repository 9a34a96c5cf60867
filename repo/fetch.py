"""Reading repository files from a directory or over HTTP, behind one small fetcher interface.

``open_repository(location)`` returns a :class:`Fetcher` for a local path or an ``http(s)://`` base URL. A
fetcher answers three questions: the bytes of a small document (bounded by ``limit``, by default
``limits.max_document_bytes``), a stream of a blob's bytes (bounded by the size the manifest declares, so a
server can never feed us endless data), and a byte range of a blob.
Higher layers (inspect, the device) only see this interface, so transports are swappable in tests.

:class:`HttpFetcher` treats the server as untrusted, within its :class:`~repo.limits.Limits`: connecting takes
at most ``connect_timeout`` and a server silent for ``stall_timeout`` is cut off; a body that averages below
``min_rate`` B/s over a ``rate_window`` fails with a :class:`NetworkError` naming the URL, bytes and seconds
(repo._netio); a Content-Length above the bound fails before any body byte is read, and a body without one is
cut one chunk past the bound. Blob and range requests send ``Accept-Encoding: identity`` and refuse a
compressed answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from lorien.repo._netio import (
    IDENTITY,
    RateGuard,
    TooSlow,
    announced_length,
    body_chunks,
    refuse_content_encoding,
    timeouts,
)
from lorien.repo.errors import NetworkError
from lorien.repo.hashing import CHUNK, iter_file
from lorien.repo.layout import checked_relative_path
from lorien.repo.limits import DEFAULT_LIMITS, Limits


class Fetcher(Protocol):
    location: str

    def read_document(self, path: str, limit: int | None = None) -> bytes:
        """At most ``limit`` bytes (default: the fetcher's ``limits.max_document_bytes``)."""

    def iter_blob(self, path: str, max_bytes: int) -> Iterator[bytes]: ...

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` inclusive."""


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

    def read_range(self, path: str, start: int, end: int) -> bytes:
        with open(self._path(path), "rb") as handle:
            handle.seek(start)
            return handle.read(end - start + 1)


def http_session(retries: int = 3) -> requests.Session:
    """A session that retries idempotent requests on connection errors and 5xx, with bounded backoff."""
    session = requests.Session()
    retry = Retry(
        total=retries,
        backoff_factor=0.2,
        backoff_max=5,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=("GET", "HEAD"),
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HttpFetcher:
    def __init__(
        self, base_url: str, session: requests.Session | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.location = self.base_url
        self.session = session or http_session()
        self.limits = limits

    def url(self, path: str) -> str:
        return urljoin(self.base_url, checked_relative_path(path, "repository path"))

    def _get(self, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        url = self.url(path)
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=timeouts(self.limits))
        except requests.RequestException as error:
            raise NetworkError(f"{url}: request failed: {error}") from None
        if response.status_code >= 400:
            response.close()
            raise NetworkError(f"{url}: HTTP {response.status_code} {response.reason}")
        return response

    def _bounded(self, response: requests.Response, limit: int, what: str) -> Iterator[bytes]:
        """The body, failing past ``limit`` bytes, on a stall or below the minimum rate; always closed."""
        url = response.url
        try:
            announced = announced_length(response)
            if announced is not None and announced > limit and "Content-Encoding" not in response.headers:
                raise NetworkError(
                    f"{url}: server announced {announced} bytes, more than the {limit} bytes {what}"
                )
            produced = 0
            for chunk in body_chunks(response, RateGuard(self.limits), min(CHUNK, limit + 1)):
                produced += len(chunk)
                if produced > limit:
                    raise NetworkError(f"{url}: server sent more than the {limit} bytes {what}")
                yield chunk
        except TooSlow as error:
            raise NetworkError(f"{url}: {error}") from None
        except requests.RequestException as error:
            raise NetworkError(f"{url}: download interrupted: {error}") from None
        finally:
            response.close()

    def read_document(self, path: str, limit: int | None = None) -> bytes:
        limit = self.limits.max_document_bytes if limit is None else limit
        return b"".join(self._bounded(self._get(path), limit, "allowed for a document"))

    def iter_blob(self, path: str, max_bytes: int) -> Iterator[bytes]:
        response = self._get(path, headers=IDENTITY)
        refuse_content_encoding(response, response.url)
        yield from self._bounded(response, max_bytes, "the manifest declares")

    def read_range(self, path: str, start: int, end: int) -> bytes:
        response = self._get(path, headers={"Range": f"bytes={start}-{end}", **IDENTITY})
        wanted = end - start + 1
        if response.status_code != 206:
            response.close()
            raise NetworkError(f"{response.url}: asked for a byte range, got HTTP {response.status_code}")
        refuse_content_encoding(response, response.url)
        data = b"".join(self._bounded(response, wanted, "requested"))
        if len(data) != wanted:
            raise NetworkError(
                f"{response.url}: range {start}-{end} returned {len(data)} bytes, expected {wanted}"
            )
        return data


def open_repository(location: str | Path, limits: Limits = DEFAULT_LIMITS) -> Fetcher:
    text = str(location)
    scheme = urlsplit(text).scheme
    if scheme in ("http", "https"):
        return HttpFetcher(text, limits=limits)
    if scheme and len(scheme) > 1:
        raise NetworkError(f"{text}: unsupported URL scheme {scheme!r}; use a directory or an http(s):// URL")
    return DirectoryFetcher(Path(text), limits)
