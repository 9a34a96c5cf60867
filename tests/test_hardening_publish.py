"""A full file system under the real ``lorien publish``, ``diff`` and ``apply``: exit 5, one line naming the path,
nothing left behind. Each test mounts its own 5 MiB tmpfs (root only; outside CI a missing capability skips)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from lorien.repo.atomic import is_temp_name
from tests.support.processes import SMALL_LAYERS, require, run_lorien


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
