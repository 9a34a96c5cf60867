"""SIGKILL `lorien publish` at every write step (the TUF metadata's too) and at random instants: the repository
stays consistent — for a TUF client, the previous signed state until the next publish completes the new one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from tests.support.processes import run_lorien

pytestmark = pytest.mark.slow  # real `lorien publish` processes killed with SIGKILL

CRASH_POINTS = ["blob", "patch", "manifest", "html", "index"]
TUF_CRASH_POINTS = ["tuf-targets", "tuf-snapshot", "tuf-timestamp"]  # signed repositories only


def _verify(repo: Path) -> subprocess.CompletedProcess:
    """inspect --verify; for a signed repository from its first root, as a device installed with it would."""
    root = repo / "metadata" / "1.root.json"
    return run_lorien("inspect", repo, "--verify", *(("--root", root) if root.exists() else ()))


def _two_generations(kind: str, tmp_path: Path) -> tuple[Path, Path, tuple]:
    """A published repository with versions 1.0-1.1, a models dir that adds 1.2 and 1.3, and the signing flags."""
    from lorien.repo.signing import generate_keypair

    signing: tuple = ()
    if kind == "signed":
        signing = ("--sign-key", generate_keypair(tmp_path / "keys")[0])
    models = tmp_path / "models"
    write_family(models / "net", ["1.0", "1.1"], layer_sizes=(128, 256, 128, 10), seed=9)
    repo = tmp_path / "repo"
    assert run_lorien("publish", "--models", models, "--repo", repo, *signing).returncode == 0
    write_family(models / "net", ["1.0", "1.1", "1.2", "1.3"], layer_sizes=(128, 256, 128, 10), seed=9)
    return models, repo, signing


@pytest.mark.parametrize(
    ("kind", "point"),
    [("unsigned", point) for point in CRASH_POINTS]
    + [("signed", point) for point in CRASH_POINTS + TUF_CRASH_POINTS],
)
def test_sigkill_at_each_write_step_leaves_a_consistent_repository(tmp_path: Path, kind: str, point: str) -> None:
    models, repo, signing = _two_generations(kind, tmp_path)
    before = (repo / "net" / "manifest.json").read_bytes()
    killed = run_lorien(
        "publish", "--models", models, "--repo", repo, *signing, env={"LORIEN_TEST_CRASH_AT": point}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    verified = _verify(repo)
    assert verified.returncode == 0, verified.stdout
    if point in ("blob", "patch", "manifest"):
        assert (repo / "net" / "manifest.json").read_bytes() == before, "manifest must not change before its write"
    if signing and point != "tuf-timestamp":  # a TUF client still sees the previous complete state: two versions
        rows = re.findall(r"^\s*\*?(\d+\.\d+)\s", verified.stdout, re.MULTILINE)  # version rows, not sizes
        assert "1.1" in rows and "1.3" not in rows, verified.stdout
    rerun = run_lorien("publish", "--models", models, "--repo", repo, *signing)
    assert rerun.returncode == 0, rerun.stderr
    final = _verify(repo)
    assert final.returncode == 0 and "warning" not in final.stdout, final.stdout
    assert "1.3" in final.stdout
    assert not [p for p in repo.rglob("*") if ".tmp-" in p.name or ".staging" in p.parts]
    assert not list(repo.rglob(".*.signing"))


def test_sigkill_at_random_instants_then_converge(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_family(models / "big", ["1", "2", "3", "4"], layer_sizes=(512, 1024, 1024, 10), seed=4)  # ≈ 6 MB each
    repo = tmp_path / "repo"
    kills = 0
    for delay in (0.3, 0.6, 0.9, 1.2, 1.8):
        process = subprocess.Popen(
            [sys.executable, "-m", "lorien.cli", "publish", "--models", str(models), "--repo", str(repo)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        if (repo / "index.json").exists():
            assert _verify(repo).returncode == 0
    assert kills >= 1, "publish finished before any kill: the test did not exercise a crash"
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    final = _verify(repo)
    assert final.returncode == 0, final.stdout
    manifest = json.loads((repo / "big" / "manifest.json").read_text())
    assert [v["version"] for v in manifest["versions"]] == ["1", "2", "3", "4"] and len(manifest["patches"]) == 3


def test_sigkill_while_installing_a_new_root_leaves_the_repository_usable(tmp_path: Path) -> None:
    from lorien.repo.signing import generate_keypair

    key = generate_keypair(tmp_path / "keys")[0]
    new_public = generate_keypair(tmp_path / "keys", "new")[1]
    models, repo = tmp_path / "models", tmp_path / "repo"
    write_family(models / "net", ["1.0", "1.1"], layer_sizes=(128, 256, 128, 10), seed=9)
    assert run_lorien("publish", "--models", models, "--repo", repo, "--sign-key", key).returncode == 0
    killed = run_lorien(
        "trust", "add-key", "--repo", repo, "targets", new_public, "--sign-key", key,
        env={"LORIEN_TEST_CRASH_AT": "tuf-root"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (repo / "metadata" / "2.root.json").exists()  # installed; the root.json copy for people is not yet
    verified = _verify(repo)
    assert verified.returncode == 0 and "root v2" in verified.stdout, verified.stdout
    rerun = run_lorien("publish", "--models", models, "--repo", repo, "--sign-key", key)
    assert rerun.returncode == 0, rerun.stderr
    shown = run_lorien("trust", "show", "--repo", repo)
    assert "root       v2" in shown.stdout and "threshold 1 of 2" in shown.stdout, shown.stdout


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_while_publishing_a_bundle_leaves_a_consistent_repository(tmp_path: Path, point: str) -> None:
    """The same for a bundle family: file blobs, the zip package and per-file patches come before the manifest
    that names them (``inspect --verify`` re-hashes every file blob and file patch)."""
    import shutil

    from tests.support.bundles import write_bundle_family

    write_bundle_family(tmp_path / "all", "bun", versions=3)
    models, repo = tmp_path / "models", tmp_path / "repo"
    (models / "bun").mkdir(parents=True)
    shutil.copytree(tmp_path / "all" / "bun" / "1.0.0", models / "bun" / "1.0.0")
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    before = (repo / "bun" / "manifest.json").read_bytes()
    for version in ("1.1.0", "1.2.0"):
        shutil.copytree(tmp_path / "all" / "bun" / version, models / "bun" / version)
    killed = run_lorien("publish", "--models", models, "--repo", repo, env={"LORIEN_TEST_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _verify(repo).returncode == 0
    if point in ("blob", "patch", "manifest"):
        assert (repo / "bun" / "manifest.json").read_bytes() == before
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    final = _verify(repo)
    assert (
        final.returncode == 0 and "warning" not in final.stdout and "bundle update 1.1.0 → 1.2.0" in final.stdout
    )
    assert not [p for p in repo.rglob("*") if ".tmp-" in p.name or ".staging" in p.parts]
