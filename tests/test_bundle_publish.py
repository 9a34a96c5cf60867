"""Publishing bundle versions (a version that is a directory): manifest fields, per-file patches with
companion-aware tensors, the Mallorn-compatible zip package, idempotence and refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import jsonschema
import pytest

from lorien.publisher.publish import publish
from lorien.repo.bundle import bundle_digest, describe_directory
from lorien.repo.engine import apply_patch
from lorien.repo.errors import ManifestError
from lorien.repo.manifest import parse_manifest
from tests.support.bundles import BUNDLE_FILES, write_bundle_family, write_bundle_version

SCHEMA = Path(__file__).resolve().parent.parent / "repo" / "schemas" / "manifest.schema.json"


@pytest.fixture(scope="module")
def bundle_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bundle")
    models, repo = base / "models", base / "repo"
    write_bundle_family(models)
    report = publish(models, repo, keep=2)
    assert report.ok, report.all_problems()
    return models, repo


def test_manifest_lists_bundle_files_and_validates(bundle_repo: tuple[Path, Path]) -> None:
    models, repo = bundle_repo
    raw = (repo / "bundle" / "manifest.json").read_bytes()
    jsonschema.validate(json.loads(raw), json.loads(SCHEMA.read_text()))
    manifest = parse_manifest(raw)
    assert [v.version for v in manifest.versions] == ["1.0.0", "1.1.0", "1.2.0"] and manifest.patches == ()
    for version in manifest.versions:
        assert version.bundle is not None
        assert [f.path for f in version.bundle.files] == BUNDLE_FILES
        assert version.bundle.digest == bundle_digest(describe_directory(models / "bundle" / version.version))
        for entry in version.bundle.files:
            data = (repo / entry.blob).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry.sha256 and len(data) == entry.size
            model_file = entry.path.startswith("model.")
            assert (entry.fingerprint is not None) == model_file, entry.path
        # Mallorn-compatible fields: the version's zip package, holding exactly the bundle's files
        package = (repo / version.blob).read_bytes()
        assert (
            version.filename == f"{version.version}.zip" and hashlib.sha256(package).hexdigest() == version.sha256
        )
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            assert sorted(archive.namelist()) == BUNDLE_FILES
            for entry in version.bundle.files:
                assert hashlib.sha256(archive.read(entry.path)).hexdigest() == entry.sha256


def test_file_patches_cover_changed_files_only_and_apply(bundle_repo: tuple[Path, Path], tmp_path: Path) -> None:
    _, repo = bundle_repo
    manifest = parse_manifest((repo / "bundle" / "manifest.json").read_bytes())
    by_pair: dict[tuple[str, str], set[str]] = {}
    for patch in manifest.file_patches:
        by_pair.setdefault((patch.source, patch.target), set()).add(patch.path)
    # 1.1.0 → 1.2.0: weights and labels changed; 1.0.0 → 1.2.0 likewise; the tokenizer never changed
    assert by_pair == {
        ("1.0.0", "1.2.0"): {"labels.txt", "model.onnx.data"},
        ("1.1.0", "1.2.0"): {"labels.txt", "model.onnx.data"},
    }
    for patch in manifest.file_patches:
        source = manifest.version(patch.source).bundle.file(patch.path)
        apply_patch(repo / source.blob, repo / patch.blob, tmp_path / "out")
        assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == patch.target_sha256
        if patch.path == "model.onnx.data":
            assert patch.size < 0.6 * source.size  # float16 weights, dense 1e-3 fine-tune, typed by the .onnx


def test_republish_changes_nothing_and_changed_content_is_refused(bundle_repo: tuple[Path, Path]) -> None:
    models, repo = bundle_repo
    before = (repo / "bundle" / "manifest.json").read_bytes()
    report = publish(models, repo, keep=2)
    assert report.ok and not any(f.manifest_written for f in report.families)
    assert (repo / "bundle" / "manifest.json").read_bytes() == before
    labels = models / "bundle" / "1.1.0" / "labels.txt"
    original = labels.read_bytes()
    labels.write_bytes(b"changed\n")
    try:
        report = publish(models, repo, keep=2)
        assert any("already published with other content" in p for p in report.all_problems())
        assert (repo / "bundle" / "manifest.json").read_bytes() == before
    finally:
        labels.write_bytes(original)


def test_bad_bundle_directories_are_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_bundle_version(models / "fam" / "1.0.0", 0)
    os.symlink("/etc/passwd", models / "fam" / "1.0.0" / "passwd")
    report = publish(models, tmp_path / "repo")
    assert any("symbolic link" in p for p in report.all_problems())
    (models / "fam" / "1.0.0" / "passwd").unlink()
    (models / "fam" / "1.0.0" / "bad name.txt").write_text("x")
    report = publish(models, tmp_path / "repo")
    assert any("characters outside" in p for p in report.all_problems())
    assert not (tmp_path / "repo" / "fam" / "manifest.json").exists()


def _tampered(repo: Path, edit) -> bytes:
    document = json.loads((repo / "bundle" / "manifest.json").read_text())
    edit(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["versions"][0]["bundle"]["files"][0].update(path="../x"), "forbidden component"),
        (lambda d: d["versions"][0]["bundle"]["files"][0].update(size=1), "digest"),
        (lambda d: d["versions"][0]["bundle"].update(digest="0" * 64), "digest"),
        (
            lambda d: d["versions"][0]["bundle"]["files"].append(dict(d["versions"][0]["bundle"]["files"][0])),
            "twice",
        ),
        (lambda d: d["file_patches"][0].update(source_sha256="0" * 64), "disagrees"),
        (lambda d: d["file_patches"][0].update(path="tokenizer/vocab.json"), "disagrees"),
    ],
)
def test_tampered_bundle_fields_are_refused(bundle_repo: tuple[Path, Path], edit, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(_tampered(bundle_repo[1], edit))


def test_manifest_without_bundle_fields_is_unchanged(tmp_path: Path) -> None:
    from lorien.modelgen import write_family
    from tests.support.processes import SMALL_LAYERS

    models = tmp_path / "models"
    write_family(models / "plain", ["1.0.0", "1.1.0"], layer_sizes=SMALL_LAYERS)
    publish(models, tmp_path / "repo")
    document = json.loads((tmp_path / "repo" / "plain" / "manifest.json").read_text())
    assert "file_patches" not in document and all("bundle" not in v for v in document["versions"])


def test_inspect_shows_bundles_and_verifies_their_files(bundle_repo: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from tests.support.processes import run_lorien

    _, published = bundle_repo
    repo = tmp_path / "repo"
    shutil.copytree(published, repo)
    shown = run_lorien("inspect", repo, "--verify")
    assert shown.returncode == 0, shown.stdout
    assert "bundle 1.2.0: 4 files" in shown.stdout and "bundle update 1.1.0 → 1.2.0" in shown.stdout
    document = json.loads(run_lorien("inspect", repo, "--json").stdout)
    updates = document["families"][0]["bundle_updates"]
    assert {(u["from"], u["to"]) for u in updates} == {("1.0.0", "1.2.0"), ("1.1.0", "1.2.0")}
    for update in updates:
        assert {f["path"]: f["how"] for f in update["files"]}["tokenizer/vocab.json"] == "keep"
        assert update["bytes"] == sum(f["bytes"] for f in update["files"]) < update["full"]
    manifest = parse_manifest((repo / "bundle" / "manifest.json").read_bytes())
    damaged = repo / manifest.latest_entry().bundle.file("labels.txt").blob
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    broken = run_lorien("inspect", repo, "--verify")
    assert broken.returncode != 0 and "file labels.txt" in broken.stdout


def test_family_page_shows_bundle_files_and_per_file_costs(bundle_repo: tuple[Path, Path]) -> None:
    import re

    _, repo = bundle_repo
    page = (repo / "bundle" / "index.html").read_text()
    assert page.count('class="bundle-files"') == 3 and page.count('class="bundle-costs"') == 2
    assert "update 1.1.0 → 1.2.0" in page and "<code>tokenizer/vocab.json</code></td><td>keep</td>" in page
    for link in re.findall(r'href="\.\./(blobs/[^"]+)"', page):
        assert (repo / link).is_file(), link


def test_gc_keeps_bundle_files_and_file_patches(bundle_repo: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from lorien.publisher.gc import collect_garbage

    _, published = bundle_repo
    repo = tmp_path / "repo"
    shutil.copytree(published, repo)
    manifest = parse_manifest((repo / "bundle" / "manifest.json").read_bytes())
    stray = repo / "blobs" / "sha256" / "00" / ("0" * 64 + ".patch")
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"unreferenced")
    collect_garbage(repo, grace=0, now=10**10)
    collect_garbage(repo, grace=0, now=10**10 + 1)
    assert not stray.exists()
    referenced = {file.blob for file in manifest.blob_files()}
    for blob in referenced:
        assert (repo / blob).is_file(), blob
    assert all(f.blob in referenced for f in manifest.file_patches)
    assert all(f.blob in referenced for v in manifest.versions for f in v.bundle.files)
