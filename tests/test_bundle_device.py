"""Bundle families on the device, in-process against the in-memory repository: the first install creates the
link, an update downloads only changed files (per-file patches), keeps unchanged ones, switches the link as one,
rolls back by switching it back, keeps ``keep_backups`` previous versions, and a failed health check leaves the
old version linked."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from lorien.device.bundles import linked_dir, versions_dir
from lorien.device.updater import Updater
from lorien.publisher.publish import publish
from lorien.repo.bundle import bundle_digest, describe_directory
from lorien.repo.manifest import parse_manifest
from tests.support.bundles import BUNDLE_FILES, write_bundle_family
from tests.support.inprocess import inprocess_updater, update_and_wait
from tests.support.simulator import RepositorySimulator


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``repo11``: bundles 1.0.0 and 1.1.0; ``repo12``: the same, then 1.2.0 published (weights and labels)."""
    root = tmp_path_factory.mktemp("bundle-device")
    write_bundle_family(root / "models", "bun", versions=3)
    (root / "models" / "bun" / "1.2.0").rename(root / "later-1.2.0")
    assert publish(root / "models", root / "repo11", keep=2).ok
    shutil.copytree(root / "repo11", root / "repo12")
    (root / "later-1.2.0").rename(root / "models" / "bun" / "1.2.0")
    assert publish(root / "models", root / "repo12", keep=2).ok
    return root


def _updater(tmp_path: Path, repo: Path, **extra) -> tuple[Updater, RepositorySimulator, Path]:
    sim = RepositorySimulator.from_directory(repo)
    link = tmp_path / "app" / "model"
    link.parent.mkdir(parents=True, exist_ok=True)
    return inprocess_updater(sim, "bun", link, tmp_path / "state", bundle=True, **extra), sim, link


def _blob_bytes(sim: RepositorySimulator) -> int:
    return sum(len(sim.files[seen.path]) for seen in sim.requests if seen.path.startswith("blobs/"))


def _digest(directory: Path) -> str:
    return bundle_digest(describe_directory(directory))


def test_install_update_rollback(family: Path, tmp_path: Path) -> None:
    updater, sim, link = _updater(tmp_path, family / "repo11")
    status = update_and_wait(updater)
    assert status["installed_version"] == "1.1.0", status["last_result"]
    assert (
        link.is_symlink()
        and sorted(str(p.relative_to(link.resolve())) for p in link.resolve().rglob("*") if p.is_file())
        == BUNDLE_FILES
    )
    assert _digest(link) == _digest(family / "models" / "bun" / "1.1.0")
    first_install = _blob_bytes(sim)
    assert [f["path"] for f in status["bundle"]["files"]] == BUNDLE_FILES
    assert status["bundle"]["linked"].startswith("1.1.0-") and status["installed_sha256"] == _digest(link)

    # 1.2.0 published: only model.onnx.data and labels.txt changed; the device downloads just those
    manifest = parse_manifest((family / "repo12" / "bun" / "manifest.json").read_bytes())
    updater2, sim2, _ = _updater(tmp_path, family / "repo12")
    status = update_and_wait(updater2)
    assert status["installed_version"] == "1.2.0", status["last_result"]
    assert _digest(link) == manifest.version("1.2.0").bundle.digest
    downloaded = _blob_bytes(sim2)
    patches = {p.path: p.size for p in manifest.file_patches if p.source == "1.1.0"}
    assert set(patches) == {"labels.txt", "model.onnx.data"}
    target = manifest.version("1.2.0").bundle
    # per changed file the cheaper of its patch and the file itself (a tiny labels.txt is cheaper whole)
    assert downloaded == sum(min(size, target.file(path).size) for path, size in patches.items())
    full = manifest.version("1.2.0").bundle.total_size
    assert downloaded < 0.6 * full, (downloaded, full)
    print(
        f"bundle update 1.1.0→1.2.0 downloaded {downloaded} bytes of {full} ({100 * downloaded / full:.1f} %); "
        f"first install {first_install}"
    )
    # the previous version is kept as a directory and is what rollback links again
    assert [p.name.split("-")[0] for p in updater2._deployer.backups()] == ["1.1.0"]
    updater2.rollback()
    updater2.wait(60)
    assert updater2.status()["installed_version"] == "1.1.0"
    assert _digest(link) == _digest(family / "models" / "bun" / "1.1.0")
    assert [p.name.split("-")[0] for p in updater2._deployer.backups()] == ["1.2.0"]


def test_failed_health_check_switches_back(family: Path, tmp_path: Path) -> None:
    updater, _, link = _updater(tmp_path, family / "repo11")
    assert update_and_wait(updater)["installed_version"] == "1.1.0"
    before = link.resolve()
    check = [sys.executable, "-c", "import sys; sys.exit(1)"]
    updater2, _, _ = _updater(tmp_path, family / "repo12", health_check=check)
    status = update_and_wait(updater2)
    assert status["last_result"]["ok"] is False and "health check failed" in status["last_result"]["message"]
    assert link.resolve() == before and status["installed_version"] == "1.1.0"
    assert _digest(link) == _digest(family / "models" / "bun" / "1.1.0")
    assert [p.name.split("-")[0] for p in versions_dir(link).iterdir()] == ["1.1.0"]  # the failed one is gone
    assert status["backups"] == []  # so a manual rollback can never link it
    # the periodic check does not deploy the rolled-back bundle again
    updater2.update_latest(retry_rejected=False)
    updater2.wait(60)
    assert "rolled back here" in updater2.status_view().progress["message"]


def test_keep_backups_counts_versions(family: Path, tmp_path: Path) -> None:
    updater, _, link = _updater(tmp_path, family / "repo11", keep_backups=1)
    assert update_and_wait(updater)["installed_version"] == "1.1.0"
    updater2, _, _ = _updater(tmp_path, family / "repo12", keep_backups=1)
    assert update_and_wait(updater2)["installed_version"] == "1.2.0"
    kept = sorted(p.name.split("-")[0] for p in versions_dir(link).iterdir())
    assert kept == ["1.1.0", "1.2.0"]  # the linked version and one backup
    assert linked_dir(link) is not None and linked_dir(link).name.startswith("1.2.0-")


def test_model_path_that_is_a_file_is_refused(family: Path, tmp_path: Path) -> None:
    from lorien.repo.errors import BadInputError

    updater, _, link = _updater(tmp_path, family / "repo11")
    link.write_bytes(b"a plain file")
    with pytest.raises(BadInputError, match="must be a symbolic link"):  # at start-up …
        _updater(tmp_path, family / "repo11")
    status = update_and_wait(updater)  # … and by a running device, before it changes anything
    assert status["last_result"]["ok"] is False and "symbolic link" in status["last_result"]["message"]
    assert link.read_bytes() == b"a plain file"


def test_disk_space_is_checked_for_the_whole_bundle_first(
    family: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collections

    updater, _, link = _updater(tmp_path, family / "repo11")
    assert update_and_wait(updater)["installed_version"] == "1.1.0"
    before = link.resolve()
    latest = parse_manifest((family / "repo12" / "bun" / "manifest.json").read_bytes()).latest_entry()
    usage = collections.namedtuple("usage", "total used free")
    real = shutil.disk_usage
    # free space for the downloads (a few KB) but not for a whole bundle: refused before anything is fetched
    monkeypatch.setattr(
        "lorien.device.bundles.shutil.disk_usage",
        lambda path: usage(1 << 40, 0, latest.bundle.total_size) if "model" in str(path) else real(path),
    )
    updater2, sim2, _ = _updater(tmp_path, family / "repo12")
    status = update_and_wait(updater2)
    assert (
        status["last_result"]["ok"] is False
        and "not enough free space for the bundle" in status["last_result"]["message"]
    )
    assert link.resolve() == before and not [s for s in sim2.requests if s.path.startswith("blobs/")]
