"""``lorien ctl`` against a real ``lorien serve`` + ``lorien device`` pair: status, check, update, rollback,
history and progress, human and ``--json``, and the exit code of each outcome (0 done, 1 failed or rolled back,
2 bad token, 3 busy, 4 unreachable). The device comes from flags or from its config file (with ``api_token``,
or the token it generated into ``state_dir/api_token``).

An operation is held in place, without timing, by a health check that waits for a file the test creates
(:func:`_gated_health_check`): while it waits the device is busy, and ``progress --follow`` has something to
follow.
"""

# ruff: noqa: F811 (test arguments named like the fixtures imported from test_device)
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorien.cli.ctl import _history_line
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.processes import LiveServer, run_lorien

# the fixtures `family` (three 2 MB versions, a two-hop patch chain) and `server` (`lorien serve`)
from tests.test_device import family, install, latest_sha, model_file, server, start  # noqa: F401

slow = pytest.mark.slow  # real `lorien serve` and `lorien device` processes


def _ctl(*args: str | Path) -> subprocess.CompletedProcess:
    return run_lorien("ctl", *args)


def _url(device: DeviceProcess) -> str:
    return device.url  # the API address the device printed (…/api/v1.0/): ctl takes it as it is


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gated_health_check(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A health check that says it started (``started``), then passes once ``release`` exists."""
    started, release, script = tmp_path / "health-started", tmp_path / "health-release", tmp_path / "health.sh"
    script.write_text(f"#!/bin/sh\ntouch {started}\nwhile [ ! -e {release} ]; do sleep 0.05; done\nexit 0\n")
    script.chmod(0o755)
    return script, started, release


def _wait_for(path: Path, device: DeviceProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and device.process.poll() is None, "".join(device.lines[-30:])
        time.sleep(0.05)


@slow
def test_status_check_update_history_and_rollback(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.0.0")
    device = start(devices, tmp_path, server.url, model)
    url, token_file = _url(device), device.state_dir / "api_token"
    status = _ctl("status", "--url", url)
    assert status.returncode == 0, status.stderr
    assert "family         cls" in status.stdout and "stage          idle" in status.stdout
    assert json.loads(_ctl("status", "--url", url, "--json").stdout)["family"] == "cls"

    check = _ctl("check", "--url", url, "--token-file", token_file)
    assert check.returncode == 0, check.stderr
    assert "latest         1.2.0" in check.stdout and "patch 1.0.0 → 1.1.0, patch 1.1.0 → 1.2.0" in check.stdout
    plan = json.loads(_ctl("check", "--url", url, "--token-file", token_file, "--json").stdout)
    assert plan["latest"] == "1.2.0" and not plan["up_to_date"]

    update = _ctl("update", "--wait", "--url", url, "--token-file", token_file)
    assert update.returncode == 0, update.stderr
    assert "1.0.0 → 1.2.0" in update.stdout.splitlines()[-1] and sha256(model) == latest_sha(family)
    entry = json.loads(_ctl("history", "--url", url, "--json").stdout)[0]
    assert entry["kind"] == "update-latest" and entry["result"] == "ok"
    assert (entry["from_version"], entry["version"]) == ("1.0.0", "1.2.0")
    assert entry["download_bytes"] == plan["download_bytes"] < entry["full_size"] == plan["full_size"]
    assert isinstance(entry["duration"], int) and entry["duration"] >= 0
    line = next(line for line in _ctl("history", "--url", url).stdout.splitlines() if "update-latest" in line)
    assert "update-latest  1.0.0 → 1.2.0      ok" in line, line
    assert re.search(r" \d+ s +[\d.]+ [kM]?B of [\d.]+ [kM]?B ", line), line  # took, downloaded of full

    rollback = _ctl("rollback", "--wait", "--url", url, "--token", device.token)
    assert rollback.returncode == 0, rollback.stderr
    assert "rollback       1.2.0 → 1.0.0" in rollback.stdout
    assert sha256(model) == sha256(model_file(family, "1.0.0"))

    wrong = _ctl("update", "--url", url, "--token", "not-the-device-token")
    assert wrong.returncode == 2 and "refused the token from --token" in wrong.stderr
    assert _ctl("check", "--url", url).returncode == 2  # no token at all
    assert json.loads(_ctl("history", "--url", url, "--json").stdout)[0]["kind"] == "rollback"  # nothing ran


@slow
def test_an_update_that_is_rolled_back_exits_1(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    model = install(family, tmp_path, "1.1.0")
    device = start(devices, tmp_path, server.url, model, "--health-check", "false")
    update = _ctl("update", "--wait", "--json", "--url", _url(device), "--token", device.token)
    assert update.returncode == 1
    entry = json.loads(update.stdout)
    assert entry["result"] == "rolled back" and (entry["from_version"], entry["version"]) == ("1.1.0", "1.2.0")
    assert "lorien ctl: error: update-latest failed: rolled back: health check failed" in update.stderr
    assert sha256(model) == sha256(model_file(family, "1.1.0"))


@slow
def test_a_busy_device_exits_3_and_progress_follow_ends_with_the_operation(
    family: Path, server: LiveServer, tmp_path: Path, devices: list
) -> None:
    check, started, release = _gated_health_check(tmp_path)
    model = install(family, tmp_path, "1.1.0")
    device = start(devices, tmp_path, server.url, model, "--health-check", str(check))
    url = _url(device)
    assert _ctl("update", "--url", url, "--token", device.token).returncode == 0  # in the background
    _wait_for(started, device)
    busy = _ctl("update", "--url", url, "--token", device.token)
    assert busy.returncode == 3 and "device busy: another operation is running (deploying)" in busy.stderr
    assert _ctl("rollback", "--url", url, "--token", device.token).returncode == 3
    follow = subprocess.Popen(
        [sys.executable, "-m", "lorien.cli", "ctl", "progress", "--follow", "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    first = follow.stdout.readline()  # output is not a terminal: one line per change, flushed
    assert first.split()[:2] == ["deploying", "90%"], first
    release.touch()
    rest, errors = follow.communicate(timeout=60)
    assert follow.returncode == 0, errors
    *changes, result = rest.splitlines()
    assert changes[-1].split()[:3] == ["idle", "100%", "installed"]
    assert "update-latest  1.1.0 → 1.2.0" in result and " ok " in result
    assert sha256(model) == latest_sha(family)


@slow
@pytest.mark.parametrize("token_in_config", [True, False])
def test_host_port_and_token_come_from_the_device_config(
    family: Path, server: LiveServer, tmp_path: Path, devices: list, token_in_config: bool
) -> None:
    """With ``api_token`` in device.toml, ctl sends it; without, the token the device generated at its first start
    into ``state_dir/api_token``."""
    model = install(family, tmp_path, "1.1.0")
    config = tmp_path / "device.toml"
    token_line = 'api_token = "from-the-config-file"\n' if token_in_config else ""
    for attempt in range(3):  # the probed port may be taken before the device binds it (xdist workers)
        port = _free_port()
        config.write_text(
            f'repo_url = "{server.url}"\nfamily = "cls"\nmodel_path = "{model}"\n'
            f'state_dir = "{tmp_path / "state"}"\ninsecure_allow_unsigned = true\nport = {port}\n{token_line}'
        )
        try:
            device = start(devices, tmp_path, server.url, model, "--config", str(config), "--port", str(port))
            break
        except RuntimeError:
            if attempt == 2:
                raise
    assert (device.state_dir / "api_token").exists() is not token_in_config
    assert f":{port}/" in device.url
    check = _ctl("check", "--config", config, "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["latest"] == "1.2.0"
    assert _ctl("check", "--config", config, "--token", "not-the-device-token").returncode == 2  # a flag wins


def test_an_unreachable_device_exits_4() -> None:
    answer = _ctl("status", "--url", f"http://127.0.0.1:{_free_port()}")
    assert answer.returncode == 4 and "device unreachable at http://127.0.0.1:" in answer.stderr


def test_history_lines_read_entries_of_older_devices() -> None:
    old = {
        "ok": False,
        "message": "rolled back: health check failed",
        "version": "1.2.0",
        "at": "2026-01-01T00:00:00Z",
    }
    line = _history_line({**old, "kind": "update-latest"})
    assert line.split()[:7] == ["2026-01-01T00:00:00Z", "update-latest", "-", "→", "1.2.0", "rolled", "back"]
    assert line.split()[7:9] == ["-", "-"]  # duration and bytes were not recorded then
