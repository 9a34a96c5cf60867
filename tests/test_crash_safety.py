"""SIGKILL `lorien publish` at every write step and at random instants: the repository stays consistent."""

from __future__ import annotations

import json
import os
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


def _verify(repo: Path) -> subprocess.CompletedProcess:
    return run_lorien("inspect", repo, "--verify")


@pytest.fixture
def two_generations(tmp_path: Path) -> tuple[Path, Path]:
    """A published repository with versions 1.0-1.1, and a models dir that adds 1.2 and 1.3."""
    models = tmp_path / "models"
    write_family(models / "net", ["1.0", "1.1"], layer_sizes=(128, 256, 128, 10), seed=9)
    repo = tmp_path / "repo"
    assert run_lorien("publish", "--models", models, "--repo", repo).returncode == 0
    write_family(models / "net", ["1.0", "1.1", "1.2", "1.3"], layer_sizes=(128, 256, 128, 10), seed=9)
    return models, repo


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_write_step_leaves_a_consistent_repository(two_generations, point: str) -> None:
    models, repo = two_generations
    before = (repo / "net" / "manifest.json").read_bytes()
    killed = run_lorien("publish", "--models", models, "--repo", repo, env={"LORIEN_TEST_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    verified = _verify(repo)
    assert verified.returncode == 0, verified.stdout
    if point in ("blob", "patch", "manifest"):
        assert (repo / "net" / "manifest.json").read_bytes() == before, "manifest must not change before its write"
    rerun = run_lorien("publish", "--models", models, "--repo", repo)
    assert rerun.returncode == 0, rerun.stderr
    final = _verify(repo)
    assert final.returncode == 0 and "warning" not in final.stdout
    assert not [p for p in repo.rglob("*") if ".tmp-" in p.name or ".staging" in p.parts]


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


def test_sigkill_between_a_manifest_and_its_signature_heals_on_the_next_signed_publish(tmp_path: Path) -> None:
    from lorien.repo.signing import generate_keypair

    key, public, _keyid = generate_keypair(tmp_path / "keys")
    models = tmp_path / "models"
    write_family(models / "net", ["1.0", "1.1"], layer_sizes=(128, 256, 128, 10), seed=9)
    repo = tmp_path / "repo"
    assert run_lorien("publish", "--models", models, "--repo", repo, "--sign-key", key).returncode == 0
    write_family(models / "net", ["1.0", "1.1", "1.2"], layer_sizes=(128, 256, 128, 10), seed=9)
    killed = run_lorien(
        "publish", "--models", models, "--repo", repo, "--sign-key", key, env={"LORIEN_TEST_CRASH_AT": "signature"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale = run_lorien("inspect", repo, "--key", public)  # new manifest, old signature: devices refuse it
    assert stale.returncode == 1 and "signature is for other bytes" in stale.stdout
    rerun = run_lorien("publish", "--models", models, "--repo", repo, "--sign-key", key)
    assert rerun.returncode == 0, rerun.stderr
    healed = run_lorien("inspect", repo, "--verify", "--key", public)
    assert healed.returncode == 0, healed.stdout
    assert not list(repo.rglob(".*.signing"))


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
