"""`lorien device` as a drop-in for the TOPE device updater: a client written only from TOPE's reference shapes
(tests/seed_clients/tope_client.py, strict: integer progress, TOPE's stage names) against a real `lorien device`
subprocess and a real `lorien serve` holding the package."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.seed_clients.mallorn_client import ShapeError, parse
from tests.seed_clients.tope_client import Progress, TopeClient
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.processes import LiveServer, serving

pytestmark = pytest.mark.slow  # real lorien device processes


@pytest.fixture
def server(published: Path) -> Iterator[LiveServer]:
    with serving(published) as live:
        yield live


def _package(server: LiveServer, models_dir: Path, version: str) -> dict:
    """The download request for ``version``'s model, as the repository serves it (its blob)."""
    data = (models_dir / "classifier" / f"{version}.tflite").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blob = next((server.repo / "blobs").rglob(f"{digest}*"))
    return {
        "version": version,
        "url": server.url + str(blob.relative_to(server.repo)),
        "name": f"classifier-{version}.tflite",
        "size": len(data),
        "md5": hashlib.md5(data).hexdigest(),
    }


def _start(models_dir: Path, server: LiveServer, tmp_path: Path, devices: list, *extra: str) -> DeviceProcess:
    """A `lorien device` for the classifier family, running 1.0.0."""
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir()
    model.write_bytes((models_dir / "classifier" / "1.0.0.tflite").read_bytes())
    started = DeviceProcess(tmp_path, server.url, model, *extra, family="classifier")
    devices.append(started)
    return started


@pytest.fixture
def device(models_dir: Path, server: LiveServer, tmp_path: Path, devices: list) -> DeviceProcess:
    return _start(models_dir, server, tmp_path, devices)


def _client(device: DeviceProcess) -> TopeClient:
    token = device.state_dir / "api_token"  # a device with a token: the operator gives it to the TOPE client
    return TopeClient(device.url.removesuffix("/api/v1.0/"), token.read_text().strip() if token.exists() else None)


def test_download_then_update_never_started_success_and_failure_are_told_apart(
    device: DeviceProcess, server: LiveServer, models_dir: Path
) -> None:
    client = _client(device)
    before = sha256(device.model)
    never = client.progress()
    assert (never.stage, never.progress, never.error) == ("idle", 0, None)

    bad_md5 = {**_package(server, models_dir, "1.2.0"), "md5": "0" * 32}
    assert client.download(**bad_md5).code == 200
    failed = client.poll()[-1]
    assert failed.stage == "failed" and "MD5" in (failed.error or ""), failed

    package = _package(server, models_dir, "1.2.0")
    answer = client.download(**package)
    assert (answer.code, answer.msg) == (200, "success")
    seen = client.poll()
    assert all(p.stage in ("downloading", "toInstall") for p in seen), seen  # never the old "failed"
    assert (seen[-1].stage, seen[-1].progress, seen[-1].error) == ("toInstall", 100, None)
    assert all(p.progress < 100 for p in seen[:-1])  # an integer, floored: 100 only when done
    assert sha256(device.model) == before  # downloaded, not installed

    answer = client.update("1.2.0")
    assert (answer.code, answer.msg) == (200, "success")
    seen = client.poll(until=("success", "failed"))
    assert all(p.stage in ("installing", "success") for p in seen), seen
    assert (seen[-1].stage, seen[-1].progress, seen[-1].error) == ("success", 100, None)
    assert device.model.read_bytes() == (models_dir / "classifier" / "1.2.0.tflite").read_bytes()
    assert all(p.progress < 100 for p in seen[:-1])


def test_bad_requests_answer_a_code_and_change_nothing(
    device: DeviceProcess, server: LiveServer, models_dir: Path
) -> None:
    client = _client(device)
    package = _package(server, models_dir, "1.2.0")
    body = {"version": package["version"], "package_url": package["url"], "package_name": package["name"],
            "package_size": package["size"]}  # fmt: skip
    assert client.post_raw("download", body).code == 400  # package_md5 is mandatory: no way to skip it
    assert client.post_raw("download", {**body, "package_md5": "xyz"}).code == 400
    assert client.post_raw("download", {**body, "package_md5": "0" * 32, "package_size": "10"}).code == 400
    assert client.update("1.2.0").code == 409  # nothing downloaded
    assert client.progress().stage == "idle"


def test_a_package_shorter_than_its_declared_size_fails_soon(
    device: DeviceProcess, server: LiveServer, models_dir: Path
) -> None:
    """The server's Content-Length (then its 416 `bytes */N`) proves the file shorter than package_size: the
    download fails with a size error at once instead of being retried for the hour of the retry budget."""
    client = _client(device)
    package = _package(server, models_dir, "1.2.0")
    assert client.download(**{**package, "size": package["size"] + 10}).code == 200
    seen = client.poll(until=("failed", "toInstall"), timeout=15)
    assert seen[-1].stage == "failed" and "size" in (seen[-1].error or ""), seen[-1]
    assert sha256(device.model) == sha256(models_dir / "classifier" / "1.0.0.tflite")


def test_a_restarted_device_still_says_the_package_is_ready_to_install(
    device: DeviceProcess, server: LiveServer, models_dir: Path, tmp_path: Path, devices: list
) -> None:
    client = _client(device)
    assert client.download(**_package(server, models_dir, "1.1.0")).code == 200
    assert client.poll()[-1].stage == "toInstall"
    device.stop()
    again = DeviceProcess(tmp_path, server.url, device.model, family="classifier")
    devices.append(again)
    restarted = _client(again).progress()
    assert (restarted.stage, restarted.progress) == ("toInstall", 100)  # state.json keeps it across restarts


def test_the_client_rejects_a_float_percent() -> None:
    with pytest.raises(ShapeError):
        parse(Progress, {"stage": "downloading", "progress": 10.1, "message": "", "error": None})
    with pytest.raises(ShapeError):
        parse(Progress, {"stage": "checking", "progress": 10, "message": "", "error": None}).check()


def test_an_install_that_fails_its_health_check_ends_failed_with_the_old_model(
    models_dir: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    device = _start(models_dir, server, tmp_path, devices, "--health-check", "false")
    before = sha256(device.model)
    client = _client(device)
    assert client.download(**_package(server, models_dir, "1.2.0")).code == 200
    assert client.poll()[-1].stage == "toInstall"
    assert client.update("1.2.0").code == 200
    seen = client.poll(until=("success", "failed"))
    assert all(p.stage in ("installing", "failed") for p in seen), seen
    assert seen[-1].stage == "failed" and "health check" in (seen[-1].error or ""), seen[-1]
    assert sha256(device.model) == before
