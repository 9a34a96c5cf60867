"""The device's network defences end to end: the real ``lorien device`` (Bottle on waitress) in a subprocess
against servers of the tests' own — a response head that trickles, a Content-Length that is not a number, a
repository that goes down in the middle of a download. Limits and retry pauses are shrunk so each test runs in
seconds. The last test pins the ``/progress`` message of a waiting download exactly, on the simulator."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lorien.device.plan import Step
from lorien.device.report import Callbacks, Reporter
from lorien.device.state import Stage, StateStore
from lorien.device.steps import download_steps
from lorien.modelgen import write_family
from lorien.publisher.publish import publish
from lorien.repo.download import Downloader
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.faulty_server import Faults, FaultyServer
from tests.support.http_thread import start_http_server
from tests.support.processes import SMALL_LAYERS
from tests.support.simulator import Fault, RepositorySimulator

pytestmark = pytest.mark.slow  # real lorien device processes


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("network-family")
    write_family(root / "models" / "cls", ["1.0.0"], layer_sizes=SMALL_LAYERS, seed=7)
    assert publish(root / "models", root / "repo").ok
    return root


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


def _progress_messages(device: DeviceProcess, timeout: float = 60) -> list[str]:
    """Every distinct ``/progress`` message until the operation ends."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = device.api("GET", "progress").json()["data"]["message"]
        if not seen or seen[-1] != message:
            seen.append(message)
        status = device.status()
        if not status["busy"] and status["stage"] in ("idle", "failed"):
            return seen
        time.sleep(0.05)
    raise AssertionError("device did not finish in time:\n" + "".join(device.lines[-30:]))


@pytest.fixture
def outage(
    family: Path, tmp_path: Path, devices: list
) -> Iterator[Callable[..., tuple[FaultyServer, DeviceProcess]]]:
    """``outage(seconds, total_seconds, *flags)``: a device with a small backoff (0.1 s doubling to 0.2 s) and
    a repository whose blobs get no answer for ``seconds`` from the first blob request on."""
    servers: list[FaultyServer] = []

    def start(seconds: float, total_seconds: str, *flags: str) -> tuple[FaultyServer, DeviceProcess]:
        servers.append(FaultyServer(family / "repo", Faults(outage=seconds)))
        model = tmp_path / "app" / "model.tflite"
        model.parent.mkdir()
        retry = (
            "--retry-first-backoff",
            "0.1",
            "--retry-max-backoff",
            "0.2",
            "--retry-total-seconds",
            total_seconds,
        )
        devices.append(DeviceProcess(tmp_path, servers[-1].url, model, *retry, *flags))
        return servers[-1], devices[-1]

    yield start
    for server in servers:
        server.close()


def test_an_outage_during_the_download_is_waited_out_and_shown(family: Path, outage) -> None:
    faulty, device = outage(3.0, "30")
    assert device.api("POST", "update-latest").json()["code"] == 200
    messages = _progress_messages(device)
    assert device.status()["last_result"]["ok"], messages
    assert sha256(device.model) == sha256(family / "models" / "cls" / "1.0.0.tflite")
    waiting = [m for m in messages if "connection lost, retry" in m]
    assert waiting and all(m.startswith("compressed 1.0.0: 0/") for m in waiting), messages  # a new device
    blob_requests = [path for path, _, _ in faulty.faults.requests if path.startswith("blobs/")]
    assert len(blob_requests) > 6  # more attempts than the old fixed count of 6


def test_a_spent_retry_budget_fails_the_update_and_the_next_check_completes_it(family: Path, outage) -> None:
    _, device = outage(2.0, "0.3", "--check-interval", "1")
    deadline = time.monotonic() + 60
    while sha256(device.model) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sha256(device.model) == sha256(family / "models" / "cls" / "1.0.0.tflite"), "".join(device.lines[-30:])
    history = device.status()["history"]
    failures = [entry["message"] for entry in history if not entry["ok"]]
    assert failures and all("(retry budget 0.3 s): " in message for message in failures), history


# ---------------------------------------------------------------- the waiting message, exactly (simulator)


class _RecordingReporter(Reporter):
    def __init__(self, state: StateStore) -> None:
        super().__init__("cls", state, Callbacks(None))
        self.messages: list[str] = []

    def show(self, stage: Stage, message: str, percent: float, error: str | None = None) -> None:
        self.messages.append(message)
        super().show(stage, message, percent, error)


def test_progress_says_which_retry_comes_when_and_why(tmp_path: Path) -> None:
    data = bytes(range(250)) * 4
    sha = hashlib.sha256(data).hexdigest()
    sim = RepositorySimulator()
    sim.add("blobs/model", data)
    sim.inject("blobs/model", Fault(cut=400), Fault(drop="ConnectionError: connection refused"))
    step = Step("full", "blobs/model", len(data), hashlib.md5(data).hexdigest(), sha, "1.0.0", sha)
    reporter = _RecordingReporter(StateStore(tmp_path / "state.json"))
    blobs = download_steps(
        [step], tmp_path, sim.url, lambda on: Downloader(transport=sim, on_progress=on), reporter
    )
    assert blobs[0].read_bytes() == data
    assert [m for m in reporter.messages if "retry" in m] == [
        "full 1.0.0: 400/1000 bytes; connection lost, retry 2 in 0.5 s (connection broken after 400 bytes)",
        "full 1.0.0: 400/1000 bytes; connection lost, retry 3 in 1 s (ConnectionError: connection refused)",
    ]
