"""Shared fixtures: small real model families, a published repository, a live `lorien serve`, started devices.
Helpers that are not fixtures live in ``tests/support/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from tests.support.processes import SMALL_LAYERS, LiveServer, serving


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """models/classifier/{1.0.0,1.1.0,1.2.0}.tflite — three fine-tuned versions."""
    models = tmp_path / "models"
    write_family(models / "classifier", ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=SMALL_LAYERS, seed=3)
    return models


@pytest.fixture
def published(models_dir: Path, tmp_path: Path) -> Path:
    from lorien.publisher.publish import publish

    repo = tmp_path / "repo"
    report = publish(models_dir, repo)
    assert report.ok, report.all_problems()
    return repo


@pytest.fixture
def live_server(published: Path) -> Iterator[LiveServer]:
    with serving(published, "--admin-token", "s3cret") as server:
        yield server


@pytest.fixture
def devices() -> Iterator[list]:
    """`lorien device` processes (tests.support.device_harness.DeviceProcess) a test started; stopped afterwards."""
    started: list = []
    yield started
    for device in started:
        device.stop()
