"""Compressed full downloads on the device, in-process (the real ``Updater`` on the in-memory repository): a
device with no usable version plans the model compressed on its own by its compressed size, installs it
decoded and verified, and when that blob fails (never verifies, 404, decodes to something else) takes the raw
model instead; when everything fails nothing is deployed. The plan's choice among patch chains, raw and
compressed full is checked on manifests directly. A real-process test is in ``tests/test_device.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lorien.device.plan import Installed, cheapest_plan
from lorien.device.updater import Updater
from lorien.repo.download import DownloadPolicy
from lorien.repo.hashing import sha256_file
from lorien.repo.manifest import parse_manifest
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.inprocess import inprocess_updater, update_and_wait
from tests.support.processes import SMALL_LAYERS
from tests.support.simulator import Fault, RepositorySimulator

MANIFEST = "cls/manifest.json"


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compressed-family")
    publish_two_hop_family(root, SMALL_LAYERS)
    return root


@pytest.fixture
def sim(family: Path) -> RepositorySimulator:
    return RepositorySimulator.from_directory(family / "repo")


def _new_device(tmp_path: Path, sim: RepositorySimulator) -> Updater:
    """A device with no model at all."""
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    return inprocess_updater(sim, "cls", model, tmp_path / "state")


def _latest(sim: RepositorySimulator):
    manifest = parse_manifest(sim.files[MANIFEST])
    return manifest.latest_entry()


def test_a_new_device_installs_the_compressed_model(
    family: Path, tmp_path: Path, sim: RepositorySimulator
) -> None:
    latest = _latest(sim)
    assert latest.compressed is not None and latest.compressed.size < 0.95 * latest.size
    updater = _new_device(tmp_path, sim)
    plan = updater.check()
    assert [step.kind for step in plan.steps] == ["compressed"]
    assert plan.download_bytes == latest.compressed.size and plan.full_size == latest.size
    assert plan.to_dict()["saving_percent"] > 5  # what /check shows
    status = update_and_wait(updater)
    assert status["last_result"]["ok"], status
    assert status["installed_sha256"] == latest.sha256 == sha256_file(model_file(family, "1.2.0"))
    assert sim.blob_requests() == [latest.compressed.blob]  # the raw blob is never fetched
    assert status["history"][0]["download_bytes"] == latest.compressed.size
    assert list(updater.config.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("fault", ["corrupt", "missing"])
def test_a_compressed_blob_that_fails_falls_back_to_the_raw_model(
    tmp_path: Path, sim: RepositorySimulator, fault: str
) -> None:
    latest = _latest(sim)
    assert latest.compressed is not None
    if fault == "corrupt":
        sim.inject(latest.compressed.blob, Fault(corrupt=True), forever=True)
    else:
        del sim.files[latest.compressed.blob]
    updater = _new_device(tmp_path, sim)
    status = update_and_wait(updater)
    assert status["last_result"]["ok"], status
    assert status["installed_sha256"] == latest.sha256
    tries = DownloadPolicy().verify_attempts if fault == "corrupt" else 1
    assert sim.blob_requests() == [latest.compressed.blob] * tries + [latest.blob]
    assert status["history"][0]["download_bytes"] == latest.size


def _swap_compressed(sim: RepositorySimulator, family: Path, tmp_path: Path) -> None:
    """The latest version's compressed entry points at a well-formed compressed blob of another model."""
    from lorien.repo.engine.full import compress_model
    from lorien.repo.hashing import digest_file

    other = tmp_path / "other.compressed"
    compress_model(model_file(family, "1.1.0"), other)
    digests = digest_file(other)
    path = f"blobs/sha256/{digests.sha256[:2]}/{digests.sha256}.compressed"
    sim.add(path, other.read_bytes())
    document = json.loads(sim.files[MANIFEST])
    entry = next(v for v in document["versions"] if v["version"] == document["latest"])
    entry["compressed"].update(blob=path, size=digests.size, sha256=digests.sha256, md5=digests.md5)
    sim.add(MANIFEST, json.dumps(document).encode())


def test_a_compressed_blob_decoding_to_another_model_is_refused_and_the_raw_model_taken(
    family: Path, tmp_path: Path, sim: RepositorySimulator
) -> None:
    _swap_compressed(sim, family, tmp_path)
    latest = _latest(sim)
    updater = _new_device(tmp_path, sim)
    status = update_and_wait(updater)
    assert status["last_result"]["ok"], status
    assert status["installed_sha256"] == latest.sha256
    assert sim.blob_requests() == [latest.compressed.blob, latest.blob]


def test_when_the_raw_model_fails_too_nothing_is_deployed(tmp_path: Path, sim: RepositorySimulator) -> None:
    latest = _latest(sim)
    sim.inject(latest.compressed.blob, Fault(corrupt=True), forever=True)
    sim.inject(latest.blob, Fault(corrupt=True), forever=True)
    updater = _new_device(tmp_path, sim)
    status = update_and_wait(updater)
    assert not status["last_result"]["ok"]
    assert not updater.config.model_path.exists() and status["backups"] == []
    assert list(updater.config.tmp_dir.iterdir()) == []


def test_plan_takes_the_cheapest_of_chain_raw_and_compressed(sim: RepositorySimulator) -> None:
    manifest = parse_manifest(sim.files[MANIFEST])
    latest = manifest.latest_entry()
    assert latest.compressed is not None
    old = manifest.version("1.1.0")
    known = Installed(old.version, old.sha256, old.size, None)
    assert [s.kind for s in cheapest_plan(manifest, known).steps] == ["patch"]  # the patch is smaller still
    unknown = Installed(None, None, 0, None)
    assert [s.kind for s in cheapest_plan(manifest, unknown).steps] == ["compressed"]
    patch = manifest.patch("1.1.0", "1.2.0")
    assert patch is not None
    dearer = replace(patch, size=latest.compressed.size + 1)  # a chain costlier than the compressed model
    costly = replace(manifest, patches=tuple(dearer if p is patch else p for p in manifest.patches))
    assert [s.kind for s in cheapest_plan(costly, known).steps] == ["compressed"]
    without = replace(manifest, versions=tuple(replace(v, compressed=None) for v in manifest.versions))
    assert [s.kind for s in cheapest_plan(without, unknown).steps] == ["full"]  # an older manifest
    useless = replace(latest, compressed=replace(latest.compressed, size=latest.size))
    bigger = replace(manifest, versions=tuple(useless if v is latest else v for v in manifest.versions))
    assert [s.kind for s in cheapest_plan(bigger, unknown).steps] == ["full"]


def test_an_old_manifest_without_the_field_still_parses_and_round_trips(sim: RepositorySimulator) -> None:
    document = json.loads(sim.files[MANIFEST])
    for version in document["versions"]:
        version.pop("compressed", None)
    manifest = parse_manifest(json.dumps(document).encode())
    assert all(v.compressed is None for v in manifest.versions)
    assert "compressed" not in json.loads(manifest.to_bytes())["versions"][0]
    with_field = parse_manifest(sim.files[MANIFEST])
    assert parse_manifest(with_field.to_bytes()) == with_field


def test_a_compressed_blob_path_must_be_its_content_address(sim: RepositorySimulator) -> None:
    from lorien.repo.errors import ManifestError

    document = json.loads(sim.files[MANIFEST])
    entry = next(v for v in document["versions"] if "compressed" in v)
    entry["compressed"]["blob"] = "blobs/sha256/00/" + "0" * 64 + ".compressed"
    with pytest.raises(ManifestError, match=r"compressed\.blob"):
        parse_manifest(json.dumps(document).encode())
