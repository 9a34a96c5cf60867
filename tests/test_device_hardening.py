"""The device API and state directory under abuse, end to end (real `lorien serve`, real `lorien device`, real
waitress): hanging repositories, huge request bodies, cross-site and DNS-rebinding requests, the default token,
two processes on one state directory, disk use over a sequence of operations, and one installed version."""

# ruff: noqa: F811 (test arguments named like the fixtures imported from test_device)

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.device_harness import DeviceProcess, sha256
from tests.support.processes import LiveServer, run_lorien

# the module's fixtures `family` (three 2 MB versions, a two-hop patch chain) and `server` (`lorien serve`)
from tests.test_device import family, install, model_file, server, start  # noqa: F401

pytestmark = pytest.mark.slow  # real lorien device processes

KEEP_BACKUPS = 2


@pytest.fixture
def hanging_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=32)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    listener.close()
    for connection in accepted:
        connection.close()


def _port(device: DeviceProcess) -> int:
    return int(device.url.split(":")[2].split("/")[0])


def _tope_body(family: Path, base_url: str, version: str) -> dict:
    data = model_file(family, version).read_bytes()
    blob = next((family / "repo" / "blobs").rglob(f"{hashlib.sha256(data).hexdigest()}*"))
    return {
        "version": version,
        "package_url": base_url + str(blob.relative_to(family / "repo")),
        "package_name": f"model-{version}.tflite",
        "package_size": len(data),
        "package_md5": hashlib.md5(data).hexdigest(),
    }


def tope_install(device: DeviceProcess, family: Path, base_url: str, version: str, **extra) -> dict:
    assert device.api("POST", "download", json=_tope_body(family, base_url, version)).json()["code"] == 200
    assert device.wait_until_done()["last_result"]["ok"]
    assert device.api("POST", "update", json={"version": version, **extra}).json()["code"] == 200
    return device.wait_until_done()


# --------------------------------------------------------------------------- 1: the API answers while work hangs


def test_status_and_progress_answer_while_checks_hang(
    family: Path, hanging_url: str, tmp_path: Path, devices: list
) -> None:
    device = start(devices, tmp_path, hanging_url, install(family, tmp_path, "1.1.0"))
    assert device.api("POST", "update-latest").status_code == 200  # the operation slot: hangs in the background

    def check() -> int | None:
        try:
            return device.api("POST", "check", timeout=4).status_code
        except requests.Timeout:
            return None

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: check(), range(4)))
        # while the one check that got the slot still hangs
        status = device.api("GET", "status", timeout=1)
        progress = device.api("GET", "progress", timeout=1)
    assert sorted(answers, key=str) == [409, 409, 409, None], answers  # extra checks refused at once, not queued
    assert status.status_code == 200 and status.json()["data"]["busy"]
    assert progress.status_code == 200 and progress.json()["data"]["lorien_stage"] == "checking"
    busy = device.api("POST", "update-latest", timeout=1)
    assert busy.status_code == 409 and "another operation is running" in busy.json()["msg"]


# --------------------------------------------------------------------------- 3: a huge body is refused unread


def _post_huge(port: int, path: str, headers: str = "") -> bytes:
    """Announce a 900 MiB body, send its first KiB (then nothing: a slow client), and return everything the
    server says until it closes. A server that reads (or buffers) the body first never answers: the read times
    out and the test fails."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Type: application/json\r\n"
            f"Content-Length: {900 << 20}\r\n\r\n".encode()
            + b"{" * 1024
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_huge_content_length_gets_413_before_the_body_is_read(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    device = start(devices, tmp_path, server.url, install(family, tmp_path, "1.1.0"))
    answer = _post_huge(_port(device), "/api/v1.0/download", f"Authorization: Bearer {device.token}\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert device.api("GET", "status").status_code == 200  # the server itself is fine
    answer = _post_huge(int(server.url.split(":")[2].rstrip("/")), "/check-update")  # `lorien serve` too
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# --------------------------------------------------------------------------- 4: web pages, rebinding, the token


def test_a_token_is_generated_by_default_and_required(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    device = start(devices, tmp_path, server.url, install(family, tmp_path, "1.1.0"))
    token_file = device.state_dir / "api_token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and len(device.token) >= 32
    # hex: a token starting with "-" would be read by argparse as an option (`lorien ctl --token -x…`)
    assert re.fullmatch(r"[0-9a-f]{64}", device.token), device.token
    assert f"API token in {token_file}" in "".join(device.lines)
    assert device.api("POST", "check", token=None).status_code == 401
    assert device.api("POST", "check").status_code == 200  # a POST without a body needs no Content-Type
    device.stop()
    again = start(devices, tmp_path, server.url, device.model)
    assert again.token == device.token  # generated once, kept across restarts


@pytest.mark.parametrize("token", ["generated", "none"])
def test_cross_site_and_rebinding_requests_are_refused(
    family: Path, server: LiveServer, tmp_path: Path, devices: list, token: str
) -> None:
    extra = ("--insecure-no-token",) if token == "none" else ()
    model = install(family, tmp_path, "1.1.0")
    device = start(devices, tmp_path, server.url, model, *extra)
    port = _port(device)
    body = json.dumps(_tope_body(family, server.url, "1.0.0"))
    evil = device.api("POST", "download", data=body, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.json()["msg"]
    rebound = {"Host": f"evil.example:{port}"}
    assert device.api("GET", "status", headers=rebound).status_code == 403
    assert device.api("POST", "update-latest", headers=rebound).status_code == 403
    wrong_port = device.api("GET", "status", headers={"Host": f"127.0.0.1:{port + 1}"})
    assert wrong_port.status_code == 403
    plain = device.api("POST", "download", data=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    for own in (f"localhost:{port}", f"127.0.0.1:{port}"):
        headers = {"Host": own, "Origin": f"http://{own}"}
        assert device.api("GET", "status", headers=headers).status_code == 200
    assert device.status()["history"] == [] and sha256(model) == sha256(model_file(family, "1.1.0"))


# --------------------------------------------------------------------------- 8: one process per state directory


def test_a_second_device_on_the_same_state_directory_exits_3(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    first = start(devices, tmp_path, server.url, model)
    second = run_lorien(
        "device", "--repo-url", server.url, "--family", "cls", "--model-path", model,
        "--state-dir", first.state_dir, "--port", "0", "--insecure-allow-unsigned", timeout=60,
    )  # fmt: skip
    assert second.returncode == 3, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.process.pid}" in lines[0] and "state directory" in lines[0], lines
    assert first.api("GET", "status").status_code == 200
    first.stop()
    assert start(devices, tmp_path, server.url, model).api("GET", "status").status_code == 200  # lock released


# --------------------------------------------------------------------------- 9, 12: disk use, the installed version


def _state_bytes(state_dir: Path) -> int:
    return sum(path.stat().st_size for path in state_dir.rglob("*") if path.is_file())


def test_state_stays_bounded_over_updates_rollbacks_and_tope_packages(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    size = model.stat().st_size
    unhealthy = tmp_path / "unhealthy"
    check = tmp_path / "health.sh"
    check.write_text(f"#!/bin/sh\n[ ! -e {unhealthy} ]\n")
    check.chmod(0o755)
    device = start(devices, tmp_path, server.url, model, "--health-check", str(check))
    measured = []

    def measure(step: str, installed: str) -> None:
        status = device.status()
        backups = list((device.state_dir / "backups").iterdir())
        digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in backups]
        assert status["installed_version"] == installed and sha256(model) == sha256(model_file(family, installed))
        assert list((device.state_dir / "tmp").iterdir()) == [], step
        assert len(backups) <= KEEP_BACKUPS and len(set(digests)) == len(digests), (step, backups)
        assert sha256(model) not in digests, step
        measured.append(_state_bytes(device.state_dir))
        assert measured[-1] <= size * (KEEP_BACKUPS + 2), (step, measured)

    assert device.api("POST", "update-latest").status_code == 200
    assert device.wait_until_done()["last_result"]["ok"]
    measure("update", "1.2.0")
    unhealthy.touch()
    status = tope_install(device, family, server.url, "1.0.0", force=True)
    assert "rolled back: health check failed" in status["last_result"]["message"], status
    measure("failed health check + rollback", "1.2.0")
    unhealthy.unlink()
    assert tope_install(device, family, server.url, "1.1.0", force=True)["last_result"]["ok"]
    measure("TOPE update", "1.1.0")
    status = tope_install(device, family, server.url, "1.0.0")
    assert "not downgrading" in status["last_result"]["message"], status
    measure("refused TOPE package", "1.1.0")
    assert device.api("POST", "rollback").status_code == 200
    assert device.wait_until_done()["last_result"]["ok"]
    measure("manual rollback", "1.2.0")


def test_status_check_and_progress_name_the_same_installed_version_after_rollbacks(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")  # installed before lorien: only the manifest knows its version
    unhealthy = tmp_path / "unhealthy"
    unhealthy.touch()
    device = start(devices, tmp_path, server.url, model, "--health-check", f"test ! -e {unhealthy}")
    assert device.api("POST", "update-latest").status_code == 200
    status = device.wait_until_done()
    assert "rolled back" in status["last_result"]["message"] and sha256(model) == sha256(
        model_file(family, "1.1.0")
    )
    assert status["installed_version"] == "1.1.0", status
    assert device.api("POST", "check").json()["data"]["installed"]["version"] == "1.1.0"
    unhealthy.unlink()
    assert device.api("POST", "update-latest").status_code == 200
    assert device.wait_until_done()["installed_version"] == "1.2.0"
    assert device.api("POST", "rollback").status_code == 200
    status = device.wait_until_done()
    assert status["last_result"]["version"] == "1.1.0" and status["installed_version"] == "1.1.0", status
    assert device.api("GET", "progress").json()["data"]["message"] == "installed 1.1.0"
    device.stop()
    restarted = start(devices, tmp_path, server.url, model)
    assert restarted.status()["installed_version"] == "1.1.0"  # remembered, not only while a manifest is at hand
