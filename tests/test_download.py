"""Resumable downloads (repo.download) against a scripted server (`responses`): every way a download goes wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests
import responses

from lorien.repo.download import Downloader, DownloadPolicy, DownloadRequest
from lorien.repo.errors import IntegrityError, NetworkError

URL = "http://repo.test/blobs/model.bin"
DATA = bytes(range(256)) * 400  # 102,400 bytes


class Script:
    """A server whose answers the test scripts, one entry per request (the last one repeats)."""

    def __init__(self, *answers: str, etag: str = '"v1"') -> None:
        self.answers = list(answers)
        self.etag = etag
        self.seen: list[dict[str, str]] = []

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        self.seen.append(dict(request.headers))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        range_header = request.headers.get("Range")
        start = int(range_header.removeprefix("bytes=").split("-")[0]) if range_header else 0
        if answer == "timeout":
            raise requests.ConnectTimeout("connect timed out")
        if answer == "reset":
            raise requests.ConnectionError("connection reset by peer")
        if answer == "etag-changed":
            self.etag = '"v2"'
            answer = "honour"
        if answer == "416":
            return 416, {"Content-Range": f"bytes */{len(DATA)}"}, b""
        if answer.startswith("short:"):  # send only N bytes of what was asked for
            body = DATA[start:][: int(answer.split(":")[1])]
            status = 206 if range_header else 200
            headers = {"ETag": self.etag}
            if range_header:
                headers["Content-Range"] = f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"
            return status, headers, body
        if answer == "too-long":
            return 200, {"ETag": self.etag}, DATA + b"extra bytes"
        if answer == "corrupt":
            return 200, {"ETag": self.etag}, b"\xff" + DATA[1:]
        if answer == "ignore-range" or not range_header or request.headers.get("If-Range") != self.etag:
            return 200, {"ETag": self.etag}, DATA
        return (
            206,
            {"ETag": self.etag, "Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"},
            DATA[start:],
        )


def _request(tmp_path: Path, md5: str | None = None) -> DownloadRequest:
    return DownloadRequest(
        URL,
        tmp_path / "model.part",
        len(DATA),
        md5 or hashlib.md5(DATA).hexdigest(),
        hashlib.sha256(DATA).hexdigest(),
    )


def _downloader() -> Downloader:
    return Downloader(policy=DownloadPolicy(attempts=4, backoff=0), sleep=lambda _: None)


@responses.activate
def test_interrupted_download_resumes_with_range_and_if_range(tmp_path: Path) -> None:
    script = Script("short:40000", "honour")
    responses.add_callback(responses.GET, URL, callback=script)
    digests = _downloader().fetch(_request(tmp_path))
    assert (tmp_path / "model.part").read_bytes() == DATA and digests.md5 == hashlib.md5(DATA).hexdigest()
    assert script.seen[1]["Range"] == "bytes=40000-" and script.seen[1]["If-Range"] == '"v1"'
    assert not (tmp_path / "model.part.json").exists()  # resume metadata removed once verified


@responses.activate
def test_a_200_answer_to_a_range_request_restarts_from_zero(tmp_path: Path) -> None:
    script = Script("short:30000", "ignore-range")
    responses.add_callback(responses.GET, URL, callback=script)
    _downloader().fetch(_request(tmp_path))
    assert (tmp_path / "model.part").read_bytes() == DATA  # not 30,000 old bytes + the whole file appended


@responses.activate
def test_a_changed_etag_restarts_from_zero(tmp_path: Path) -> None:
    script = Script("short:30000", "etag-changed")
    responses.add_callback(responses.GET, URL, callback=script)
    _downloader().fetch(_request(tmp_path))
    assert (tmp_path / "model.part").read_bytes() == DATA
    assert script.seen[1]["If-Range"] == '"v1"'  # the server saw the old validator and sent the whole new file


@responses.activate
def test_416_on_an_already_complete_file_is_success(tmp_path: Path) -> None:
    request = _request(tmp_path)
    request.destination.write_bytes(DATA)
    (tmp_path / "model.part.json").write_text(f'{{"url": "{URL}", "size": {len(DATA)}, "validator": "\\"v1\\""}}')
    responses.add_callback(responses.GET, URL, callback=Script("416"))
    assert _downloader().fetch(request).size == len(DATA)


@responses.activate
def test_a_server_sending_more_than_declared_is_cut_off_and_fails(tmp_path: Path) -> None:
    responses.add_callback(responses.GET, URL, callback=Script("too-long"))
    with pytest.raises(IntegrityError, match="more than the declared"):
        _downloader().fetch(_request(tmp_path))
    assert not (tmp_path / "model.part").exists()


@responses.activate
def test_md5_mismatch_deletes_and_retries_then_fails(tmp_path: Path) -> None:
    script = Script("corrupt")
    responses.add_callback(responses.GET, URL, callback=script)
    with pytest.raises(IntegrityError, match=r"MD5 .* differs .* after 2 downloads"):
        _downloader().fetch(_request(tmp_path))
    assert len(script.seen) == 2 and not (tmp_path / "model.part").exists()


@responses.activate
def test_md5_mismatch_once_then_good_download_succeeds(tmp_path: Path) -> None:
    responses.add_callback(responses.GET, URL, callback=Script("corrupt", "honour"))
    assert _downloader().fetch(_request(tmp_path)).sha256 == hashlib.sha256(DATA).hexdigest()


@responses.activate
def test_timeouts_and_resets_are_retried_with_backoff(tmp_path: Path) -> None:
    pauses: list[float] = []
    responses.add_callback(responses.GET, URL, callback=Script("timeout", "reset", "short:1000", "honour"))
    downloader = Downloader(policy=DownloadPolicy(attempts=5, backoff=0.5, max_backoff=0.8), sleep=pauses.append)
    downloader.fetch(_request(tmp_path))
    assert pauses == [0.5, 0.8, 0.8]


@responses.activate
def test_gives_up_after_bounded_attempts_with_a_clear_error(tmp_path: Path) -> None:
    responses.add_callback(responses.GET, URL, callback=Script("reset"))
    with pytest.raises(NetworkError, match="failed after 4 attempts: ConnectionError"):
        _downloader().fetch(_request(tmp_path))


@responses.activate
def test_http_errors_are_not_retried_forever(tmp_path: Path) -> None:
    responses.add(responses.GET, URL, status=404)
    with pytest.raises(NetworkError, match="HTTP 404"):
        _downloader().fetch(_request(tmp_path))


@responses.activate
def test_progress_reports_bytes_percent_and_rate(tmp_path: Path) -> None:
    seen = []
    responses.add_callback(responses.GET, URL, callback=Script("honour"))
    Downloader(on_progress=seen.append).fetch(_request(tmp_path))
    assert seen[-1].done == len(DATA) and seen[-1].percent == 100.0 and seen[-1].rate > 0
