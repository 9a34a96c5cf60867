"""HTTP fetcher edge cases against the in-memory repository: errors, limits, retries, slow servers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lorien.repo.errors import ManifestError, NetworkError
from lorien.repo.fetch import DirectoryFetcher, HttpFetcher, open_repository
from lorien.repo.inspect import inspect_repository
from lorien.repo.limits import DEFAULT_LIMITS
from tests.support.simulator import Fault, RepositorySimulator

INDEX = b'{"schema": 1, "families": []}'


@pytest.fixture
def sim() -> RepositorySimulator:
    simulator = RepositorySimulator()
    simulator.add("index.json", INDEX)
    simulator.add("blobs/a", b"y" * 5000)
    return simulator


def _fetcher(sim: RepositorySimulator) -> HttpFetcher:
    return HttpFetcher(sim.BASE.rstrip("/"), sim.limits, transport=sim)


def test_document_and_http_errors(sim: RepositorySimulator) -> None:
    fetcher = _fetcher(sim)
    assert fetcher.read_document("index.json") == INDEX
    assert "Accept-Encoding" not in sim.requests[0].headers  # documents may come compressed
    with pytest.raises(NetworkError, match=r"^http://repo.test/missing.json: HTTP 404 Not Found$"):
        fetcher.read_document("missing.json")
    assert len(sim.requests) == 2  # a 404 is not retried


def test_document_over_limit_is_refused_by_its_announced_length_or_at_the_limit(sim: RepositorySimulator) -> None:
    url = sim.url("blobs/a")
    with pytest.raises(
        NetworkError, match=rf"^{url}: server announced 5000 bytes, more than the 1000 bytes allowed"
    ):
        _fetcher(sim).read_document("blobs/a", limit=1000)
    sim.inject("blobs/a", Fault(short=5000))  # no Content-Length: read up to the bound, then refused
    with pytest.raises(
        NetworkError, match=rf"^{url}: server sent more than the 1000 bytes allowed for a document$"
    ):
        _fetcher(sim).read_document("blobs/a", limit=1000)


def test_endless_blob_is_cut_at_the_declared_size(sim: RepositorySimulator) -> None:
    sim.inject("blobs/a", Fault(extra=b"y" * 100_000))
    received = 0
    with pytest.raises(NetworkError, match=r"more than the 4096 bytes the manifest declares$"):
        for chunk in _fetcher(sim).iter_blob("blobs/a", 4096):
            received += len(chunk)
    assert received == 4096 and sim.requests[0].headers == {"Accept-Encoding": "identity"}


def test_connection_errors_are_retried_then_reported(sim: RepositorySimulator) -> None:
    sim.inject("index.json", Fault(drop="ConnectionError: refused"), forever=True)
    with pytest.raises(NetworkError) as caught:
        _fetcher(sim).read_document("index.json")
    assert str(caught.value) == (
        "http://repo.test/index.json: request failed after 4 attempts: ConnectionError: refused"
    )
    assert len(sim.requests) == 4 and sim.pauses == [0.2, 0.4, 0.8]


def test_5xx_is_retried_until_an_answer_comes(sim: RepositorySimulator) -> None:
    sim.inject("index.json", Fault(status=503), Fault(status=502))
    assert _fetcher(sim).read_document("index.json") == INDEX and sim.pauses == [0.2, 0.4]


def test_a_document_body_that_trickles_fails_after_one_window_without_retry() -> None:
    sim = RepositorySimulator(replace(DEFAULT_LIMITS, min_rate=1000, rate_window=1.0))
    sim.add("index.json", INDEX * 100)
    sim.inject("index.json", Fault(rate=100))
    with pytest.raises(NetworkError) as caught:
        _fetcher(sim).read_document("index.json")
    assert str(caught.value) == (
        "http://repo.test/index.json: only 100 bytes in 1.0 s, below the minimum of 1000 B/s (slow or stalled "
        "server); raise limits.min_rate/rate_window if the link is really this slow"
    )
    assert sim.now == 1.0 and len(sim.requests) == 1


def test_a_document_body_that_stalls_fails_without_retry(sim: RepositorySimulator) -> None:
    sim.inject("index.json", Fault(stall=10))
    with pytest.raises(NetworkError) as caught:
        _fetcher(sim).read_document("index.json")
    assert str(caught.value) == (
        "http://repo.test/index.json: no data for 30 s, the server stalled (limits.stall_timeout=30)"
    )
    assert len(sim.requests) == 1


def _slow_heads(document_timeout: float, *faults: Fault) -> RepositorySimulator:
    sim = RepositorySimulator(replace(DEFAULT_LIMITS, document_timeout=document_timeout))
    sim.add("index.json", INDEX)
    sim.inject("index.json", *faults)
    return sim


def _index_error(sim: RepositorySimulator) -> str:
    with pytest.raises(NetworkError) as caught:
        _fetcher(sim).read_document("index.json")
    return str(caught.value)


def test_a_slow_head_is_cut_at_head_timeout_and_retried() -> None:
    sim = _slow_heads(1000.0, Fault(head_delay=31), Fault(head_delay=29))  # the head_timeout alone
    assert _fetcher(sim).read_document("index.json") == INDEX  # 29 s is within the 30 s head_timeout
    assert sim.now == pytest.approx(60.2) and len(sim.requests) == 2
    sim.inject("index.json", Fault(head_delay=31), forever=True)
    assert _index_error(sim) == (
        "http://repo.test/index.json: request failed after 4 attempts: a complete response head did not arrive "
        "within 30 s (limits.head_timeout=30); the server is too slow"
    )


def test_a_document_as_a_whole_is_bounded_by_document_timeout_across_attempts() -> None:
    sim = _slow_heads(60.0, Fault(head_delay=31))
    sim.inject("index.json", Fault(head_delay=31), forever=True)
    # attempt 1: head late at 31 s (retried); attempt 2 must be complete by 60 s, is not, and is not retried
    assert _index_error(sim) == (
        "http://repo.test/index.json: the whole document did not arrive within 60 s (limits.document_timeout=60); "
        "the server is too slow"
    )
    assert len(sim.requests) == 2


def test_a_document_body_trickling_above_the_minimum_rate_is_cut_at_document_timeout() -> None:
    sim = RepositorySimulator(replace(DEFAULT_LIMITS, min_rate=100, rate_window=1.0, document_timeout=10.0))
    sim.add("index.json", INDEX * 100)  # 2,900 bytes at 200 B/s: 14.5 s
    sim.inject("index.json", Fault(rate=200))
    with pytest.raises(NetworkError, match=r"the whole document did not arrive within 10 s"):
        _fetcher(sim).read_document("index.json")
    assert 10.0 < sim.now <= 10.1 and len(sim.requests) == 1


def test_a_compressed_blob_is_refused_and_not_retried(sim: RepositorySimulator) -> None:
    sim.inject("blobs/a", Fault(encoding="gzip"))
    with pytest.raises(NetworkError, match="server sent Content-Encoding: gzip although asked for identity"):
        b"".join(_fetcher(sim).iter_blob("blobs/a", 5000))
    assert len(sim.requests) == 1


def test_inspect_verifies_a_published_repository_through_the_simulator(published: Path) -> None:
    sim = RepositorySimulator.from_directory(published)
    report = inspect_repository(HttpFetcher(sim.BASE, transport=sim), verify=True)
    assert not report.problems and report.blobs_checked > 0
    blob = next(path for path in sim.files if path.startswith("blobs/"))
    sim.inject(blob, Fault(corrupt=True))
    report = inspect_repository(HttpFetcher(sim.BASE, transport=sim), verify=True)
    assert len(report.problems) == 1 and blob in report.problems[0]


def test_paths_from_documents_cannot_escape(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        HttpFetcher(RepositorySimulator.BASE).url("../../secret")
    with pytest.raises(ManifestError):
        DirectoryFetcher(tmp_path).read_document("/etc/passwd")


def test_open_repository_dispatch(tmp_path: Path) -> None:
    assert isinstance(open_repository("https://x.test/repo"), HttpFetcher)
    assert isinstance(open_repository(tmp_path), DirectoryFetcher)
    with pytest.raises(NetworkError, match="unsupported URL scheme"):
        open_repository("ftp://x.test/repo")
