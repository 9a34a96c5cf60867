"""HTTP fetcher edge cases with `responses`: errors, limits, ranges, retries."""

from __future__ import annotations

import pytest
import requests
import responses

from lorien.repo.errors import NetworkError
from lorien.repo.fetch import DirectoryFetcher, HttpFetcher, open_repository

BASE = "http://repo.test/r/"


@responses.activate
def test_document_and_http_errors() -> None:
    responses.get(BASE + "index.json", body=b'{"schema": 1, "families": []}')
    responses.get(BASE + "missing.json", status=404)
    fetcher = HttpFetcher(BASE.rstrip("/"))
    assert fetcher.read_document("index.json").startswith(b"{")
    with pytest.raises(NetworkError, match="HTTP 404"):
        fetcher.read_document("missing.json")


@responses.activate
def test_document_over_limit_is_refused() -> None:
    responses.get(BASE + "index.json", body=b"x" * 2000)
    with pytest.raises(NetworkError, match="more than the 1000 bytes"):
        HttpFetcher(BASE).read_document("index.json", limit=1000)


@responses.activate
def test_endless_blob_is_cut_at_the_declared_size() -> None:
    responses.get(BASE + "blobs/a", body=b"y" * 5000)
    with pytest.raises(NetworkError, match="more than the 4096 bytes the manifest declares"):
        b"".join(HttpFetcher(BASE).iter_blob("blobs/a", 4096))


@responses.activate
def test_range_answered_with_200_is_an_error_not_silent_corruption() -> None:
    responses.get(BASE + "blobs/a", body=b"z" * 100, status=200)
    with pytest.raises(NetworkError, match="asked for a byte range, got HTTP 200"):
        HttpFetcher(BASE).read_range("blobs/a", 10, 19)


@responses.activate
def test_range_with_wrong_length_is_an_error() -> None:
    responses.get(BASE + "blobs/a", body=b"z" * 5, status=206)
    with pytest.raises(NetworkError, match="returned 5 bytes, expected 10"):
        HttpFetcher(BASE).read_range("blobs/a", 10, 19)


@responses.activate
def test_range_request_header() -> None:
    responses.get(BASE + "blobs/a", body=b"0123456789", status=206)
    assert HttpFetcher(BASE).read_range("blobs/a", 10, 19) == b"0123456789"
    assert responses.calls[0].request.headers["Range"] == "bytes=10-19"


@responses.activate
def test_connection_error_is_a_fetch_error() -> None:
    responses.get(BASE + "index.json", body=requests.ConnectionError("refused"))
    with pytest.raises(NetworkError, match="request failed"):
        HttpFetcher(BASE).read_document("index.json")


def test_paths_from_documents_cannot_escape(tmp_path) -> None:
    from lorien.repo.errors import ManifestError

    with pytest.raises(ManifestError):
        HttpFetcher(BASE).url("../../secret")
    with pytest.raises(ManifestError):
        DirectoryFetcher(tmp_path).read_document("/etc/passwd")


def test_open_repository_dispatch(tmp_path) -> None:
    assert isinstance(open_repository("https://x.test/repo"), HttpFetcher)
    assert isinstance(open_repository(tmp_path), DirectoryFetcher)
    with pytest.raises(NetworkError, match="unsupported URL scheme"):
        open_repository("ftp://x.test/repo")
