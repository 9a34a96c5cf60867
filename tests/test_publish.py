"""`lorien publish`: layout, patches from the previous N versions, idempotence, and refusal of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from lorien.publisher.publish import publish
from lorien.repo.engine import apply_patch
from lorien.repo.errors import BadInputError
from lorien.repo.versions import sort_versions, version_name_problem
from tests.support.processes import SMALL_LAYERS, run_lorien


def _manifest(repo: Path, family: str = "classifier") -> dict:
    return json.loads((repo / family / "manifest.json").read_text())


def _tree(repo: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(repo)): (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in repo.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def test_publish_layout_and_content_addressing(published: Path, models_dir: Path) -> None:
    manifest = _manifest(published)
    assert manifest["schema"] == 1 and manifest["family"] == "classifier" and manifest["sequence"] == 1
    assert manifest["latest"] == "1.2.0"
    assert [v["version"] for v in manifest["versions"]] == ["1.0.0", "1.1.0", "1.2.0"]
    for entry in manifest["versions"]:
        data = (published / entry["blob"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] in entry["blob"]
        assert hashlib.md5(data).hexdigest() == entry["md5"]
        assert data == (models_dir / "classifier" / entry["filename"]).read_bytes()
        assert entry["fingerprint"]["format"] == "tflite"
    pairs = [(p["from"], p["to"]) for p in manifest["patches"]]
    assert pairs == [("1.0.0", "1.2.0"), ("1.1.0", "1.2.0")]
    index = json.loads((published / "index.json").read_text())
    assert index == {
        "schema": 1,
        "families": [{"name": "classifier", "latest": "1.2.0", "manifest": "classifier/manifest.json"}],
    }


def test_patches_apply_to_the_published_target(published: Path, tmp_path: Path) -> None:
    manifest = _manifest(published)
    by_version = {v["version"]: v for v in manifest["versions"]}
    for patch in manifest["patches"]:
        assert patch["engine"] == "lorien"
        assert patch["size"] < by_version[patch["to"]]["size"]
        out = tmp_path / f"{patch['id']}.out"
        apply_patch(published / by_version[patch["from"]]["blob"], published / patch["blob"], out)
        assert (
            hashlib.sha256(out.read_bytes()).hexdigest()
            == patch["target_sha256"]
            == by_version[patch["to"]]["sha256"]
        )


def test_republish_without_change_rewrites_nothing(published: Path, models_dir: Path) -> None:
    before = _tree(published)
    raw = (published / "classifier" / "manifest.json").read_bytes()
    report = publish(models_dir, published)
    assert report.ok and not report.index_written
    assert not any(f.manifest_written or f.patches_created or f.new_blobs for f in report.families)
    assert _tree(published) == before
    assert (published / "classifier" / "manifest.json").read_bytes() == raw


def test_new_version_bumps_sequence_keeps_patches_and_honours_keep(published: Path, models_dir: Path) -> None:
    old_patches = {p["id"]: p for p in _manifest(published)["patches"]}
    write_family(
        models_dir / "classifier", ["1.0.0", "1.1.0", "1.2.0", "1.10.0"], layer_sizes=SMALL_LAYERS, seed=3
    )
    report = publish(models_dir, published, keep=2)
    assert report.ok
    manifest = _manifest(published)
    assert manifest["sequence"] == 2 and manifest["latest"] == "1.10.0"  # PEP 440: 1.10.0 > 1.2.0
    new_pairs = [(s, d) for s, d, _ in report.families[0].patches_created]
    assert new_pairs == [("1.1.0", "1.10.0"), ("1.2.0", "1.10.0")]
    ids = {p["id"]: p for p in manifest["patches"]}
    for patch_id, patch in old_patches.items():
        assert ids[patch_id] == patch, "existing patches are kept unchanged"
    assert "classifier_1.0.0_to_1.10.0" not in ids


def test_keep_zero_publishes_no_patches(models_dir: Path, tmp_path: Path) -> None:
    assert publish(models_dir, tmp_path / "repo", keep=0).ok
    assert _manifest(tmp_path / "repo")["patches"] == []


def test_any_file_format_gets_byte_level_patches(tmp_path: Path) -> None:
    family = tmp_path / "models" / "blobs-of-bytes"
    family.mkdir(parents=True)
    base = os.urandom(100_000)
    (family / "v1.bin").write_bytes(base)
    (family / "v2.bin").write_bytes(base[:50_000] + b"changed" + base[50_000:])
    assert publish(tmp_path / "models", tmp_path / "repo").ok
    manifest = _manifest(tmp_path / "repo", "blobs-of-bytes")
    assert manifest["versions"][0]["fingerprint"]["format"] == "unknown"
    assert manifest["patches"][0]["size"] < 2000


def _problem_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_bad_input_gives_one_line_per_problem_and_writes_nothing_for_that_family(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_family(models / "good", ["1.0", "2.0"], layer_sizes=(8, 4), seed=1)
    bad = models / "bad"
    write_family(bad, ["1.0"], layer_sizes=(8, 4), seed=2)
    (bad / "2.0.tflite").write_bytes(b"")  # zero bytes
    (bad / "latest.tflite").write_bytes(b"abcdefgh")  # not a version
    shutil.copy(bad / "1.0.tflite", bad / "1.0.0.onnx")  # same version as 1.0 under PEP 440
    (bad / "3.0.tflite").symlink_to(tmp_path / "nowhere")  # unreadable
    (models / "empty").mkdir()
    (models / "stray.tflite").write_bytes(b"12345")
    result = run_lorien("publish", "--models", models, "--repo", tmp_path / "repo")
    assert result.returncode == 2
    lines = _problem_lines(result)
    assert any("2.0.tflite" in line and "empty (0 bytes)" in line for line in lines)
    assert any("latest.tflite" in line and "not a version name" in line for line in lines)
    assert any("1.0.0.onnx" in line and "1.0.tflite" in line and "also given by" in line for line in lines)
    assert any("3.0.tflite" in line and "not a regular file" in line for line in lines)
    assert any("empty" in line and "no model files" in line for line in lines)
    assert any("stray.tflite" in line and "stray file" in line for line in lines)
    assert len(lines) == 6, lines
    repo = tmp_path / "repo"
    assert not (repo / "bad").exists() and not (repo / "empty").exists()
    assert _manifest(repo, "good")["latest"] == "2.0", "good families are still published"
    assert [f["name"] for f in json.loads((repo / "index.json").read_text())["families"]] == ["good"]


def test_missing_models_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="models directory does not exist"):
        publish(tmp_path / "absent", tmp_path / "repo")
    result = run_lorien("publish", "--models", tmp_path / "absent", "--repo", tmp_path / "repo")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_changed_content_under_a_published_version_is_refused(published: Path, models_dir: Path) -> None:
    manifest_before = (published / "classifier" / "manifest.json").read_bytes()
    target = models_dir / "classifier" / "1.1.0.tflite"
    target.write_bytes(target.read_bytes()[:-8] + b"tampered")
    report = publish(models_dir, published)
    assert not report.ok
    assert any("already published" in p and "new version name" in p for p in report.all_problems())
    assert (published / "classifier" / "manifest.json").read_bytes() == manifest_before


def test_deleted_version_is_withdrawn_with_its_patches(published: Path, models_dir: Path) -> None:
    (models_dir / "classifier" / "1.1.0.tflite").unlink()
    assert publish(models_dir, published).ok
    manifest = _manifest(published)
    assert [v["version"] for v in manifest["versions"]] == ["1.0.0", "1.2.0"]
    assert [p["id"] for p in manifest["patches"]] == ["classifier_1.0.0_to_1.2.0"]


def test_partial_and_hidden_files_are_ignored(published: Path, models_dir: Path) -> None:
    (models_dir / "classifier" / "2.0.0.tflite.part").write_bytes(b"half a model")
    (models_dir / "classifier" / ".2.0.0.tflite.swx").write_bytes(b"editor")
    report = publish(models_dir, published)
    assert report.ok and not report.families[0].manifest_written


def test_version_ordering() -> None:
    assert sort_versions(["1.10", "1.2", "1.9.1", "1.0rc1", "1.0"]) == [
        "1.0rc1",
        "1.0",
        "1.2",
        "1.9.1",
        "1.10",
    ]
    assert sort_versions(["build10", "build9", "build100"]) == ["build9", "build10", "build100"]
    assert sort_versions(["2024-01-05", "2023-12-31", "v3"]) == ["2023-12-31", "2024-01-05", "v3"]
    assert version_name_problem("latest") and version_name_problem("1.0/2") and version_name_problem("-1")
    assert version_name_problem("1.0") is None


def test_second_writer_fails_fast_naming_the_holder(published: Path, models_dir: Path) -> None:
    from lorien.repo.errors import RepositoryLockedError
    from lorien.repo.lock import repository_lock

    with repository_lock(published):
        with pytest.raises(RepositoryLockedError, match=f"pid {os.getpid()}"):
            publish(models_dir, published)
        result = run_lorien("publish", "--models", models_dir, "--repo", published)
        assert result.returncode == 3 and f"pid {os.getpid()}" in result.stderr
