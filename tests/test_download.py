"""Resumable downloads (repo.download) against the in-memory repository: every way a download goes wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lorien.repo.download import Downloader, DownloadPolicy, DownloadRequest, Progress
from lorien.repo.errors import IntegrityError, NetworkError
from lorien.repo.transport import RetryPolicy, Waiting
from tests.support.simulator import Fault, RepositorySimulator

PATH = "blobs/model.bin"
DATA = bytes(range(256)) * 400  # 102,400 bytes


@pytest.fixture
def sim() -> RepositorySimulator:
    simulator = RepositorySimulator()
    simulator.add(PATH, DATA)
    return simulator


def _request(tmp_path: Path, sim: RepositorySimulator, md5: str | None = None) -> DownloadRequest:
    return DownloadRequest(
        sim.url(PATH),
        tmp_path / "model.part",
        len(DATA),
        md5 or hashlib.md5(DATA).hexdigest(),
        hashlib.sha256(DATA).hexdigest(),
    )


def _downloader(sim: RepositorySimulator, attempts: int = 4, **kwargs) -> Downloader:
    return Downloader(policy=DownloadPolicy(retry=RetryPolicy(attempts, 0, 0)), transport=sim, **kwargs)


def test_interrupted_download_resumes_with_range_and_if_range(tmp_path: Path, sim: RepositorySimulator) -> None:
    etag = sim.etags[PATH]
    sim.inject(PATH, Fault(cut=40000))
    digests = _downloader(sim).fetch(_request(tmp_path, sim))
    assert (tmp_path / "model.part").read_bytes() == DATA and digests.md5 == hashlib.md5(DATA).hexdigest()
    assert sim.requests[1].headers == {"Accept-Encoding": "identity", "Range": "bytes=40000-", "If-Range": etag}
    assert not (tmp_path / "model.part.json").exists()  # resume metadata removed once verified


def test_a_body_ending_early_without_a_length_is_resumed(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(short=1000))
    _downloader(sim).fetch(_request(tmp_path, sim))
    assert (tmp_path / "model.part").read_bytes() == DATA and sim.requests[1].headers["Range"] == "bytes=1000-"


def test_a_200_answer_to_a_range_request_restarts_from_zero(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(cut=30000), Fault(ignore_range=True))
    _downloader(sim).fetch(_request(tmp_path, sim))
    assert (tmp_path / "model.part").read_bytes() == DATA  # not 30,000 old bytes + the whole file appended
    assert sim.requests[1].headers["Range"] == "bytes=30000-" and len(sim.requests) == 2


def test_a_changed_etag_restarts_from_zero(tmp_path: Path, sim: RepositorySimulator) -> None:
    old = sim.etags[PATH]
    sim.inject(PATH, Fault(cut=30000), Fault(etag='"v2"'))
    _downloader(sim).fetch(_request(tmp_path, sim))
    assert (tmp_path / "model.part").read_bytes() == DATA
    assert sim.requests[1].headers["If-Range"] == old  # the server saw the old validator, sent the whole new file
    assert len(sim.requests) == 2


def test_416_on_an_already_complete_file_is_success(tmp_path: Path, sim: RepositorySimulator) -> None:
    request = _request(tmp_path, sim)
    request.destination.write_bytes(DATA)
    meta = {"url": request.url, "size": len(DATA), "validator": sim.etags[PATH]}
    (tmp_path / "model.part.json").write_text(json.dumps(meta))
    assert _downloader(sim).fetch(request).size == len(DATA)
    assert [seen.headers["Range"] for seen in sim.requests] == [f"bytes={len(DATA)}-"]


def test_a_file_shorter_than_declared_fails_after_two_downloads_not_the_retry_budget(
    tmp_path: Path, sim: RepositorySimulator
) -> None:
    """416 `bytes */1000` to a resume, then a 200 of 1000 bytes: the server says the file is shorter than the
    manifest declares — a wrong file, not a broken connection, so it is not retried for an hour."""
    request = _request(tmp_path, sim)
    sim.add(PATH, DATA[:1000])  # the server's file is shorter than the .part: it cannot be continued
    request.destination.write_bytes(DATA[:2000])
    meta = {"url": request.url, "size": len(DATA), "validator": sim.etags[PATH]}
    (tmp_path / "model.part.json").write_text(json.dumps(meta))
    expected = r"has 1000 bytes, fewer than the declared size 102400 after 2 downloads$"
    with pytest.raises(IntegrityError, match=expected):
        _downloader(sim).fetch(request)
    assert [seen.headers.get("Range") for seen in sim.requests] == ["bytes=2000-", None]
    assert not request.destination.exists() and not (tmp_path / "model.part.json").exists()


@pytest.mark.parametrize("resume_at", [0, 2000], ids=["200-content-length", "206-content-range-total"])
def test_a_short_file_is_refused_by_what_the_answer_states(
    tmp_path: Path, sim: RepositorySimulator, resume_at: int
) -> None:
    """A 200's Content-Length or a 206's Content-Range total below the declared size fails at once."""
    request = _request(tmp_path, sim)
    sim.add(PATH, DATA[:50000])
    if resume_at:
        request.destination.write_bytes(DATA[:resume_at])
        meta = {"url": request.url, "size": len(DATA), "validator": sim.etags[PATH]}
        (tmp_path / "model.part.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match=r"has 50000 bytes, fewer than the declared size 102400 after 2"):
        _downloader(sim).fetch(request)
    assert [seen.headers.get("Range") for seen in sim.requests] == [
        f"bytes={resume_at}-" if resume_at else None,
        None,
    ]
    assert not request.destination.exists()


def test_416_with_the_declared_total_on_a_partial_file_is_retried(
    tmp_path: Path, sim: RepositorySimulator
) -> None:
    """A 416 whose total is the declared size is the server's mistake, not a wrong file: retried from zero."""
    request = _request(tmp_path, sim)
    request.destination.write_bytes(DATA[:2000])
    meta = {"url": request.url, "size": len(DATA), "validator": sim.etags[PATH]}
    (tmp_path / "model.part.json").write_text(json.dumps(meta))
    sim.inject(PATH, Fault(status=416))
    assert _downloader(sim).fetch(request).size == len(DATA)
    assert [seen.headers.get("Range") for seen in sim.requests] == ["bytes=2000-", None]


def test_a_range_answered_from_the_wrong_byte_is_retried(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(cut=1000), Fault(range_from=0))
    _downloader(sim).fetch(_request(tmp_path, sim))
    assert [seen.headers.get("Range") for seen in sim.requests] == [None, "bytes=1000-", "bytes=1000-"]
    assert (tmp_path / "model.part").read_bytes() == DATA


def test_a_partial_file_without_its_record_starts_again_from_zero(
    tmp_path: Path, sim: RepositorySimulator
) -> None:
    request = _request(tmp_path, sim)
    request.destination.write_bytes(b"stale bytes of something else")
    _downloader(sim).fetch(request)
    assert request.destination.read_bytes() == DATA and "Range" not in sim.requests[0].headers


def test_a_server_sending_more_than_declared_is_cut_off_and_fails(
    tmp_path: Path, sim: RepositorySimulator
) -> None:
    sim.inject(PATH, Fault(extra=b"extra bytes"), forever=True)
    request = _request(tmp_path, sim)
    with pytest.raises(IntegrityError) as caught:
        _downloader(sim).fetch(request)
    assert str(caught.value) == (
        f"{request.url}: server sent more than the {len(DATA)} bytes the manifest declares after 2 downloads"
    )
    assert not (tmp_path / "model.part").exists() and len(sim.requests) == 2  # not retried as a network fault


def test_md5_mismatch_deletes_and_retries_then_fails(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(corrupt=True), forever=True)
    with pytest.raises(IntegrityError, match=r"MD5 .* differs .* after 2 downloads"):
        _downloader(sim).fetch(_request(tmp_path, sim))
    assert len(sim.requests) == 2 and not (tmp_path / "model.part").exists()


def test_md5_mismatch_once_then_good_download_succeeds(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(corrupt=True))
    assert _downloader(sim).fetch(_request(tmp_path, sim)).sha256 == hashlib.sha256(DATA).hexdigest()


def test_timeouts_and_resets_are_retried_with_backoff(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(
        PATH,
        Fault(drop="ConnectTimeout: connect timed out"),
        Fault(drop="ConnectionError: reset"),
        Fault(cut=1000),
    )
    policy = DownloadPolicy(retry=RetryPolicy(attempts=5, backoff=0.5, max_backoff=0.8))
    Downloader(policy=policy, transport=sim).fetch(_request(tmp_path, sim))
    assert sim.pauses == [0.5, 0.8, 0.8] and len(sim.requests) == 4


def test_gives_up_after_bounded_attempts_with_a_clear_error(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(drop="ConnectionError: connection reset by peer"), forever=True)
    with pytest.raises(NetworkError) as caught:
        _downloader(sim).fetch(_request(tmp_path, sim))
    assert str(caught.value) == (
        f"{sim.url(PATH)}: download failed after 4 attempts: ConnectionError: connection reset by peer"
    )


def test_http_errors_are_not_retried_forever(tmp_path: Path, sim: RepositorySimulator) -> None:
    del sim.files[PATH]
    with pytest.raises(NetworkError, match=r"HTTP 404 Not Found$"):
        _downloader(sim).fetch(_request(tmp_path, sim))
    assert len(sim.requests) == 1


def test_default_policy_retries_for_an_hour_of_pauses_doubling_to_a_minute(
    tmp_path: Path, sim: RepositorySimulator
) -> None:
    sim.inject(PATH, Fault(status=503), forever=True)
    with pytest.raises(NetworkError) as caught:
        Downloader(transport=sim).fetch(_request(tmp_path, sim))
    assert sim.pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0] + [60.0] * 58  # one more minute would pass 3600 s
    assert str(caught.value) == (
        f"{sim.url(PATH)}: download failed after 66 attempts and 3543.5 s of waiting (retry budget 3600 s): "
        "HTTP 503 Service Unavailable"
    )


def test_an_outage_longer_than_six_attempts_is_waited_out(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(cut=40000))

    def outage_begins(progress: Progress) -> None:  # the link goes down for 16 s after the first bytes
        if not sim.down_until:
            sim.down_until = sim.now + 16

    Downloader(transport=sim, on_progress=outage_begins).fetch(_request(tmp_path, sim))
    assert sim.pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] and sim.now == 31.5
    assert [seen.headers.get("Range") for seen in sim.requests] == [None] + ["bytes=40000-"] * 6
    assert (tmp_path / "model.part").read_bytes() == DATA


def test_a_spent_time_budget_fails_with_the_last_reason(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.down_until = 1000.0
    policy = DownloadPolicy(retry=RetryPolicy(None, backoff=1.0, max_backoff=4.0, budget=10.0))
    with pytest.raises(NetworkError) as caught:
        Downloader(policy=policy, transport=sim).fetch(_request(tmp_path, sim))
    assert sim.pauses == [1.0, 2.0, 4.0]  # the next 4 s would pass the 10 s budget
    assert str(caught.value) == (
        f"{sim.url(PATH)}: download failed after 4 attempts and 7 s of waiting (retry budget 10 s): "
        "ConnectionError: connection refused"
    )


def test_a_budget_needs_a_pause_that_spends_it() -> None:
    with pytest.raises(ValueError, match="needs a positive backoff"):
        RetryPolicy(None, backoff=0.0, max_backoff=0.0, budget=10.0)


def test_progress_tells_of_each_wait_before_it(tmp_path: Path, sim: RepositorySimulator) -> None:
    sim.inject(PATH, Fault(cut=1000), Fault(status=503))
    seen: list[Progress] = []
    Downloader(transport=sim, on_progress=seen.append).fetch(_request(tmp_path, sim))
    waits = [(p.done, p.waiting) for p in seen if p.waiting is not None]
    assert waits == [
        (1000, Waiting(2, 0.5, "connection broken after 1000 bytes")),
        (1000, Waiting(3, 1.0, "HTTP 503 Service Unavailable")),
    ]


# ---------------------------------------------------------------- validators


@pytest.mark.parametrize("etag", ['"v1\x01"', '"' + "a" * 10_000 + '"', 'W/"weak"', "unquoted", '"caf\u00e9"'])
def test_an_unusable_etag_is_never_kept_so_the_download_restarts_from_zero(
    tmp_path: Path, sim: RepositorySimulator, etag: str
) -> None:
    sim.inject(PATH, Fault(etag=etag, cut=30000))
    _downloader(sim).fetch(_request(tmp_path, sim))
    assert [seen.headers.get("Range") for seen in sim.requests] == [None, None]  # no resume with that validator
    assert (tmp_path / "model.part").read_bytes() == DATA


@pytest.mark.parametrize("validator", ['"v1\r\nX-Evil: 1"', '"' + "a" * 300 + '"', 123, ["x"]])
def test_a_poisoned_record_from_an_older_version_is_ignored(
    tmp_path: Path, sim: RepositorySimulator, validator: object
) -> None:
    request = _request(tmp_path, sim)
    request.destination.write_bytes(DATA[:2000])
    meta = {"url": request.url, "size": len(DATA), "validator": validator}
    (tmp_path / "model.part.json").write_text(json.dumps(meta))
    _downloader(sim).fetch(request)
    assert len(sim.requests) == 1 and "If-Range" not in sim.requests[0].headers
    assert request.destination.read_bytes() == DATA


def _resumable_part(tmp_path: Path, sim: RepositorySimulator) -> DownloadRequest:
    request = _request(tmp_path, sim)
    request.destination.write_bytes(DATA[:2000])
    meta = {"url": request.url, "size": len(DATA), "validator": sim.etags[PATH]}
    (tmp_path / "model.part.json").write_text(json.dumps(meta))
    return request


def test_a_4xx_to_a_resuming_request_restarts_from_zero_once(tmp_path: Path, sim: RepositorySimulator) -> None:
    request = _resumable_part(tmp_path, sim)
    sim.inject(PATH, Fault(status=400))
    _downloader(sim).fetch(request)
    assert [seen.headers.get("Range") for seen in sim.requests] == ["bytes=2000-", None]
    assert request.destination.read_bytes() == DATA


def test_a_second_4xx_after_the_restart_is_an_error(tmp_path: Path, sim: RepositorySimulator) -> None:
    request = _resumable_part(tmp_path, sim)
    sim.inject(PATH, Fault(status=400), Fault(status=403))
    with pytest.raises(NetworkError) as caught:
        _downloader(sim).fetch(request)
    assert str(caught.value) == f"{request.url}: HTTP 403 Forbidden" and len(sim.requests) == 2
    assert not request.destination.exists()


def test_progress_reports_bytes_percent_and_rate(tmp_path: Path, sim: RepositorySimulator) -> None:
    seen = []
    sim.inject(PATH, Fault(rate=51200))  # 2 s of simulated time
    Downloader(on_progress=seen.append, transport=sim).fetch(_request(tmp_path, sim))
    assert seen[-1].done == len(DATA) and seen[-1].percent == 100.0 and seen[-1].rate == pytest.approx(51200)
    assert seen[0].done == 5120 and seen[0].eta == pytest.approx(1.9)
