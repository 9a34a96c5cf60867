"""What the device's log says about a deploy with nothing configured around it: the plan of a full download,
one line about the (missing) service, and no health check pretending to run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lorien.device.config import check_environment, load_config
from lorien.device.updater import Updater
from lorien.repo.manifest import parse_manifest
from tests.support.device_family import publish_two_hop_family
from tests.support.processes import SMALL_LAYERS
from tests.support.simulator import RepositorySimulator


def test_device_says_once_that_nothing_is_configured_and_when_it_downloads_the_full_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process (the real Updater on the in-memory repository): a device with an unknown model, no service
    and no health check takes the full model (compressed on its own)."""
    publish_two_hop_family(tmp_path / "family", SMALL_LAYERS)
    sim = RepositorySimulator.from_directory(tmp_path / "family" / "repo")
    model = tmp_path / "app" / "model.tflite"
    model.parent.mkdir()
    model.write_bytes(b"TFL3 a model this repository never published" * 1000)
    settings = {"repo_url": sim.BASE, "family": "cls", "model_path": str(model), "insecure_allow_unsigned": True}
    config = load_config(None, {**settings, "state_dir": str(tmp_path / "state")})
    check_environment(config)
    updater = Updater(config, transport=sim)
    caplog.set_level(logging.INFO, logger="lorien")
    updater.update_latest()
    updater.wait(60)
    assert updater.status()["last_result"]["ok"]
    messages = [record.getMessage() for record in caplog.records]
    plan = next(message for message in messages if message.startswith("plan: "))
    latest = parse_manifest(sim.files["cls/manifest.json"]).latest_entry()
    assert latest.compressed is not None
    assert plan == f"plan: compressed 1.2.0, {latest.compressed.size} bytes instead of {latest.size}"
    assert [m for m in messages if m.startswith("service: ")] == ["service: no service configured"]
    assert not any("running the health check" in m for m in messages)
    assert any("stage=deploying" in m and "no health check configured" in m for m in messages)
