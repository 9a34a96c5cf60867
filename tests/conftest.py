"""Shared fixtures: small real model families, a `lorien` subprocess runner, and a live `lorien serve`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorien.modelgen import write_family

SMALL_LAYERS = (64, 128, 64, 10)  # ≈ 170 KB TFLite: above the 68 KiB fingerprint split, fast to diff


def run_lorien(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the real `lorien` console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "lorien.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """models/classifier/{1.0.0,1.1.0,1.2.0}.tflite — three fine-tuned versions."""
    models = tmp_path / "models"
    write_family(models / "classifier", ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=SMALL_LAYERS, seed=3)
    return models


@pytest.fixture
def published(models_dir: Path, tmp_path: Path) -> Path:
    from publisher.publish import publish

    repo = tmp_path / "repo"
    report = publish(models_dir, repo)
    assert report.ok, report.all_problems()
    return repo


class LiveServer:
    def __init__(self, process: subprocess.Popen, url: str, repo: Path) -> None:
        self.process, self.url, self.repo = process, url, repo


def start_server(repo: Path, *extra: str) -> LiveServer:
    process = subprocess.Popen(
        [sys.executable, "-m", "lorien.cli", "serve", str(repo), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    if not match:
        process.kill()
        raise RuntimeError(f"lorien serve did not announce its URL: {line!r} {process.stderr.read()}")
    return LiveServer(process, match.group(1), repo)


@pytest.fixture
def live_server(published: Path) -> Iterator[LiveServer]:
    server = start_server(published, "--admin-token", "s3cret")
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
def devices() -> Iterator[list]:
    """`lorien device` processes (tests.device_harness.DeviceProcess) a test started; stopped afterwards."""
    started: list = []
    yield started
    for device in started:
        device.stop()


def require(condition: bool, reason: str) -> None:
    """Skip when a real component (nginx, inotify, …) is missing — but fail in CI, where .ci/run sets
    LORIEN_REQUIRE_REAL_COMPONENTS=1 and installs everything, so a skip there would hide a broken setup."""
    if condition:
        return
    if os.environ.get("LORIEN_REQUIRE_REAL_COMPONENTS") == "1":
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)
