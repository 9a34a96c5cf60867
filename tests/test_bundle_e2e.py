"""Bundle families with real processes: ``lorien publish`` → real nginx → ``lorien device`` update → rollback,
and SIGKILL at every step of a bundle update followed by a restart that heals — the application's path always
shows one complete version, never a mix."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorien.device.bundles import version_dir_name, versions_dir
from lorien.repo.bundle import bundle_digest, describe_directory
from tests.support.bundles import write_bundle_family
from tests.support.device_harness import DeviceProcess
from tests.support.nginx_server import Nginx
from tests.support.processes import LiveServer, run_lorien, serving

pytestmark = pytest.mark.slow  # real `lorien publish`, nginx, `lorien serve` and `lorien device` processes


def _digest(directory: Path) -> str:
    return bundle_digest(describe_directory(directory))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three versions of the bundle ``bun`` (ONNX + external data, labels, tokenizer) to publish from."""
    root = tmp_path_factory.mktemp("bundle-sources")
    write_bundle_family(root, "bun", versions=3)
    return root / "bun"


def _publish(models: Path, repo: Path) -> None:
    result = run_lorien("publish", "--models", models, "--repo", repo, "--keep", "2")
    assert result.returncode == 0, result.stderr


def _device(devices: list[DeviceProcess], root: Path, url: str, *extra: str, **kwargs) -> DeviceProcess:
    link = root / "app" / "model"
    link.parent.mkdir(parents=True, exist_ok=True)
    device = DeviceProcess(root, url, link, "--bundle", *extra, family="bun", **kwargs)
    devices.append(device)
    return device


@pytest.fixture
def devices() -> Iterator[list[DeviceProcess]]:
    running: list[DeviceProcess] = []
    yield running
    for device in running:
        device.stop()


def test_publish_nginx_update_rollback(sources: Path, tmp_path: Path, devices: list[DeviceProcess]) -> None:
    models, repo = tmp_path / "models", tmp_path / "repo"
    (models / "bun").mkdir(parents=True)
    for version in ("1.0.0", "1.1.0"):
        shutil.copytree(sources / version, models / "bun" / version)
    _publish(models, repo)
    nginx = Nginx(repo, tmp_path / "nginx")
    try:
        device = _device(devices, tmp_path / "dev", nginx.url, "--health-check", "true")
        link = device.model
        device.api("POST", "update-latest")
        first = device.wait_until_done()
        assert first["last_result"]["ok"] and first["installed_version"] == "1.1.0", first
        assert _digest(link) == _digest(sources / "1.1.0")
        full_install = first["history"][0]["download_bytes"]

        shutil.copytree(sources / "1.2.0", models / "bun" / "1.2.0")  # new weights and new labels
        _publish(models, repo)
        plan = device.api("POST", "check").json()["data"]
        kinds = {step["path"]: step["kind"] for step in plan["steps"]}
        assert (
            kinds["model.onnx"] == kinds["tokenizer/vocab.json"] == "keep" and kinds["model.onnx.data"] == "patch"
        )
        device.api("POST", "update-latest")
        second = device.wait_until_done()
        assert second["last_result"]["ok"] and second["installed_version"] == "1.2.0", second
        assert _digest(link) == _digest(sources / "1.2.0")
        entry = second["history"][0]
        downloaded, full = entry["download_bytes"], entry["full_size"]
        print(
            f"\nbundle update 1.1.0→1.2.0 over nginx: {downloaded} bytes downloaded vs {full} full "
            f"({100 * downloaded / full:.1f} %); first install {full_install}"
        )
        assert downloaded < 0.3 * full and full_install >= full * 0.95

        assert device.api("POST", "rollback").status_code == 200
        rolled = device.wait_until_done()
        assert rolled["last_result"]["ok"] and rolled["installed_version"] == "1.1.0", rolled
        assert _digest(link) == _digest(sources / "1.1.0")
        assert [name.split("-")[0] for name in rolled["backups"]] == ["1.2.0"]
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def crash_repo(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LiveServer]]:
    """A repository with 1.0.0 and 1.1.0 (1.1.0 latest), served by `lorien serve`."""
    root = tmp_path_factory.mktemp("bundle-crash")
    (root / "models" / "bun").mkdir(parents=True)
    for version in ("1.0.0", "1.1.0"):
        shutil.copytree(sources / version, root / "models" / "bun" / version)
    _publish(root / "models", root / "repo")
    with serving(root / "repo") as live:
        yield root, live


def _preinstall(sources: Path, root: Path, version: str) -> Path:
    """The device already runs ``version``: its directory in the versions store, the link on it."""
    link = root / "app" / "model"
    link.parent.mkdir(parents=True)
    digest = _digest(sources / version)
    directory = versions_dir(link) / version_dir_name(version, digest)
    shutil.copytree(sources / version, directory)
    link.symlink_to(directory.relative_to(link.parent))
    return link


class Watcher(threading.Thread):
    """Resolves the application's path over and over (as an application loading the model would) and records
    the digest of every directory it sees: each must be a complete version."""

    def __init__(self, link: Path) -> None:
        super().__init__(daemon=True)
        self.link, self.seen, self.stopping = link, set(), threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.seen.add(_digest(self.link.resolve(strict=True)))
            except Exception:  # a directory vanishing under the reader would be a failure too
                self.seen.add("unreadable")


@pytest.mark.parametrize(
    "crash_at", ["mid-download", "after-download", "mid-assemble", "after-backup", "after-replace", "health-check"]
)
def test_sigkill_at_every_step_of_a_bundle_update_then_heal(
    sources: Path, crash_repo: tuple[Path, LiveServer], tmp_path: Path, devices: list[DeviceProcess], crash_at: str
) -> None:
    _, server = crash_repo
    link = _preinstall(sources, tmp_path, "1.0.0")
    old, new = _digest(sources / "1.0.0"), _digest(sources / "1.1.0")
    watcher = Watcher(link)
    watcher.start()
    doomed = _device(
        devices, tmp_path, server.url, "--health-check", "true", env={"LORIEN_TEST_CRASH_AT": crash_at}
    )
    doomed.api("POST", "update-latest")
    assert doomed.wait_for_death() == -9, "".join(doomed.lines)
    expected_at_kill = new if crash_at in ("after-replace", "health-check") else old
    assert _digest(link) == expected_at_kill
    healed = _device(devices, tmp_path, server.url, "--health-check", "true")
    status = healed.wait_until_done()
    watcher.stopping.set()
    watcher.join(10)
    assert status["last_result"]["ok"] and status["installed_version"] == "1.1.0", ("".join(healed.lines), status)
    assert _digest(link) == new
    assert watcher.seen <= {old, new}, watcher.seen  # never a partial or mixed version
    assert not [p for p in versions_dir(link).iterdir() if p.name.startswith(".")]  # no staging left
    assert [p.name for p in (tmp_path / "state" / "tmp").iterdir()] == []
