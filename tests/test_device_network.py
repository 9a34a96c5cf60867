"""The device's network defences end to end: the real ``lorien device`` (Bottle on waitress) in a subprocess
against servers of the tests' own — a response head that trickles, a Content-Length that is not a number.
Limits are shrunk so each test runs in seconds."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.device_harness import DeviceProcess
from tests.support.http_thread import start_http_server


@pytest.fixture
def devices() -> Iterator[list[DeviceProcess]]:
    started: list[DeviceProcess] = []
    yield started
    for device in started:
        device.stop()


Answer = Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]


@pytest.fixture
def hostile() -> Iterator[Callable[[Answer], str]]:
    """``hostile(answer)``: the URL of a server answering every GET with ``answer(handler, stop)``."""
    stop = threading.Event()
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        def handle(handler: http.server.BaseHTTPRequestHandler) -> None:
            handler.close_connection = True
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the device hung up: good
                answer(handler, stop)

        servers.append(start_http_server(handle, poll_interval=0.05))
        return f"http://127.0.0.1:{servers[-1].server_address[1]}/"

    yield start
    stop.set()
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _trickle_head(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """The status line and headers one byte every 0.2 s: never silent long enough for a read timeout."""
    for byte in b'HTTP/1.1 200 OK\r\nETag: "v1"\r\nContent-Length: 2\r\nX-Padding: ' + b"." * 200 + b"\r\n\r\n{}":
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        if stop.wait(0.2):
            return


def _superscript_length(handler: http.server.BaseHTTPRequestHandler, _stop: threading.Event) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "²")  # "²".isdigit() is True, int("²") raises
    handler.end_headers()
    handler.wfile.write(b"{}")


def test_a_trickling_head_fails_the_update_at_document_timeout(hostile, tmp_path: Path, devices: list) -> None:
    url = hostile(_trickle_head)  # the whole head would take 48 s
    config = tmp_path / "device.toml"
    config.write_text("[limits]\nhead_timeout = 0.5\ndocument_timeout = 1.5\n")
    device = DeviceProcess(tmp_path, url, tmp_path / "model.tflite", "--config", str(config))
    devices.append(device)
    assert device.api("POST", "update-latest").json()["code"] == 200
    status = device.wait_until_done(timeout=40)
    assert status["stage"] == "failed", status
    message = status["last_result"]["message"]
    assert message.startswith(url) and message.endswith(
        ": the whole document did not arrive within 1.5 s (limits.document_timeout=1.5); the server is too slow"
    )


def test_a_content_length_that_is_not_a_number_is_a_502_not_a_500(hostile, tmp_path: Path, devices: list) -> None:
    url = hostile(_superscript_length)
    device = DeviceProcess(tmp_path, url, tmp_path / "model.tflite")
    devices.append(device)
    answer = device.api("POST", "check")
    assert answer.status_code == 502, answer.text
    assert answer.json()["msg"].endswith(": malformed Content-Length header '²': expected ASCII digits")
