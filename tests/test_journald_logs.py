"""Log lines of real processes: under systemd (``JOURNAL_STREAM`` set) no timestamp and sd-daemon(3) priority
prefixes (``<6>`` info, ``<4>`` warning, ``<3>`` error), with ``family=… version=… stage=…`` fields on the
device's stage changes; elsewhere, timestamped lines."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from lorien.modelgen import write_family
from lorien.publisher.publish import publish
from lorien.repo.logs import logfmt, stream_handler
from tests.support.device_family import model_file, publish_two_hop_family
from tests.support.device_harness import DeviceProcess
from tests.support.processes import SMALL_LAYERS, start_server  # real `lorien device` and `lorien serve` below

JOURNAL = {"JOURNAL_STREAM": "8:1234"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|DEBUG) ")


def test_every_line_of_a_traceback_carries_the_priority_and_fields_are_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    log = logging.getLogger("lorien.test-journald")
    log.addHandler(stream_handler(stream))
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("%s", logfmt(family="cls", version=None, msg='said "no"'))
    finally:
        log.handlers.clear()
    lines = stream.getvalue().splitlines()
    assert lines[0] == '<3>ERROR lorien.test-journald: family=cls version=- msg="said \\"no\\""'
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), lines


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("journald-family")
    publish_two_hop_family(root, SMALL_LAYERS)
    return root


def _updated_device(family: Path, tmp_path: Path, devices: list, env: dict[str, str]) -> list[str]:
    """The log lines of a device that updated 1.1.0 → 1.2.0 (stdout, where systemd's journal reads them)."""
    server = start_server(family / "repo")
    try:
        model = tmp_path / "app" / "model.tflite"
        model.parent.mkdir(parents=True)
        shutil.copy(model_file(family, "1.1.0"), model)
        device = DeviceProcess(tmp_path, server.url, model, env=env)
        devices.append(device)
        device.api("POST", "update-latest")
        assert device.wait_until_done()["installed_version"] == "1.2.0"
        device.stop()
        return [line.rstrip("\n") for line in device.lines if "lorien." in line]
    finally:
        server.process.terminate()
        server.process.wait(10)


@pytest.mark.slow
def test_device_under_journald_logs_priorities_and_fields_without_time(
    family: Path, tmp_path: Path, devices: list
) -> None:
    lines = _updated_device(family, tmp_path, devices, JOURNAL)
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line.split(": ", 1)[0]) for line in lines), lines
    assert "<6>INFO lorien.device.report: family=cls version=1.2.0 stage=deploying" in "\n".join(lines)
    assert any(line.startswith("<6>") and 'msg="installed 1.2.0"' in line for line in lines), lines
    log_file = (tmp_path / "state" / "logs" / "device.log").read_text().splitlines()
    assert log_file and all(TIMESTAMP.match(line) for line in log_file if "lorien." in line)  # the file keeps time


@pytest.mark.slow
def test_device_elsewhere_logs_timestamps(family: Path, tmp_path: Path, devices: list) -> None:
    lines = _updated_device(family, tmp_path, devices, {"JOURNAL_STREAM": ""})
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines
    assert not any(line.startswith("<") for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("journal", [True, False])
def test_serve_logs_a_repository_problem(journal: bool, tmp_path: Path) -> None:
    """A broken manifest makes ``GET /manifest`` a 500 and an error line: ``<3>`` under journald."""
    write_family(tmp_path / "models" / "cls", ["1.0.0"], layer_sizes=SMALL_LAYERS, seed=1)
    assert publish(tmp_path / "models", tmp_path / "repo").ok
    (tmp_path / "repo" / "cls" / "manifest.json").write_text("{broken")
    env = {**os.environ, "JOURNAL_STREAM": JOURNAL["JOURNAL_STREAM"] if journal else ""}
    command = [sys.executable, "-m", "lorien.cli", "serve", str(tmp_path / "repo"), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline())
        assert url, process.stderr.read()
        assert requests.get(url.group(0) + "manifest", timeout=30).status_code == 500
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    lines = [line for line in stderr.splitlines() if "lorien.serve" in line]
    assert lines, stderr
    if journal:
        assert all(line.startswith("<3>ERROR lorien.serve: ") for line in lines), lines
    else:
        assert all(TIMESTAMP.match(line) for line in lines), lines
