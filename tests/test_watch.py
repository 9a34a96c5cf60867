"""`lorien watch` with real filesystem events (inotify through watchdog, no mocks) and real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from tests.support.processes import SMALL_LAYERS, require, run_lorien

pytestmark = pytest.mark.slow  # real `lorien watch` processes on inotify

SETTLE = "1.0"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("watch-sources")
    return write_family(root / "cls", [f"1.{i}.0" for i in range(7)], layer_sizes=SMALL_LAYERS, seed=21)


def test_inotify_is_what_watchdog_uses_here() -> None:
    from watchdog.observers import Observer

    require(Observer.__name__ == "InotifyObserver", f"watchdog falls back to {Observer.__name__}, not inotify")


class WatchProcess:
    def __init__(self, models: Path, repo: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorien.cli",
                "watch",
                "--models",
                str(models),
                "--repo",
                str(repo),
                "--settle",
                SETTLE,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for_line(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: any(text in line for line in self.lines), timeout, f"no line with {text!r}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)


def wait_until(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def manifest(repo: Path) -> dict:
    try:
        return json.loads((repo / "cls" / "manifest.json").read_text())
    except (FileNotFoundError, ValueError):
        return {"versions": [], "patches": [], "sequence": 0}


def versions(repo: Path) -> list[str]:
    return [entry["version"] for entry in manifest(repo)["versions"]]


@pytest.fixture
def watched(tmp_path: Path, sources: list[Path]) -> Iterator[tuple[Path, Path, list[WatchProcess]]]:
    models, repo = tmp_path / "models", tmp_path / "repo"
    (models / "cls").mkdir(parents=True)
    shutil.copy(sources[0], models / "cls")
    running: list[WatchProcess] = []
    yield models, repo, running
    for watcher in running:
        watcher.stop()


def start(running: list[WatchProcess], models: Path, repo: Path, *extra: str, **kwargs) -> WatchProcess:
    watcher = WatchProcess(models, repo, *extra, **kwargs)
    running.append(watcher)
    return watcher


def test_copy_rename_and_slow_write(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    watcher = start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0"], what="the startup publish")
    shutil.copy(sources[1], models / "cls")  # copied in one go
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"], what="the copied file")
    shutil.copy(sources[2], models / "cls" / ".1.2.0.tflite.part")  # hidden while copying, then renamed
    os.replace(models / "cls" / ".1.2.0.tflite.part", models / "cls" / "1.2.0.tflite")
    wait_until(lambda: "1.2.0" in versions(repo), what="the renamed file")
    data = sources[3].read_bytes()
    with open(models / "cls" / "1.3.0.tflite", "wb") as slow:  # written slowly over ~3 s
        for start_at in range(0, len(data), len(data) // 6 + 1):
            slow.write(data[start_at : start_at + len(data) // 6 + 1])
            slow.flush()
            time.sleep(0.5)
            assert "1.3.0" not in versions(repo), "published a half-written file"
    wait_until(lambda: "1.3.0" in versions(repo), what="the slowly written file")
    entry = next(v for v in manifest(repo)["versions"] if v["version"] == "1.3.0")
    assert entry["size"] == len(data)
    assert run_lorien("inspect", repo, "--verify").returncode == 0
    watcher.wait_for_line("published family=cls version=1.3.0")
    assert watcher.stop() == 0  # SIGTERM: clean stop


def test_a_burst_of_five_is_one_publish(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0"])
    before = manifest(repo)["sequence"]
    for source in sources[1:6]:
        shutil.copy(source, models / "cls" / f".{source.name}.part")
    for source in sources[1:6]:
        os.replace(models / "cls" / f".{source.name}.part", models / "cls" / source.name)
    wait_until(lambda: len(versions(repo)) == 6, what="all five versions")
    time.sleep(1.5)
    assert manifest(repo)["sequence"] == before + 1
    assert {(p["from"], p["to"]) for p in manifest(repo)["patches"]} == {
        ("1.2.0", "1.5.0"),
        ("1.3.0", "1.5.0"),
        ("1.4.0", "1.5.0"),
    }


def test_deletion_withdraws_and_gc_waits_for_the_grace_period(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    shutil.copy(sources[1], models / "cls")
    start(running, models, repo, "--grace", "3")
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"])
    blob = repo / next(v["blob"] for v in manifest(repo)["versions"] if v["version"] == "1.0.0")
    (models / "cls" / "1.0.0.tflite").unlink()
    wait_until(lambda: versions(repo) == ["1.1.0"], what="the withdrawal")
    withdrawn_at = time.monotonic()
    assert blob.exists()  # devices mid-download keep their file for the grace period
    wait_until(lambda: not blob.exists(), timeout=15, what="garbage collection")
    assert time.monotonic() - withdrawn_at >= 2.0
    assert run_lorien("inspect", repo, "--verify").returncode == 0


def test_bad_files_are_reported_once_and_skipped(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    watcher = start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0"])
    (models / "cls" / "2.0.0.tflite").write_bytes(b"")  # zero bytes
    (models / "cls" / "notaversion.tflite").write_bytes(sources[1].read_bytes())
    shutil.copy(sources[1], models / "cls")
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"], what="the good file despite the bad ones")
    watcher.wait_for_line("2.0.0.tflite: is empty")
    shutil.copy(sources[2], models / "cls")
    wait_until(lambda: "1.2.0" in versions(repo))
    assert sum("2.0.0.tflite: is empty" in line for line in watcher.lines) == 1
    assert watcher.process.poll() is None


def test_a_second_watcher_fails_fast_naming_the_first(watched) -> None:
    models, repo, running = watched
    first = start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0"])
    second = start(running, models, repo)
    assert second.process.wait(20) == 3
    assert f"pid {first.process.pid}" in "".join(second.lines)
    publisher = run_lorien("publish", "--models", models, "--repo", repo)
    assert publisher.returncode == 3


def test_max_patch_ratio_keeps_big_patches_out(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    watcher = start(running, models, repo, "--max-patch-ratio", "0.01")
    wait_until(lambda: versions(repo) == ["1.0.0"])
    shutil.copy(sources[1], models / "cls")
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"])
    watcher.wait_for_line("rejected patch family=cls 1.0.0->1.1.0")
    assert manifest(repo)["patches"] == []


def test_sigkill_mid_publish_then_restart_converges(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    for source in sources[1:3]:
        shutil.copy(source, models / "cls")
    doomed = start(running, models, repo, env={"LORIEN_TEST_CRASH_AT": "patch"})
    assert doomed.process.wait(30) == -9
    healed = start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0", "1.2.0"] and len(manifest(repo)["patches"]) == 2)
    healed.wait_for_line("published family=cls")
    assert healed.stop() == 0
    assert run_lorien("inspect", repo, "--verify").returncode == 0
    again = run_lorien("publish", "--models", models, "--repo", repo)
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_gc_command(tmp_path: Path, published: Path, models_dir: Path) -> None:
    (models_dir / "classifier" / "1.0.0.tflite").unlink()
    assert run_lorien("publish", "--models", models_dir, "--repo", published).returncode == 0
    first = run_lorien("gc", published)
    assert first.returncode == 0 and "kept blobs/" in first.stdout
    now = run_lorien("gc", published, "--grace", "0")
    assert now.returncode == 0 and "removed blobs/" in now.stdout
    assert run_lorien("inspect", published, "--verify").returncode == 0


def test_a_watcher_started_during_a_copy_waits_for_it(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    data = sources[1].read_bytes()
    target = models / "cls" / "1.1.0.tflite"
    chunk = len(data) // 6 + 1
    with open(target, "wb") as first:
        first.write(data[:chunk])  # a copy already running when the watcher (re)starts

    def keep_copying() -> None:
        with open(target, "ab") as slow:
            for start_at in range(chunk, len(data), chunk):
                time.sleep(0.4)
                slow.write(data[start_at : start_at + chunk])
                slow.flush()

    writer = threading.Thread(target=keep_copying)
    writer.start()
    start(running, models, repo)
    while writer.is_alive():
        assert "1.1.0" not in versions(repo), "published a file that was still being copied"
        time.sleep(0.05)
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"], what="both versions once the copy completed")
    entry = next(v for v in manifest(repo)["versions"] if v["version"] == "1.1.0")
    assert entry["size"] == len(data)


def test_a_stalled_copy_is_not_published_until_it_is_whole(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    watcher = start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0"])
    data = sources[1].read_bytes()
    target = models / "cls" / "1.1.0.tflite"
    with open(target, "wb") as stalled:
        stalled.write(data[: len(data) // 2])
        stalled.flush()
        watcher.wait_for_line("1.1.0.tflite: incomplete TFLite file")  # settled, looked at, refused
        assert versions(repo) == ["1.0.0"]
        stalled.write(data[len(data) // 2 :])
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"], what="the file once whole")
    entry = next(v for v in manifest(repo)["versions"] if v["version"] == "1.1.0")
    assert entry["size"] == len(data) and (repo / entry["blob"]).read_bytes() == data
    assert sum("incomplete TFLite file" in line for line in watcher.lines) == 1


def test_backup_names_are_never_versions_and_warned_once(watched, sources: list[Path]) -> None:
    models, repo, running = watched
    shutil.copy(sources[0], models / "cls" / "1.0.0.tflite.bak")
    watcher = start(running, models, repo)
    wait_until(lambda: versions(repo) == ["1.0.0"])
    shutil.copy(sources[1], models / "cls" / "1.1.0.tflite~")
    shutil.copy(sources[1], models / "cls")
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0"])
    shutil.copy(sources[2], models / "cls")
    wait_until(lambda: versions(repo) == ["1.0.0", "1.1.0", "1.2.0"])
    for name in ("1.0.0.tflite.bak", "1.1.0.tflite~"):
        assert sum(f"ignoring {models / 'cls' / name}:" in line for line in watcher.lines) == 1, watcher.lines


def test_rollout_changes_reach_the_repository_through_a_running_watcher(watched, sources: list[Path]) -> None:
    """A watcher holds the repository: `lorien rollout --models` hands it the change; an edit of channels.toml is
    picked up like a model file."""
    models, repo, running = watched
    shutil.copy(sources[1], models / "cls")
    (models / "cls" / "channels.toml").write_text(
        '[stable]\ntarget = "1.1.0"\nprevious = "1.0.0"\nrollout = { percent = 10 }\n'
    )
    watcher = start(running, models, repo)
    wait_until(lambda: manifest(repo).get("channels", {}).get("stable", {}).get("target") == "1.1.0")
    direct = run_lorien("rollout", "halt", "cls", "stable", "--repo", repo)
    assert direct.returncode == 3 and "--models" in direct.stderr  # the watcher holds the lock
    handed = run_lorien("rollout", "halt", "cls", "stable", "--repo", repo, "--models", models, "--roll-back")
    assert handed.returncode == 0, handed.stderr + "".join(watcher.lines)
    stable = manifest(repo)["channels"]["stable"]
    assert stable == {"target": "1.0.0", "rolled_back": ["1.1.0"]}
    assert not list((models / ".lorien-rollout").glob("*.json"))  # request and result both consumed
    refused = run_lorien("rollout", "set", "cls", "stable", "--repo", repo, "--models", models, "--target", "9.9")
    assert refused.returncode == 2 and "'9.9' is not published" in refused.stderr
    # channels.toml edited while the watcher runs: a new channel appears, the rolled-back stable stays
    (models / "cls" / "channels.toml").write_text('[stable]\ntarget = "1.1.0"\n[beta]\ntarget = "1.1.0"\n')
    wait_until(lambda: "beta" in manifest(repo).get("channels", {}), what="beta published")
    assert manifest(repo)["channels"]["stable"]["target"] == "1.0.0"
