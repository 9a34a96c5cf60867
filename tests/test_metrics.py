"""Prometheus metrics: the device's ``GET /metrics`` (real ``lorien device`` + ``lorien serve`` processes, and
in-process on the in-memory repository for the counters a real server cannot provoke cheaply: retries), the
requests and published versions of ``lorien serve``'s ``/metrics``, and ``lorien watch --metrics-port``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from lorien.device.config import check_environment, load_config
from lorien.device.updater import Updater
from lorien.modelgen import write_family
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.device_harness import DeviceProcess
from tests.support.processes import SMALL_LAYERS, LiveServer, require, serving
from tests.support.simulator import Fault, RepositorySimulator


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics-family")
    publish_two_hop_family(root, SMALL_LAYERS)
    return root


def _model(family: Path, tmp_path: Path, version: str) -> Path:
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file(family, version), model)
    return model


# --------------------------------------------------------------------------- in-process (fast)


def _updater(family: Path, tmp_path: Path, sim: RepositorySimulator) -> Updater:
    settings = {
        "repo_url": sim.BASE,
        "family": "cls",
        "model_path": str(_model(family, tmp_path, "1.0.0")),
        "state_dir": str(tmp_path / "state"),
        "insecure_allow_unsigned": True,
    }
    config = load_config(None, settings)
    check_environment(config)
    return Updater(config, transport=sim)


def test_each_updater_has_its_own_registry_and_counts_retries(family: Path, tmp_path: Path) -> None:
    sim = RepositorySimulator.from_directory(family / "repo")
    updater = _updater(family, tmp_path / "a", sim)
    idle = _updater(family, tmp_path / "b", RepositorySimulator.from_directory(family / "repo"))
    blob = updater.check().steps[0].blob
    sim.inject(blob, Fault(cut=50_000))
    updater.update_latest()
    updater.wait(60)
    text = updater.metrics.exposition().decode()
    assert value(text, "lorien_download_retries_total") == 1
    assert value(text, "lorien_updates_total", result="success") == 1
    assert value(text, "lorien_stage", stage="idle") == 1 and value(text, "lorien_stage", stage="deploying") == 0
    assert value(text, "lorien_last_check_timestamp_seconds") > 0
    assert value(text, "lorien_last_success_timestamp_seconds") > 0
    other = idle.metrics.exposition().decode()  # a second updater in the same process counts nothing of it
    assert value(other, "lorien_updates_total", result="success") == 0
    assert value(other, "lorien_download_retries_total") == 0
    assert value(other, "lorien_last_success_timestamp_seconds") == 0


# --------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def server(family: Path) -> Iterator[LiveServer]:
    with serving(family / "repo") as live:
        yield live


def _device(devices: list, tmp_path: Path, url: str, model: Path, *extra: str) -> DeviceProcess:
    device = DeviceProcess(tmp_path, url, model, *extra)
    devices.append(device)
    return device


def _device_metrics(device: DeviceProcess) -> str:
    answer = requests.get(device.url.replace("/api/v1.0/", "/metrics"), timeout=30)  # GET: no token
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain"), answer.text
    return answer.text


@pytest.mark.slow
def test_device_metrics_after_an_update(family: Path, server: LiveServer, tmp_path: Path, devices: list) -> None:
    device = _device(devices, tmp_path, server.url, _model(family, tmp_path, "1.0.0"))
    device.api("POST", "update-latest")
    status = device.wait_until_done()
    assert status["installed_version"] == "1.2.0", status
    text = _device_metrics(device)
    installed = {"family": "cls", "version": "1.2.0", "sha256": status["installed_sha256"]}
    assert value(text, "lorien_installed_info", **installed) == 1
    assert value(text, "lorien_updates_total", result="success") == 1
    assert value(text, "lorien_updates_total", result="rolled_back") == 0
    assert 0 < value(text, "lorien_download_bytes_total") < value(text, "lorien_full_bytes_total")
    assert value(text, "lorien_stage", stage="idle") == 1
    foreign = requests.get(device.url.replace("/api/v1.0/", "/metrics"), headers={"Host": "evil.example"})
    assert foreign.status_code == 403  # the API's Host rule holds for /metrics too


@pytest.mark.slow
def test_device_metrics_count_a_rollback(family: Path, server: LiveServer, tmp_path: Path, devices: list) -> None:
    device = _device(devices, tmp_path, server.url, _model(family, tmp_path, "1.1.0"), "--health-check", "false")
    device.api("POST", "update-latest")
    assert device.wait_until_done()["stage"] == "failed"
    text = _device_metrics(device)
    assert value(text, "lorien_rollbacks_total") == 1
    assert value(text, "lorien_updates_total", result="rolled_back") == 1
    assert value(text, "lorien_updates_total", result="success") == 0
    assert value(
        text, "lorien_installed_info", family="cls", version="1.1.0", sha256=device.status()["installed_sha256"]
    )
    assert value(text, "lorien_stage", stage="failed") == 1


@pytest.mark.slow
def test_serve_metrics_count_requests_and_read_the_manifests(family: Path, server: LiveServer) -> None:
    manifest = requests.get(server.url + "cls/manifest.json", timeout=30).json()
    patch = manifest["patches"][0]
    assert requests.get(server.url + patch["blob"], timeout=30).status_code == 200
    assert requests.get(server.url + "no/such/file", timeout=30).status_code == 404
    text = requests.get(server.url + "metrics", timeout=30).text
    assert value(text, "lorien_serve_requests_total", route="/<family>/manifest.json", status="200") >= 1
    assert value(text, "lorien_serve_requests_total", route="/blobs/<patch>", status="200") >= 1
    assert value(text, "lorien_serve_requests_total", route="/<file>", status="404") >= 1
    assert value(text, "lorien_serve_blob_bytes_total", kind="patch") >= patch["size"]
    assert value(text, "lorien_published_versions", family="cls") == 3
    assert value(text, "lorien_published_latest_info", family="cls", version="1.2.0") == 1


@pytest.mark.slow
def test_watch_metrics_after_a_publish(tmp_path: Path) -> None:
    require(sys.platform == "linux", "inotify")
    models, repo = tmp_path / "models", tmp_path / "repo"
    write_family(models / "det", ["1.0.0"], layer_sizes=SMALL_LAYERS, seed=5)
    command = [sys.executable, "-m", "lorien.cli", "watch", "--models", str(models), "--repo", str(repo)]
    process = subprocess.Popen(
        [*command, "--settle", "0.2", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        for line in process.stdout:
            if match := re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", line):
                url = match.group(1)
            if "published family=det version=1.0.0" in line:
                break
        assert url, "watch did not announce its metrics address"
        write_family(tmp_path / "incoming", ["1.1.0"], layer_sizes=SMALL_LAYERS, seed=5)
        (tmp_path / "incoming" / "1.1.0.tflite").rename(models / "det" / "1.1.0.tflite")
        for line in process.stdout:
            if "published family=det version=1.1.0" in line:
                break
        text = requests.get(url, timeout=30).text
        assert value(text, "lorien_watch_published_versions_total", family="det") == 2
        assert value(text, "lorien_watch_patch_bytes_total", family="det") > 0
        assert value(text, "lorien_watch_publish_seconds_count") >= 2
        assert value(text, "lorien_watch_last_publish_timestamp_seconds") > time.time() - 3600
        assert value(text, "lorien_watch_problems") == 0
    finally:
        process.terminate()
        process.wait(30)
