"""The device's update logic in-process, on the in-memory repository: the real ``Updater`` (check, plan, resumable
download, MD5 + SHA-256, patch apply, deploy with backup) against ``RepositorySimulator.from_directory`` of a
repository ``publish`` wrote. No server, no ``lorien device`` process: each test takes well under a second.

What needs real processes stays in ``tests/test_device.py``: the HTTP API, SIGKILL at every stage and the heal
after it, real faulty servers, service control, health checks and callbacks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorien.device.updater import Updater
from lorien.repo.download import DownloadPolicy
from lorien.repo.errors import ManifestError
from lorien.repo.hashing import sha256_file
from lorien.repo.manifest import parse_manifest
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.inprocess import inprocess_updater, update_and_wait
from tests.support.processes import SMALL_LAYERS
from tests.support.simulator import Fault, RepositorySimulator

MANIFEST = "cls/manifest.json"


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three versions; the repository has only 1.0.0→1.1.0 and 1.1.0→1.2.0 (a two-hop chain)."""
    root = tmp_path_factory.mktemp("inprocess-family")
    publish_two_hop_family(root, SMALL_LAYERS)
    return root


@pytest.fixture
def sim(family: Path) -> RepositorySimulator:
    return RepositorySimulator.from_directory(family / "repo")


def _updater(family: Path, tmp_path: Path, sim: RepositorySimulator, installed: str | None) -> Updater:
    """A device whose model path holds ``installed`` (None: a model this repository never published)."""
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    if installed is None:
        model.write_bytes(b"TFL3 a model this repository never published" * 1000)
    else:
        shutil.copy(model_file(family, installed), model)
    return inprocess_updater(sim, "cls", model, tmp_path / "state")


def _latest(family: Path) -> str:
    return sha256_file(model_file(family, "1.2.0"))


def _rewrite_manifest(sim: RepositorySimulator, change) -> None:
    document = json.loads(sim.files[MANIFEST])
    change(document)
    sim.add(MANIFEST, json.dumps(document).encode())


@pytest.mark.parametrize(
    ("installed", "expected_steps"), [("1.1.0", ["patch"]), ("1.0.0", ["patch", "patch"]), (None, ["compressed"])]
)
def test_update_latest_by_one_patch_a_two_hop_chain_or_the_full_file(
    family: Path, tmp_path: Path, sim: RepositorySimulator, installed: str | None, expected_steps: list[str]
) -> None:
    updater = _updater(family, tmp_path, sim, installed)
    plan = updater.check()
    assert plan.installed.version == installed and plan.latest == "1.2.0"
    assert [step.kind for step in plan.steps] == expected_steps
    if installed is not None:
        assert plan.download_bytes < plan.full_size / 2
    else:  # the model compressed on its own (docs/repository-format.md: versions[].compressed)
        assert plan.download_bytes < 0.95 * plan.full_size
    status = update_and_wait(updater)
    assert status["last_result"]["ok"], status
    assert status["installed_sha256"] == _latest(family) and status["installed_version"] == "1.2.0"
    assert len(status["backups"]) == 1
    entry = status["history"][0]  # from → to, bytes downloaded vs full, how long
    assert (entry["kind"], entry["from_version"], entry["version"], entry["result"]) == (
        "update-latest",
        installed,
        "1.2.0",
        "ok",
    )
    assert (entry["download_bytes"], entry["full_size"]) == (plan.download_bytes, plan.full_size)
    assert entry["duration"] >= 0
    assert sim.blob_requests() == [step.blob for step in plan.steps]  # each blob fetched once, nothing else
    progress = updater.status_view().progress
    assert progress["stage"] == "success" and progress["lorien_stage"] == "idle" and progress["progress"] == 100
    again = updater.check()
    assert again.up_to_date and not again.steps


def test_an_up_to_date_device_downloads_nothing(family: Path, tmp_path: Path, sim: RepositorySimulator) -> None:
    updater = _updater(family, tmp_path, sim, "1.2.0")
    status = update_and_wait(updater)
    assert status["last_result"]["ok"] and "already up to date" in status["last_result"]["message"]
    assert sim.blob_requests() == [] and status["backups"] == []
    entry = status["history"][0]  # no operation began: kind None (TOPE's /progress keeps the last one)
    assert entry["kind"] is None and entry["from_version"] == entry["version"] == "1.2.0"
    assert entry["download_bytes"] == 0 and entry["full_size"] > 0 and entry["duration"] >= 0


def test_a_manifest_for_another_family_is_refused(family: Path, tmp_path: Path, sim: RepositorySimulator) -> None:
    _rewrite_manifest(sim, lambda document: document.update(family="other"))
    updater = _updater(family, tmp_path, sim, "1.1.0")
    with pytest.raises(ManifestError, match="is for family 'other', this device runs 'cls'"):
        updater.check()
    status = update_and_wait(updater)
    assert not status["last_result"]["ok"] and "is for family 'other'" in status["last_result"]["message"]
    assert status["trust"]["last_refusal"] is not None
    assert sim.blob_requests() == [] and status["installed_sha256"] == sha256_file(
        family / "all" / "cls" / "1.1.0.tflite"
    )


def test_a_cut_blob_is_resumed_with_a_range_request(
    family: Path, tmp_path: Path, sim: RepositorySimulator
) -> None:
    updater = _updater(family, tmp_path, sim, None)
    blob = updater.check().steps[0].blob
    sim.inject(blob, Fault(cut=50_000))
    status = update_and_wait(updater)
    assert status["last_result"]["ok"], status
    assert status["installed_sha256"] == _latest(family)
    ranges = [seen.headers.get("Range") for seen in sim.requests if seen.path == blob]
    assert ranges == [None, "bytes=50000-"]  # resumed where the cut left it, not restarted


def test_a_blob_that_never_matches_its_digests_is_retried_then_fails(
    family: Path, tmp_path: Path, sim: RepositorySimulator
) -> None:
    updater = _updater(family, tmp_path, sim, "1.1.0")
    before = sha256_file(updater.config.model_path)
    blob = updater.check().steps[0].blob
    sim.inject(blob, Fault(corrupt=True), forever=True)
    status = update_and_wait(updater)
    assert not status["last_result"]["ok"] and "md5" in status["last_result"]["message"].lower(), status
    assert sim.blob_requests().count(blob) == DownloadPolicy().verify_attempts  # whole downloads, then no more
    assert sha256_file(updater.config.model_path) == before and status["backups"] == []
    assert list(updater.config.tmp_dir.iterdir()) == []  # the bad download is not kept


def test_a_blob_corrupted_once_is_fetched_again(family: Path, tmp_path: Path, sim: RepositorySimulator) -> None:
    updater = _updater(family, tmp_path, sim, "1.1.0")
    blob = updater.check().steps[0].blob
    sim.inject(blob, Fault(corrupt=True))
    status = update_and_wait(updater)
    assert status["last_result"]["ok"] and status["installed_sha256"] == _latest(family)
    assert sim.blob_requests().count(blob) == 2


def test_patches_of_an_unknown_engine_fall_back_to_the_full_file(
    family: Path, tmp_path: Path, sim: RepositorySimulator
) -> None:
    def future_engine(document: dict) -> None:
        for patch in document["patches"]:
            patch["engine"] = "future-engine"
        for version in document["versions"]:
            if "compressed" in version:
                version["compressed"]["engine"] = "future-engine"

    _rewrite_manifest(sim, future_engine)
    assert {patch.engine for patch in parse_manifest(sim.files[MANIFEST]).patches} == {"future-engine"}
    updater = _updater(family, tmp_path, sim, "1.1.0")
    plan = updater.check()
    assert [step.kind for step in plan.steps] == ["full"]
    status = update_and_wait(updater)
    assert status["last_result"]["ok"] and status["installed_sha256"] == _latest(family)
    assert sim.blob_requests() == [plan.steps[0].blob]
