"""The device updater end to end: real `lorien serve` (or the tests' fault-injecting server) + real `lorien device`
subprocesses; updates by patch chain and full file, the TOPE API, validation, auth, rollback, and SIGKILL at
every stage followed by a restart that heals."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorien.modelgen import DEFAULT_LAYERS
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.faulty_server import Faults, FaultyServer
from tests.support.processes import LiveServer, serving

pytestmark = pytest.mark.slow  # real `lorien serve` and `lorien device` processes


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 2 MB TFLite versions; the repository has only 1.0.0→1.1.0 and 1.1.0→1.2.0 (a two-hop chain)."""
    root = tmp_path_factory.mktemp("device-family")
    publish_two_hop_family(root, DEFAULT_LAYERS)
    return root


@pytest.fixture(scope="module")
def server(family: Path) -> Iterator[LiveServer]:
    with serving(family / "repo") as live:
        yield live


def install(family: Path, tmp_path: Path, version: str | None) -> Path:
    target = tmp_path / "app" / "model.tflite"
    target.parent.mkdir(parents=True, exist_ok=True)
    if version is None:
        target.write_bytes(b"TFL3 a model this repository never published" * 1000)
    else:
        shutil.copy(model_file(family, version), target)
    return target


def start(devices: list[DeviceProcess], *args, **kwargs) -> DeviceProcess:
    device = DeviceProcess(*args, **kwargs)
    devices.append(device)
    return device


def latest_sha(family: Path) -> str:
    return hashlib.sha256(model_file(family, "1.2.0").read_bytes()).hexdigest()


def failed_update(device: DeviceProcess, model: Path) -> str:
    """POST update-latest, which must end failed with the model as it was; the failure's message."""
    before = sha256(model)
    device.api("POST", "update-latest")
    status = device.wait_until_done()
    assert status["stage"] == "failed" and not status["last_result"]["ok"], status
    assert sha256(model) == before
    return status["last_result"]["message"]


# --------------------------------------------------------------------------- updates


def test_update_latest_over_the_api_by_a_two_hop_chain(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    """The API's documents around an update through real processes; one patch, the full file and the other
    update logic run in-process on the in-memory repository (tests/test_updater_inprocess.py)."""
    model = install(family, tmp_path, "1.0.0")
    device = start(devices, tmp_path, server.url, model)
    plan = device.api("POST", "check").json()["data"]
    assert plan["installed"]["version"] == "1.0.0" and plan["latest"] == "1.2.0"
    assert [step["kind"] for step in plan["steps"]] == ["patch", "patch"]
    assert plan["download_bytes"] < plan["full_size"] / 2
    assert device.api("POST", "update-latest").json()["code"] == 200
    status = device.wait_until_done()
    assert status["last_result"]["ok"], status
    assert sha256(model) == latest_sha(family) and status["installed_version"] == "1.2.0"
    assert len(status["backups"]) == 1
    progress = device.api("GET", "progress").json()
    assert progress["data"]["stage"] == "success" and progress["data"]["lorien_stage"] == "idle"  # TOPE's name
    assert progress["data"]["progress"] == 100 and type(progress["data"]["progress"]) is int
    again = device.api("POST", "check").json()["data"]
    assert again["up_to_date"] and again["steps"] == []


def test_failed_health_check_rolls_back(family: Path, server: LiveServer, tmp_path: Path, devices: list) -> None:
    model = install(family, tmp_path, "1.1.0")
    device = start(devices, tmp_path, server.url, model, "--health-check", "false")
    assert "rolled back: health check failed" in failed_update(device, model)


def test_periodic_checks_do_not_redeploy_a_rolled_back_version_until_asked(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    before = sha256(model)
    runs = tmp_path / "health-runs"
    check = tmp_path / "health.sh"
    check.write_text(f"#!/bin/sh\necho run >> {runs}\nexit 1\n")
    check.chmod(0o755)
    device = start(devices, tmp_path, server.url, model, "--health-check", str(check), "--check-interval", "0.3")
    deadline = time.monotonic() + 30
    while not runs.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    status = device.wait_until_done()
    assert "rolled back: health check failed" in status["last_result"]["message"], status
    time.sleep(2.0)  # several check intervals: the periodic check must not stop the service and deploy again
    assert runs.read_text().count("run") == 1 and sha256(model) == before
    assert device.status()["last_result"]["message"].startswith("rolled back")
    while device.api("POST", "update-latest").json()["code"] == 409:  # an operator asks explicitly (409 while
        time.sleep(0.05)  # a periodic check happens to run): tried again
    device.wait_until_done()
    assert runs.read_text().count("run") == 2 and sha256(model) == before


def test_manual_rollback_restores_the_previous_model(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    before = sha256(model)
    device = start(devices, tmp_path, server.url, model)
    device.api("POST", "update-latest")
    device.wait_until_done()
    assert sha256(model) == latest_sha(family)
    assert device.api("POST", "rollback").json()["code"] == 200
    status = device.wait_until_done()
    assert status["last_result"]["ok"], status
    assert sha256(model) == before


# --------------------------------------------------------------------------- TOPE API, faults, validation


def test_tope_download_then_update_through_a_faulty_server(family: Path, tmp_path: Path, devices: list) -> None:
    faults = Faults(cut_after=300_000, cuts=2, rotate_etag=False)
    faulty = FaultyServer(family / "repo", faults)
    try:
        model = install(family, tmp_path, "1.0.0")
        target = model_file(family, "1.2.0")
        data = target.read_bytes()
        blob = next((family / "repo" / "blobs").rglob(f"{hashlib.sha256(data).hexdigest()}*"))
        device = start(devices, tmp_path, faulty.url, model)
        body = {
            "version": "1.2.0",
            "package_url": faulty.url + str(blob.relative_to(family / "repo")),
            "package_name": "model-1.2.0.tflite",
            "package_size": len(data),
            "package_md5": hashlib.md5(data).hexdigest(),
        }
        assert device.api("POST", "download", json=body).json()["code"] == 200
        assert device.wait_until_done()["last_result"]["ok"]
        starts = [
            int(r.split("=")[1].rstrip("-")) if r else 0 for p, r, _ in faults.requests if p.startswith("blobs/")
        ]
        assert len(starts) == 3 and starts[0] == 0  # cut twice, resumed twice, never restarted from zero
        assert 300_000 - 65_536 <= starts[1] <= 300_000 and starts[1] + 300_000 - 65_536 <= starts[2]
        assert sha256(model) != latest_sha(family)  # downloaded, not yet installed
        assert device.api("POST", "update", json={"version": "1.2.0"}).json()["code"] == 200
        status = device.wait_until_done()
        assert status["last_result"]["ok"] and sha256(model) == latest_sha(family)
    finally:
        faulty.close()


@pytest.mark.parametrize("fault", ["ignore-range", "rotate-etag"])
def test_update_completes_when_the_server_ignores_range_or_changes_etag(
    family: Path, tmp_path: Path, devices: list, fault: str
) -> None:
    faults = Faults(
        cut_after=500_000, cuts=1, ignore_range=fault == "ignore-range", rotate_etag=fault == "rotate-etag"
    )
    faulty = FaultyServer(family / "repo", faults)
    try:
        model = install(family, tmp_path, None)  # full download: 2 MB, cut once
        device = start(devices, tmp_path, faulty.url, model)
        device.api("POST", "update-latest")
        status = device.wait_until_done()
        assert status["last_result"]["ok"], status
        assert sha256(model) == latest_sha(family)
        blob_requests = [(r, ir) for path, r, ir in faults.requests if path.startswith("blobs/")]
        assert len(blob_requests) == 2 and blob_requests[1][0] is not None  # resumed, then sent whole again
    finally:
        faulty.close()


def test_api_validates_every_field_and_changes_nothing(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    device = start(devices, tmp_path, server.url, model)
    good = {
        "version": "1.2.0",
        "package_url": "http://example.invalid/m",
        "package_name": "m.tflite",
        "package_size": 10,
        "package_md5": "0" * 32,
    }
    cases = {
        "package_md5": {**good, "package_md5": "xyz"},
        "package_url": {**good, "package_url": "file:///etc/passwd"},
        "package_name": {**good, "package_name": "../../etc/passwd"},
        "package_size": {**good, "package_size": -5},
        "version": {**good, "version": 12},
    }
    for field, body in cases.items():
        answer = device.api("POST", "download", json=body)
        assert answer.status_code == 400 and answer.json()["msg"].startswith(field), (field, answer.text)
    assert (
        device.api("POST", "download", data="[1, 2", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    assert device.api("POST", "download", data="x" * 70_000).status_code == 413
    answer = device.api("POST", "update", json={"version": "9.9.9"})
    assert answer.status_code == 409 and "no downloaded package" in answer.json()["msg"]
    assert device.api("GET", "nowhere").status_code == 404
    assert device.status()["history"] == [] and sha256(model) == sha256(model_file(family, "1.1.0"))


def test_token_is_required_for_mutating_requests(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    device = start(devices, tmp_path, server.url, model, "--api-token", "correct-horse")
    assert device.api("POST", "update-latest").status_code == 401
    assert device.api("POST", "update-latest", token="wrong-horse!").status_code == 401
    assert device.api("GET", "status").status_code == 200  # reads stay open
    assert device.api("POST", "check", token="correct-horse").status_code == 200


def test_second_operation_while_busy_gets_409(family: Path, tmp_path: Path, devices: list) -> None:
    faulty = FaultyServer(family / "repo", Faults(delay=2.0))
    try:
        device = start(devices, tmp_path, faulty.url, install(family, tmp_path, "1.1.0"))
        assert device.api("POST", "update-latest").status_code == 200
        busy = device.api("POST", "update-latest")
        assert busy.status_code == 409 and "another operation is running" in busy.json()["msg"]
        assert device.api("GET", "progress").status_code == 200  # the API stays responsive
        assert device.wait_until_done()["last_result"]["ok"]
    finally:
        faulty.close()


# --------------------------------------------------------------------------- crash and heal


@pytest.mark.parametrize(
    ("crash_at", "installed"),
    [
        ("mid-download", None),
        ("after-download", "1.1.0"),
        ("mid-apply", "1.0.0"),
        ("after-backup", "1.1.0"),
        ("after-replace", "1.1.0"),
        ("health-check", "1.1.0"),
    ],
)
def test_sigkill_at_every_stage_then_restart_heals(
    family: Path, server: LiveServer, tmp_path: Path, devices: list, crash_at: str, installed: str | None
) -> None:
    model = install(family, tmp_path, installed)
    old = sha256(model)
    new = latest_sha(family)
    doomed = start(
        devices, tmp_path, server.url, model, "--health-check", "true", env={"LORIEN_TEST_CRASH_AT": crash_at}
    )
    doomed.api("POST", "update-latest")
    assert doomed.wait_for_death() == -9, "".join(doomed.lines)
    assert sha256(model) in (old, new)  # never a partial model
    expected_at_kill = new if crash_at in ("after-replace", "health-check") else old
    assert sha256(model) == expected_at_kill
    healed = start(devices, tmp_path, server.url, model, "--health-check", "true")
    status = healed.wait_until_done()
    assert status["last_result"]["ok"], ("".join(healed.lines), status)
    assert sha256(model) == new
    leftovers = [p.name for p in (tmp_path / "state" / "tmp").iterdir()]
    assert leftovers == [], leftovers


# --------------------------------------------------------------------------- service control, callbacks, logs


def test_service_is_restarted_callbacks_posted_and_logs_written(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    import http.server
    import json
    import threading

    events: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    app = tmp_path / "app.sh"
    app.write_text("#!/bin/sh\ntrap '' TERM\nwhile true; do sleep 0.1; done\n")  # ignores SIGTERM
    app.chmod(0o755)
    config = tmp_path / "device.toml"
    config.write_text(
        f'stop_timeout = 0.5\ncallback_url = "http://127.0.0.1:{receiver.server_address[1]}/events"\n'
        f'[service]\ncommand = ["{app}"]\npid_file = "{tmp_path / "app.pid"}"\n'
    )
    model = install(family, tmp_path, "1.1.0")
    first = subprocess.Popen([str(app)], start_new_session=True)
    (tmp_path / "app.pid").write_text(f"{first.pid}\n")
    try:
        device = start(devices, tmp_path, server.url, model, "--config", str(config), "--check-interval", "0.5")
        status = device.wait_until_done()  # the periodic check starts the update by itself
        deadline = time.monotonic() + 30
        while status["installed_version"] != "1.2.0" and time.monotonic() < deadline:
            time.sleep(0.2)
            status = device.wait_until_done()
        assert status["installed_version"] == "1.2.0", status
        assert first.wait(5) == -9  # ignored SIGTERM, killed after stop_timeout
        new_pid = int((tmp_path / "app.pid").read_text())
        assert new_pid != first.pid and Path(f"/proc/{new_pid}").exists()
        stages = [event["stage"] for event in events]
        assert {"checking", "downloading", "deploying", "idle"} <= set(stages), stages
        assert all(event["channel"] == "stable" and event["device_id"] and "rollout" in event for event in events)
        assert events[-1]["installed"] == "1.2.0", events[-1]  # the same fields as the User-Agent
        log = (tmp_path / "state" / "logs" / "device.log").read_text()
        assert "killed pid" in log and "installed 1.2.0" in log
    finally:
        receiver.shutdown()
        if (tmp_path / "app.pid").exists():
            os.kill(int((tmp_path / "app.pid").read_text()), 9)


def test_service_that_cannot_start_after_replace_gets_the_old_model_back(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    device = start(
        devices,
        tmp_path,
        server.url,
        model,
        "--service-command",
        str(tmp_path / "no-such-program"),
        "--service-pid-file",
        str(tmp_path / "app.pid"),
    )
    assert "cannot start" in failed_update(device, model)


def test_a_device_dying_in_every_health_check_rolls_back(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    old = sha256(model)
    crash = {"LORIEN_TEST_CRASH_AT": "health-check"}
    first = start(devices, tmp_path, server.url, model, "--health-check", "true", env=crash)
    first.api("POST", "update-latest")
    assert first.wait_for_death() == -9
    second = start(devices, tmp_path, server.url, model, "--health-check", "true", env=crash)  # heal retries once
    assert second.wait_for_death() == -9
    third = start(devices, tmp_path, server.url, model, "--health-check", "true")
    status = third.wait_until_done()
    assert status["stage"] == "failed" and "every health check" in status["last_result"]["message"], status
    assert sha256(model) == old
