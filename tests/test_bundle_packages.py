"""TOPE packages on a bundle family: ``/download`` + ``/update`` of a zip deploys its files as one bundle through
the link; hostile zips are refused with a clear error and nothing changes; in signed mode the package must be a
signed bundle version (by bundle digest, however it was zipped)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from lorien.device.bundles import linked_dir, versions_dir
from lorien.device.config import check_environment, load_config
from lorien.device.updater import Updater
from lorien.publisher.options import PublishOptions
from lorien.publisher.publish import publish
from lorien.repo.bundle import bundle_digest, describe_directory
from lorien.repo.signing import generate_keypair, load_signing_key
from tests.support.bundles import write_bundle_family
from tests.support.simulator import RepositorySimulator


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle-packages")
    write_bundle_family(root / "models", "bun", versions=2)
    key, _public, _ = generate_keypair(root / "keys")
    options = PublishOptions(keep=1, sign_keys=(load_signing_key(key),))
    assert publish(root / "models", root / "repo", keep=1, options=options).ok
    return root


def _updater(family: Path, tmp_path: Path, signed: bool) -> tuple[Updater, RepositorySimulator, Path]:
    sim = RepositorySimulator.from_directory(family / "repo")
    link = tmp_path / "app" / "model"
    link.parent.mkdir(parents=True, exist_ok=True)
    root = family / "repo" / "metadata" / "1.root.json"  # the TUF root a signed publish writes
    trust = {"trusted_root": str(root)} if signed else {"insecure_allow_unsigned": True}
    config = load_config(
        None,
        {
            "repo_url": sim.BASE,
            "family": "bun",
            "model_path": str(link),
            "state_dir": str(tmp_path / "state"),
            "bundle": True,
            **trust,
        },
    )
    check_environment(config)
    return Updater(config, transport=sim), sim, link


def _zip(directory: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """The version's files zipped by someone else (deflated, another order): the same bundle digest."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*"), reverse=True):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
        for name, data in (extra or {}).items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _install(updater: Updater, sim: RepositorySimulator, data: bytes, name: str, version: str) -> dict:
    sim.add(f"packages/{name}", data)
    updater.download_package(version, sim.url(f"packages/{name}"), name, len(data), hashlib.md5(data).hexdigest())
    updater.wait(60)
    updater.install_package(version)
    updater.wait(60)
    return updater.status()


def test_zip_package_deploys_as_one_bundle(family: Path, tmp_path: Path) -> None:
    updater, sim, link = _updater(family, tmp_path, signed=False)
    status = _install(updater, sim, _zip(family / "models" / "bun" / "1.0.0"), "update.zip", "1.0.0")
    assert status["last_result"]["ok"], status["last_result"]
    source = bundle_digest(describe_directory(family / "models" / "bun" / "1.0.0"))
    assert bundle_digest(describe_directory(link)) == source and status["installed_version"] == "1.0.0"


@pytest.mark.parametrize(
    "hostile, message",
    [
        ({"../../evil.txt": b"x"}, "forbidden component"),
        ({"/tmp/evil.txt": b"x"}, "absolute"),
        ({"LABELS.TXT": b"x"}, "same file"),
        ({"zeros.bin": bytes(4 << 20)}, "zip bomb"),
    ],
)
def test_hostile_zip_is_refused_and_nothing_changes(family: Path, tmp_path: Path, hostile, message: str) -> None:
    updater, sim, link = _updater(family, tmp_path, signed=False)
    assert _install(updater, sim, _zip(family / "models" / "bun" / "1.0.0"), "update.zip", "1.0.0")["last_result"][
        "ok"
    ]
    before = linked_dir(link)
    status = _install(updater, sim, _zip(family / "models" / "bun" / "1.1.0", hostile), "update.zip", "1.1.0")
    assert status["last_result"]["ok"] is False and message in status["last_result"]["message"]
    assert linked_dir(link) == before and status["installed_version"] == "1.0.0"
    assert sorted(p.name for p in versions_dir(link).iterdir()) == [before.name]  # no staging left behind
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_signed_mode_needs_a_signed_bundle(family: Path, tmp_path: Path) -> None:
    updater, sim, _ = _updater(family, tmp_path, signed=True)
    status = _install(updater, sim, _zip(family / "models" / "bun" / "1.1.0"), "update.zip", "whatever")
    assert status["last_result"]["ok"], status["last_result"]
    assert status["installed_version"] == "1.1.0"  # the signed manifest names it, not the client's label
    forged = _zip(family / "models" / "bun" / "1.1.0", {"extra.txt": b"not published"})
    status = _install(updater, sim, forged, "update.zip", "1.2.0")
    assert (
        status["last_result"]["ok"] is False
        and "not a bundle version in the signed manifest" in status["last_result"]["message"]
    )
    assert status["installed_version"] == "1.1.0"


def test_a_single_file_package_is_refused_on_a_bundle_family(family: Path, tmp_path: Path) -> None:
    updater, sim, _ = _updater(family, tmp_path, signed=False)
    status = _install(updater, sim, b"TFL3" * 100, "model.tflite", "2.0.0")
    assert status["last_result"]["ok"] is False and "not a .zip package" in status["last_result"]["message"]


def test_signed_update_latest_fetches_only_signed_bundle_files(family: Path, tmp_path: Path) -> None:
    updater, sim, link = _updater(family, tmp_path, signed=True)
    updater.update_latest()
    updater.wait(60)
    status = updater.status()
    assert status["last_result"]["ok"] and status["installed_version"] == "1.1.0", status["last_result"]
    assert bundle_digest(describe_directory(link)) == bundle_digest(
        describe_directory(family / "models" / "bun" / "1.1.0")
    )
    fetched = {seen.path for seen in sim.requests if seen.path.startswith("blobs/")}
    assert len(fetched) == 4  # every file of the bundle, each a signed TUF target (checked before downloading)
