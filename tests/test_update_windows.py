"""Update windows and the bandwidth cap: the pure window arithmetic (device/windows.py), the config checks, and
the real ``Updater`` on the in-memory repository — a download outside its window waits for a later check (and
``/progress`` says until when), an applied update waits for its deploy window, an operator's "now" overrides
both, and a capped download takes at least size / cap on the transport's clock."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lorien.device.config import check_environment, load_config
from lorien.device.updater import Updater
from lorien.device.windows import Window
from lorien.repo.errors import BadInputError
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.processes import SMALL_LAYERS
from tests.support.simulator import RepositorySimulator


def test_window_arithmetic_including_midnight() -> None:
    day = datetime(2026, 12, 2, 0, 0).astimezone()
    night = Window.parse("22:00-04:00")
    assert night.contains(day.replace(hour=23)) and night.contains(day.replace(hour=3, minute=59))
    assert not night.contains(day.replace(hour=4)) and not night.contains(day.replace(hour=12))
    early = Window.parse("02:00-05:00")
    assert early.contains(day.replace(hour=2)) and not early.contains(day.replace(hour=5))
    assert early.next_opening(day.replace(hour=1)) == day.replace(hour=2)
    assert early.next_opening(day.replace(hour=6)) == day.replace(hour=2) + timedelta(days=1)
    assert "opens at 02:00 local time, in 1 h 30 min" in early.waiting_message("download", day.replace(minute=30))
    assert Window.parse("00:00-24:00").contains(day.replace(hour=23, minute=59))
    assert Window.parse("03:00-03:00").contains(day)  # start = end: the whole day
    for text in ("2-5", "02:00-25:00", "02:00", "24:30-01:00", "02:60-03:00"):
        with pytest.raises(ValueError, match="window"):
            Window.parse(text)


def test_config_checks_windows_and_the_cap(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "repo_url": "http://x/",
        "family": "cls",
        "model_path": str(tmp_path / "m"),
        "state_dir": str(tmp_path / "s"),
        "insecure_allow_unsigned": True,
    }
    config = load_config(None, {**base, "download_window": "22:00-04:00", "max_download_rate": 65536})
    assert config.download_window == "22:00-04:00" and config.max_download_rate == 65536
    for key, value, message in (
        ("download_window", "late", "download_window"),
        ("deploy_window", 3, "deploy_window"),
        ("max_download_rate", 100, "at least 4096"),
        ("max_download_rate", -1, "max_download_rate"),
    ):
        with pytest.raises(BadInputError, match=message):
            load_config(None, {**base, key: value})


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("windows-family")
    publish_two_hop_family(root, SMALL_LAYERS)
    return root


def _window(open_now: bool) -> str:
    now = datetime.now().astimezone()
    start, end = (
        (now - timedelta(hours=1), now + timedelta(hours=1))
        if open_now
        else (now + timedelta(hours=2), now + timedelta(hours=3))
    )
    return f"{start:%H:%M}-{end:%H:%M}"


def _updater(family: Path, tmp_path: Path, sim: RepositorySimulator, **settings: Any) -> Updater:
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    shutil.copy(model_file(family, "1.0.0"), model)
    config = load_config(
        None,
        {
            "repo_url": sim.BASE,
            "family": "cls",
            "model_path": str(model),
            "state_dir": str(tmp_path / "state"),
            "insecure_allow_unsigned": True,
            **settings,
        },
    )
    check_environment(config)
    return Updater(config, transport=sim)


def test_outside_the_download_window_nothing_is_downloaded_until_an_operator_says_now(
    family: Path, tmp_path: Path
) -> None:
    sim = RepositorySimulator.from_directory(family / "repo")
    updater = _updater(family, tmp_path, sim, download_window=_window(False))
    updater.update_latest()
    updater.wait(60)
    progress = updater.status_view().progress
    assert "waiting for the download window" in progress["message"] and '"now": true' in progress["message"]
    assert not [seen for seen in sim.requests if seen.path.startswith("blobs/")]
    assert updater.status()["installed_version"] == "1.0.0"
    updater.update_latest(now=True)
    updater.wait(60)
    assert updater.status()["installed_version"] == "1.2.0"


def test_an_applied_update_waits_for_its_deploy_window_and_now_releases_it(family: Path, tmp_path: Path) -> None:
    sim = RepositorySimulator.from_directory(family / "repo")
    updater = _updater(family, tmp_path, sim, download_window=_window(True), deploy_window=_window(False))
    updater.update_latest()
    deadline = time.monotonic() + 30
    while "waiting for the deploy window" not in updater.status_view().progress["message"]:
        assert time.monotonic() < deadline, updater.status_view().progress
        time.sleep(0.05)
    assert updater.status_view().busy and updater.status()["installed_version"] == "1.0.0"
    assert updater.status_view().progress["message"].startswith("1.2.0 ready; ")
    updater.update_latest(now=True)  # the operator's override releases the waiting update
    updater.wait(60)
    status = updater.status()
    assert status["installed_version"] == "1.2.0" and status["last_result"]["ok"], status


def test_a_capped_download_takes_at_least_size_over_cap(family: Path, tmp_path: Path) -> None:
    results = {}
    for cap in (0, 8192):
        sim = RepositorySimulator.from_directory(family / "repo")
        updater = _updater(family, tmp_path / str(cap), sim, max_download_rate=cap)
        plan = updater.check()
        started = sim.now
        updater.update_latest()
        updater.wait(60)
        assert updater.status()["installed_version"] == "1.2.0"
        results[cap] = (sim.now - started, plan.download_bytes)
    capped_seconds, size = results[8192]
    assert capped_seconds >= 0.99 * size / 8192  # each download waits until its bytes fit within the cap
    assert results[0][0] < capped_seconds / 4
