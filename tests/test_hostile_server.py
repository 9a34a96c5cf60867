"""Both HTTP clients (repo.fetch.HttpFetcher, repo.download.Downloader) over the real HTTP transport
(repo.transport.HttpTransport) against real hostile servers on 127.0.0.1.

The server answers each request with the next behaviour of its script (the last one repeats): trickling bytes,
stalling after the headers, endless bodies (chunked, close-delimited, or a Content-Length far above the
declared size), 503s, a gzip body nobody asked for. Every behaviour ends by itself within seconds, so a client
that fails to defend itself makes its test fail quickly instead of hanging. Limits are shrunk (1 s windows and
stalls) so the file runs in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lorien.repo import download as download_module
from lorien.repo.download import Downloader, DownloadPolicy, DownloadRequest
from lorien.repo.errors import IntegrityError, NetworkError
from lorien.repo.fetch import HttpFetcher
from lorien.repo.limits import DEFAULT_LIMITS
from lorien.repo.transport import HttpTransport, RateGuard, RetryPolicy, TooSlow
from tests.support.http_thread import start_http_server

DATA = bytes(range(256)) * 40  # 10,240 bytes: the size "the manifest declares"
ETAG = '"v1"'
SLOW = replace(DEFAULT_LIMITS, min_rate=1000, rate_window=1.0, stall_timeout=5.0)  # trickle: 100 B/s
STALL = replace(DEFAULT_LIMITS, stall_timeout=1.0)
ENDLESS_CAP = 64 << 20  # an "endless" body still ends here, so a client that keeps reading fails, not hangs
HUGE = 1 << 30  # Content-Length announced by the lying server
BLOCK = DATA * 6  # 61,440 bytes per write of an endless body (made once: the memory test must not count it)
CHUNKED_BLOCK = f"{len(BLOCK):x}\r\n".encode() + BLOCK + b"\r\n"


class HostileServer:
    """http.server in a thread; records each request's headers and the body bytes it managed to send."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.seen: list[dict[str, str | None]] = []
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.httpd = start_http_server(self._answer, poll_interval=0.05)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.url = self.base + "blobs/model.bin"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        headers = handler.headers
        self.seen.append({name: headers.get(name) for name in ("Range", "If-Range", "Accept-Encoding")})
        self.sent.append(0)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        start = 0
        if headers.get("Range") and headers.get("If-Range") in (None, ETAG):
            start = int(headers["Range"].removeprefix("bytes=").split("-")[0])
        body = DATA[start:]
        handler.close_connection = True
        try:
            if answer == "503":
                self._head(handler, 0, {"Content-Length": "0"}, status=503)
            elif answer == "ok":
                self._head(handler, start, {"Content-Length": str(len(body))})
                self._send(handler, body)
            elif answer.startswith("cut:"):  # N bytes, then the connection drops
                self._head(handler, start, {"Content-Length": str(len(body))})
                self._send(handler, body[: int(answer.split(":")[1])])
            elif answer == "trickle":  # 10 bytes every 0.1 s, for at most 4 s
                self._head(handler, start, {"Content-Length": str(len(body))})
                for offset in range(0, min(len(body), 400), 10):
                    self._send(handler, body[offset : offset + 10])
                    if self.stop.wait(0.1):
                        return
            elif answer == "stall":  # headers and 10 bytes, then silence for 5 s
                self._head(handler, start, {"Content-Length": str(len(body))})
                self._send(handler, body[:10])
                self.stop.wait(5)
            elif answer == "gzip":
                packed = gzip.compress(body)
                self._head(handler, start, {"Content-Length": str(len(packed)), "Content-Encoding": "gzip"})
                self._send(handler, packed)
            elif answer == "head-trickle":  # the status line and headers, one byte every 0.1 s (about 5 s)
                head = f"HTTP/1.1 200 OK\r\nETag: {ETAG}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                for index in range(len(head)):
                    handler.wfile.write(head[index : index + 1])
                    handler.wfile.flush()
                    if self.stop.wait(0.1):
                        return
                self._send(handler, body)
            elif answer in ("superscript-length", "bogus-range"):  # "²".isdigit() is True; int("²") fails
                extra = (
                    {"Content-Length": "²"} if answer == "superscript-length" else {"Content-Range": "bytes ²-9/9"}
                )
                self._head(handler, start, {**extra, "Connection": "close"}, status=206 if start else 200)
                self._send(handler, body)
            elif answer.startswith("poison-cut:"):  # a validator no honest server accepts back, then a cut
                self._head(handler, 0, {"Content-Length": str(len(DATA))}, etag='"v1\x01"')
                self._send(handler, DATA[: int(answer.split(":")[1])])
            elif answer in ("strict", "no-ranges"):  # nginx: 400 to a control character; or 400 to any range
                if (answer == "strict" and not (headers.get("If-Range") or "x").isprintable()) or (
                    answer == "no-ranges" and headers.get("Range")
                ):
                    self._head(handler, 0, {"Content-Length": "0"}, status=400)
                else:
                    self._head(handler, start, {"Content-Length": str(len(body))})
                    self._send(handler, body)
            elif answer in ("endless-chunked", "endless-close", "huge-length"):
                self._endless(handler, answer)
            else:
                raise AssertionError(f"unknown behaviour {answer!r}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what a defended client does

    def _head(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        start: int,
        extra: dict[str, str],
        status: int = 0,
        etag: str = ETAG,
    ) -> None:
        status = status or (206 if start else 200)
        handler.send_response(status)
        handler.send_header("ETag", etag)
        if status == 206 and "Content-Range" not in extra:
            handler.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.end_headers()

    def _send(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.sent[-1] += len(data)

    def _endless(self, handler: http.server.BaseHTTPRequestHandler, how: str) -> None:
        framing = {
            "endless-chunked": {"Transfer-Encoding": "chunked"},
            "endless-close": {"Connection": "close"},  # no length: the body ends when the connection does
            "huge-length": {"Content-Length": str(HUGE)},
        }[how]
        self._head(handler, 0, framing)
        while self.sent[-1] < ENDLESS_CAP and not self.stop.is_set():
            if how == "endless-chunked":
                handler.wfile.write(CHUNKED_BLOCK)
                handler.wfile.flush()
                self.sent[-1] += len(BLOCK)
            else:
                self._send(handler, BLOCK)


@pytest.fixture
def serve() -> Iterator:
    servers: list[HostileServer] = []

    def start(*script: str) -> HostileServer:
        servers.append(HostileServer(*script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _request(tmp_path: Path, url: str) -> DownloadRequest:
    return DownloadRequest(
        url, tmp_path / "model.part", len(DATA), hashlib.md5(DATA).hexdigest(), hashlib.sha256(DATA).hexdigest()
    )


def _downloader(limits=DEFAULT_LIMITS, attempts: int = 2, pauses: list[float] | None = None) -> Downloader:
    policy = DownloadPolicy(retry=RetryPolicy(attempts, backoff=0.01, max_backoff=0.02))
    transport = HttpTransport(limits, sleep=pauses.append if pauses is not None else lambda _: None)
    return Downloader(policy=policy, transport=transport)


SLOW_MESSAGE = (
    r"only (\d+) bytes in (\d+\.\d) s, below the minimum of 1000 B/s \(slow or stalled server\); "
    r"raise limits\.min_rate/rate_window if the link is really this slow"
)


def _check_slow(message: str, prefix: str) -> None:
    match = re.fullmatch(re.escape(prefix) + SLOW_MESSAGE, message)
    assert match, message
    received, elapsed = int(match.group(1)), float(match.group(2))
    assert 0 < received < 1000 * elapsed and 1.0 <= elapsed < 2.5  # ~100 B/s measured over one ~1 s window


# ---------------------------------------------------------------- slow retrieval


@pytest.mark.parametrize("call", ["read_document", "iter_blob"])
def test_trickling_server_is_cut_off_by_the_fetcher(serve, call: str) -> None:
    server = serve("trickle")
    fetcher = HttpFetcher(server.base, limits=SLOW)
    began = time.monotonic()
    with pytest.raises(NetworkError) as caught:
        if call == "read_document":
            fetcher.read_document("blobs/model.bin")
        else:
            b"".join(fetcher.iter_blob("blobs/model.bin", len(DATA)))
    assert time.monotonic() - began < 3  # the trickle would last 4 s (and 100 s for the whole file)
    _check_slow(str(caught.value), server.url + ": ")


def test_trickling_server_fails_the_download_after_resumed_attempts(serve, tmp_path: Path) -> None:
    server = serve("trickle")
    request = _request(tmp_path, server.url)
    began = time.monotonic()
    with pytest.raises(NetworkError) as caught:
        _downloader(SLOW, attempts=2).fetch(request)
    assert time.monotonic() - began < 5
    _check_slow(str(caught.value), f"{server.url}: download failed after 2 attempts: ")
    # the slow attempt counted like a connection error: .part kept, the second attempt resumed it
    assert len(server.seen) == 2 and server.seen[0]["Range"] is None
    first = int(server.seen[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert server.seen[1]["If-Range"] == ETAG and first > 0
    assert first < request.destination.stat().st_size <= len(DATA)
    assert request.destination.read_bytes() == DATA[: request.destination.stat().st_size]


def test_rate_guard_measures_each_window_so_a_fast_start_earns_no_credit() -> None:
    now = [0.0]
    guard = RateGuard(replace(DEFAULT_LIMITS, min_rate=1000, rate_window=1.0), clock=lambda: now[0])
    for t, count in ((0.5, 10), (1.0, 5000), (1.5, 600), (2.0, 600)):  # 5,010 B then 1,200 B: fine
        now[0] = t
        guard.update(count)
    now[0] = 2.5
    guard.update(10)  # inside the window: not judged yet
    now[0] = 3.0
    with pytest.raises(TooSlow, match=r"^only 20 bytes in 1\.0 s, below the minimum of 1000 B/s"):
        guard.update(10)


# ---------------------------------------------------------------- stall


def test_stalled_server_is_a_clear_fetch_error(serve) -> None:
    server = serve("stall")
    began = time.monotonic()
    with pytest.raises(NetworkError) as caught:
        HttpFetcher(server.base, limits=STALL).read_document("blobs/model.bin")
    assert time.monotonic() - began < 3
    assert str(caught.value) == (f"{server.url}: no data for 1 s, the server stalled (limits.stall_timeout=1)")


def test_stalled_server_fails_the_download_and_keeps_the_part(serve, tmp_path: Path) -> None:
    server = serve("stall")
    request = _request(tmp_path, server.url)
    began = time.monotonic()
    with pytest.raises(NetworkError, match=r"failed after 2 attempts: no data for 1 s, the server stalled"):
        _downloader(STALL, attempts=2).fetch(request)
    assert time.monotonic() - began < 5
    assert server.seen[1]["Range"] == "bytes=10-" and request.destination.read_bytes() == DATA[:20]


# ---------------------------------------------------------------- endless data


@pytest.mark.parametrize("how", ["endless-chunked", "endless-close"])
def test_endless_body_never_grows_the_part_past_the_declared_size(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    server = serve(how)
    sizes: list[int] = []
    real_discard = download_module.discard

    def recording_discard(part: Path) -> None:  # what the .part held when the download gave it up
        sizes.append(part.stat().st_size if part.exists() else -1)
        real_discard(part)

    monkeypatch.setattr(download_module, "discard", recording_discard)
    request = _request(tmp_path, server.url)
    with pytest.raises(IntegrityError) as caught:
        _downloader().fetch(request)
    assert str(caught.value) == (
        f"{server.url}: server sent more than the {len(DATA)} bytes the manifest declares after 2 downloads"
    )
    assert sizes == [len(DATA), len(DATA)]  # written up to the bound, never past it
    assert all(_offered_more(server, index) for index in range(len(server.sent)))  # the server did offer more
    assert not request.destination.exists()


def test_content_length_above_the_declared_size_is_refused_before_the_body(serve, tmp_path: Path) -> None:
    server = serve("huge-length")
    request = _request(tmp_path, server.url)
    with pytest.raises(
        IntegrityError,
        match=rf"server announced {HUGE} bytes, more than the {len(DATA)} bytes the manifest declares after 2 "
        r"downloads$",
    ):
        _downloader().fetch(request)
    assert not request.destination.exists() and len(server.seen) == 2


def _offered_more(server: HostileServer, request: int, wait: float = 5.0) -> bool:
    """The server thread counts a block after its write returns, which can be after the client already read
    it and hung up: give the counter a moment instead of racing it."""
    deadline = time.monotonic() + wait
    while server.sent[request] <= len(DATA) and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.sent[request] > len(DATA)


@pytest.mark.parametrize("how", ["endless-chunked", "endless-close"])
def test_endless_blob_stream_stops_at_the_declared_size(serve, how: str) -> None:
    server = serve(how)
    received = 0
    with pytest.raises(
        NetworkError,
        match=rf"^{re.escape(server.url)}: server sent more than the {len(DATA)} bytes the manifest declares$",
    ):
        for chunk in HttpFetcher(server.base).iter_blob("blobs/model.bin", len(DATA)):
            received += len(chunk)
    assert received <= len(DATA)  # nothing past the bound reached the caller...
    assert _offered_more(server, 0)  # ...although the server did send more


@pytest.mark.parametrize("how", ["endless-chunked", "endless-close", "huge-length"])
def test_endless_document_is_refused_in_bounded_memory(serve, how: str) -> None:
    server = serve(how)
    tracemalloc.start()
    try:
        with pytest.raises(NetworkError, match=r"more than the 1000 bytes allowed for a document$"):
            HttpFetcher(server.base).read_document("blobs/model.bin", limit=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # the server offered up to 64 MiB; we held about one 1 KiB read


# ---------------------------------------------------------------- 5xx


def test_503_twice_then_success_is_retried_with_backoff(serve, tmp_path: Path) -> None:
    server = serve("503", "503", "ok")
    pauses: list[float] = []
    digests = _downloader(attempts=4, pauses=pauses).fetch(_request(tmp_path, server.url))
    assert digests.sha256 == hashlib.sha256(DATA).hexdigest() and len(server.seen) == 3
    assert pauses == [0.01, 0.02]


def test_503_between_attempts_keeps_the_part_and_resumes(serve, tmp_path: Path) -> None:
    server = serve("cut:4000", "503", "ok")
    request = _request(tmp_path, server.url)
    _downloader(attempts=3).fetch(request)
    assert request.destination.read_bytes() == DATA
    assert [seen["Range"] for seen in server.seen] == [None, "bytes=4000-", "bytes=4000-"]


def test_503_forever_fails_after_the_attempts_with_the_status(serve, tmp_path: Path) -> None:
    server = serve("503")
    with pytest.raises(NetworkError, match=r"download failed after 3 attempts: HTTP 503 Service Unavailable$"):
        _downloader(attempts=3).fetch(_request(tmp_path, server.url))
    assert len(server.seen) == 3


# ---------------------------------------------------------------- content encoding


def test_downloads_and_blob_reads_ask_for_identity_encoding(serve, tmp_path: Path) -> None:
    server = serve("ok")
    _downloader().fetch(_request(tmp_path, server.url))
    fetcher = HttpFetcher(server.base)
    assert b"".join(fetcher.iter_blob("blobs/model.bin", len(DATA))) == DATA
    assert [seen["Accept-Encoding"] for seen in server.seen] == ["identity", "identity"]


def test_a_compressed_blob_sent_anyway_is_refused(serve, tmp_path: Path) -> None:
    server = serve("gzip")
    message = r"server sent Content-Encoding: gzip although asked for identity"
    with pytest.raises(NetworkError, match=message):
        _downloader().fetch(_request(tmp_path, server.url))
    with pytest.raises(NetworkError, match=message):
        b"".join(HttpFetcher(server.base).iter_blob("blobs/model.bin", len(DATA)))
    assert len(server.seen) == 2  # not retried: the server will not change its mind


# ---------------------------------------------------------------- slow head

HEAD = replace(DEFAULT_LIMITS, head_timeout=1.0, document_timeout=2.0)  # the trickled head takes about 5 s


def test_a_trickling_head_fails_the_download_at_head_timeout(serve, tmp_path: Path) -> None:
    server = serve("head-trickle")
    with pytest.raises(NetworkError) as caught:
        _downloader(HEAD, attempts=2).fetch(_request(tmp_path, server.url))
    assert str(caught.value) == (
        f"{server.url}: download failed after 2 attempts: a complete response head did not arrive within 1 s "
        "(limits.head_timeout=1); the server is too slow"
    )


def test_a_trickling_head_bounds_the_whole_document_at_document_timeout(serve) -> None:
    server = serve("head-trickle")
    with pytest.raises(NetworkError) as caught:
        HttpFetcher(server.base, limits=HEAD).read_document("blobs/model.bin")
    # attempt 1 ends at the 1 s head_timeout and is retried; attempt 2 ends when the document's 2 s are spent
    assert str(caught.value) == (
        f"{server.url}: the whole document did not arrive within 2 s (limits.document_timeout=2); the server is "
        "too slow"
    )
    assert len(server.seen) == 2


# ---------------------------------------------------------------- header numbers


def test_a_content_length_that_is_not_ascii_digits_is_a_network_error(serve, tmp_path: Path) -> None:
    server = serve("superscript-length")
    message = f"{server.url}: malformed Content-Length header '²': expected ASCII digits"
    with pytest.raises(NetworkError) as caught:
        HttpFetcher(server.base).read_document("blobs/model.bin")
    assert str(caught.value) == message
    with pytest.raises(NetworkError) as caught:
        _downloader().fetch(_request(tmp_path, server.url))
    assert str(caught.value) == message and len(server.seen) == 2  # not retried


def test_a_bogus_content_range_is_a_network_error(serve, tmp_path: Path) -> None:
    server = serve("cut:4000", "bogus-range")
    with pytest.raises(NetworkError) as caught:
        _downloader(attempts=3).fetch(_request(tmp_path, server.url))
    assert str(caught.value) == f"{server.url}: malformed Content-Range header 'bytes ²-9/9' in a 206 answer"
    assert [seen["Range"] for seen in server.seen] == [None, "bytes=4000-"]


# ---------------------------------------------------------------- validators


def test_a_poisoned_etag_is_not_kept_so_an_honest_server_completes_the_download(serve, tmp_path: Path) -> None:
    server = serve("poison-cut:4000", "strict")  # strict: 400 to a control character in If-Range, like nginx
    request = _request(tmp_path, server.url)
    _downloader().fetch(request)
    assert request.destination.read_bytes() == DATA
    assert [(seen["Range"], seen["If-Range"]) for seen in server.seen] == [(None, None), (None, None)]


def test_a_server_refusing_to_resume_gets_the_file_asked_for_from_zero(serve, tmp_path: Path) -> None:
    server = serve("cut:4000", "no-ranges")
    request = _request(tmp_path, server.url)
    _downloader().fetch(request)
    assert request.destination.read_bytes() == DATA
    assert [seen["Range"] for seen in server.seen] == [None, "bytes=4000-", None]
