"""What ``lorien publish`` refuses to take from the models directory, and how it ends on a full disk.

- A full file system under the real ``lorien publish``, ``diff`` and ``apply``: exit 5, one line naming the
  path, nothing left behind. Each such test mounts its own 5 MiB tmpfs (root only; outside CI a missing
  capability skips, in CI it fails).
- Backup and editor names (``1.0.0.onnx.bak``) are never versions, and are warned about once per file.
- A structurally incomplete model (a copy that stalled) is a problem for its version, never a version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from lorien.repo.atomic import is_temp_name
from lorien.repo.engine.completeness import incomplete_reason
from tests.support.model_files import mlp_tensors, write_gguf, write_onnx, write_safetensors
from tests.support.processes import SMALL_LAYERS, require, run_lorien

pytestmark = pytest.mark.slow  # a real tmpfs and `lorien` processes


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-fs"
    mount.mkdir()
    tools = shutil.which("mount") and shutil.which("umount")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)] if tools else ["false"],
        capture_output=True,
        text=True,
        check=False,
    )
    require(result.returncode == 0, f"cannot mount a 5 MiB tmpfs (needs root and mount): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def fill(directory: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of ``directory``'s file system (tmpfs counts whole 4 KiB pages)."""
    free = shutil.disk_usage(directory).free
    (directory / "filler").write_bytes(b"\0" * max(0, free - leave))
    assert shutil.disk_usage(directory).free <= leave


def leftovers(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if is_temp_name(path.name) or ".staging" in path.parts]


def assert_one_line_exit_5(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 5, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    write_family(tmp_path / "models" / "cls", ["1.0.0", "1.1.0"], layer_sizes=SMALL_LAYERS, seed=7)
    return tmp_path / "models"


def test_publish_refuses_a_blob_that_cannot_fit_before_copying(small_fs: Path, models: Path) -> None:
    repo = small_fs / "repo"
    repo.mkdir()
    fill(small_fs, leave=64 * 1024)  # less than one model
    result = run_lorien("publish", "--models", models, "--repo", repo)
    assert_one_line_exit_5(result, "bytes needed", "1.0.0.tflite", "No space left on device")
    assert leftovers(small_fs) == []
    assert not (repo / "cls" / "manifest.json").exists()


def test_publish_that_fills_the_disk_mid_write_ends_cleanly(small_fs: Path, models: Path) -> None:
    repo = small_fs / "repo"
    one = models / "cls" / "1.1.0.tflite"
    shutil.move(one, models.parent / one.name)
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    shutil.move(models.parent / one.name, one)
    pages = -(-one.stat().st_size // 4096)
    fill(small_fs, leave=(pages + 1) * 4096)  # the new blob fits; its patch and the manifest do not
    result = run_lorien("publish", "--models", models, "--repo", repo)
    assert_one_line_exit_5(result, str(repo), "No space left on device")
    assert leftovers(small_fs) == []
    (small_fs / "filler").unlink()
    assert run_lorien("inspect", repo, "--verify").returncode == 0  # the repository stayed consistent
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    assert run_lorien("inspect", repo, "--verify").returncode == 0


def test_diff_and_apply_onto_a_full_disk(small_fs: Path, models: Path, tmp_path: Path) -> None:
    old, new = models / "cls" / "1.0.0.tflite", models / "cls" / "1.1.0.tflite"
    patch = tmp_path / "update.lpatch"
    assert run_lorien("diff", old, new, "-o", patch).returncode == 0
    fill(small_fs, leave=0)
    result = run_lorien("diff", old, new, "-o", small_fs / "update.lpatch")
    assert_one_line_exit_5(result, str(small_fs / "update.lpatch"), "No space left on device")
    result = run_lorien("apply", old, patch, "-o", small_fs / "1.1.0.tflite")
    assert_one_line_exit_5(result, str(small_fs / "1.1.0.tflite"), f"{new.stat().st_size} bytes needed")
    assert sorted(os.listdir(small_fs)) == ["filler"]


BACKUP_NAMES = ["1.0.0.tflite.bak", "1.0.0.tflite.orig", "1.0.0.tflite.old", "1.0.0.tflite.rej", "1.1.0.tflite~",
                "#1.1.0.tflite#", "1.1.0.tflite.swp"]  # fmt: skip


def test_backup_and_editor_names_are_ignored_with_one_warning_each(models: Path, tmp_path: Path) -> None:
    family = models / "cls"
    for name in BACKUP_NAMES:
        shutil.copy(family / f"{name.strip('#')[:5]}.tflite", family / name)
    repo = tmp_path / "repo"
    result = run_lorien("publish", "--models", models, "--repo", repo)
    assert result.returncode == 0, result.stderr
    published = json.loads((repo / "cls" / "manifest.json").read_text())
    assert [entry["version"] for entry in published["versions"]] == ["1.0.0", "1.1.0"]
    warnings = [line for line in result.stderr.splitlines() if "backup or editor file" in line]
    assert sorted(line.split("ignoring ")[1].split(":")[0] for line in warnings) == sorted(
        str(family / name) for name in BACKUP_NAMES
    )


def whole_models(directory: Path) -> list[Path]:
    directory.mkdir()
    tensors = mlp_tensors(5)
    write_safetensors(directory / "m.safetensors", tensors)
    write_gguf(directory / "m.gguf", tensors)
    write_onnx(directory / "m.onnx", tensors)
    write_family(directory, ["m"], layer_sizes=SMALL_LAYERS, seed=5)
    with zipfile.ZipFile(directory / "m.pt", "w") as archive:
        archive.writestr("data.pkl", os.urandom(20_000))
    return sorted(directory.iterdir())


def test_a_file_cut_anywhere_is_incomplete_and_a_whole_one_is_not(tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    cut.mkdir()
    wholes = whole_models(tmp_path / "whole")
    assert [model.suffix for model in wholes] == [".gguf", ".onnx", ".pt", ".safetensors", ".tflite"]
    for model in wholes:
        assert incomplete_reason(model) is None, model
        data = model.read_bytes()
        for length in range(16, len(data), len(data) // 97):
            (cut / model.name).write_bytes(data[:length])
            assert incomplete_reason(cut / model.name), (model.name, length)


def test_unknown_or_foreign_bytes_are_not_judged(tmp_path: Path) -> None:
    for name in ("a.tflite", "a.onnx", "a.safetensors", "a.gguf", "a.pt", "a.bin"):
        (tmp_path / name).write_bytes(b"\x00" * 64 + os.urandom(4096))
        assert incomplete_reason(tmp_path / name) is None


def test_publish_reports_an_incomplete_file_as_a_problem_of_its_version(models: Path, tmp_path: Path) -> None:
    half = models / "cls" / "1.1.0.tflite"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    repo = tmp_path / "repo"
    result = run_lorien("publish", "--models", models, "--repo", repo)
    assert result.returncode == 2
    assert f"{half}: incomplete TFLite file" in result.stderr and "waiting for the rest" in result.stderr
    assert not (repo / "cls" / "manifest.json").exists()


def test_a_disk_that_fills_during_apply_is_one_clean_error(
    small_fs: Path, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lorien.repo import atomic
    from lorien.repo.engine import apply_patch, create_patch
    from lorien.repo.errors import LocalIOError

    old, new = models / "cls" / "1.0.0.tflite", models / "cls" / "1.1.0.tflite"
    patch = tmp_path / "update.lpatch"
    create_patch(old, new, patch)
    fill(small_fs, leave=8192)
    monkeypatch.setattr(
        atomic, "free_bytes", lambda directory: 1 << 40
    )  # the space check passes, the disk is full
    with pytest.raises(
        LocalIOError, match=rf"{new.stat().st_size} bytes needed.*{small_fs / 'out.tflite'}.*No space"
    ):
        apply_patch(old, patch, small_fs / "out.tflite")
    assert sorted(os.listdir(small_fs)) == ["filler"]


def test_gc_on_a_full_disk_is_one_clean_error(small_fs: Path, models: Path) -> None:
    from lorien.publisher.gc import collect_garbage
    from lorien.repo.errors import LocalIOError

    repo = small_fs / "repo"
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    (models / "cls" / "1.0.0.tflite").unlink()  # withdrawn: its blob and patch wait for the grace period
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    fill(small_fs, leave=0)
    # in-process: `lorien gc` takes the writer lock first, whose pid write (repo/lock.py) fails on a full disk too
    with pytest.raises(LocalIOError, match=rf"{repo / '.gc.json'}: No space left on device"):
        collect_garbage(repo, grace=3600)
    assert leftovers(small_fs) == []
