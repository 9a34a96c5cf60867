"""Compressed full downloads through real processes: a real ``lorien device`` with no model installs the latest
version from its compressed blob (served by the tests' HTTP server, which records every request), and, when
the server sends a corrupted compressed blob, refuses it, takes the raw model instead and deploys only that
verified model. The plan choice and the other failure cases run in-process (tests/test_compressed_updates.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorien.repo.manifest import VersionEntry, parse_manifest
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.faulty_server import FaultyServer
from tests.support.processes import SMALL_LAYERS, run_lorien

pytestmark = pytest.mark.slow  # real `lorien device` processes


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compressed-device-family")
    publish_two_hop_family(root, SMALL_LAYERS)
    return root


def _latest(repo: Path) -> VersionEntry:
    return parse_manifest((repo / "cls" / "manifest.json").read_bytes()).latest_entry()


def _blob_requests(server: FaultyServer) -> list[str]:
    return [path for path, _range, _if_range in server.faults.requests if path.startswith("blobs/")]


def _new_device(tmp_path: Path, url: str, devices: list) -> DeviceProcess:
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    device = DeviceProcess(tmp_path, url, model)
    devices.append(device)
    return device


def test_a_device_with_no_model_installs_the_compressed_blob(family: Path, tmp_path: Path, devices: list) -> None:
    latest = _latest(family / "repo")
    assert latest.compressed is not None
    server = FaultyServer(family / "repo")
    try:
        device = _new_device(tmp_path, server.url, devices)
        plan = device.api("POST", "check").json()["data"]  # /check shows the compressed bytes
        assert [step["kind"] for step in plan["steps"]] == ["compressed"]
        assert plan["download_bytes"] == latest.compressed.size < plan["full_size"] == latest.size
        device.api("POST", "update-latest")
        status = device.wait_until_done()
        assert status["last_result"]["ok"], status
        assert sha256(device.model) == latest.sha256 == sha256(model_file(family, "1.2.0"))
        assert _blob_requests(server) == [latest.compressed.blob]
    finally:
        server.close()


def test_a_corrupted_compressed_blob_is_refused_and_the_raw_model_installed(
    family: Path, tmp_path: Path, devices: list
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(family / "repo", repo)
    latest = _latest(repo)
    assert latest.compressed is not None
    blob = repo / latest.compressed.blob
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the hostile server's copy: same size, other bytes
    blob.write_bytes(bytes(data))
    server = FaultyServer(repo)
    try:
        device = _new_device(tmp_path, server.url, devices)
        device.api("POST", "update-latest")
        status = device.wait_until_done()
        assert status["last_result"]["ok"], status
        assert sha256(device.model) == latest.sha256  # the verified raw model, nothing from the bad blob
        requests = _blob_requests(server)
        assert requests[-1] == latest.blob and set(requests[:-1]) == {latest.compressed.blob}
        assert status["history"][0]["download_bytes"] == latest.size
        assert any("compressed 1.2.0 failed" in line for line in device.lines)
    finally:
        server.close()


@pytest.mark.parametrize("corrupt", [False, True])
def test_a_signed_repository_serves_the_compressed_blob_as_a_tuf_target(
    family: Path, tmp_path: Path, devices: list, corrupt: bool
) -> None:
    """With TUF (``--trusted-root``) the compressed blob is a signed target like every blob; when its bytes are
    bad the raw model, also a signed target, is taken."""
    keys = tmp_path / "keys"
    assert run_lorien("keygen", "--out", keys).returncode == 0
    repo = tmp_path / "repo"
    published = run_lorien(
        "publish", "--models", family / "models", "--repo", repo, "--sign-key", keys / "lorien.key"
    )
    assert published.returncode == 0, published.stderr
    latest = _latest(repo)
    assert latest.compressed is not None
    if corrupt:
        blob = repo / latest.compressed.blob
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.unlink()  # hard-linked to its hash-prefixed copy: replace the file, do not edit the shared inode
        blob.write_bytes(bytes(data))
    root = tmp_path / "root.json"
    shutil.copy(repo / "metadata" / "1.root.json", root)
    server = FaultyServer(repo)
    try:
        model = tmp_path / "app" / "model.tflite"
        model.parent.mkdir(parents=True)
        device = DeviceProcess(tmp_path, server.url, model, "--trusted-root", str(root))
        devices.append(device)
        device.api("POST", "update-latest")
        status = device.wait_until_done()
        assert status["last_result"]["ok"], status
        assert sha256(model) == latest.sha256
        requests = _blob_requests(server)
        expected = [latest.compressed.blob] if not corrupt else [latest.compressed.blob, latest.blob]
        assert [path for i, path in enumerate(requests) if i == 0 or path != requests[i - 1]] == expected
    finally:
        server.close()
