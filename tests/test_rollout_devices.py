"""Rollout rules with real `lorien device` processes against a served repository (the tests' HTTP server, which
records every request's User-Agent): a device follows its channel, a staged rollout takes the devices inside it
to the target and the others to the previous target, a halt with roll-back brings the devices that took the
target back, a pin wins over the channel (at start and at run time), a hold installs nothing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from lorien.device.rollout import bucket
from lorien.modelgen import write_family
from lorien.publisher.publish import publish
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.faulty_server import Faults, FaultyServer
from tests.support.processes import SMALL_LAYERS, run_lorien

pytestmark = pytest.mark.slow  # real `lorien device` processes

FAMILY = "cls"
VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """``tmp/models/cls/{1.0.0,1.1.0,1.2.0}.tflite`` published with stable → 1.2.0 rolling out to 50 % (previous
    1.1.0), beta → 1.2.0, and a copy of every version in ``tmp/all``."""
    write_family(tmp_path / "all" / FAMILY, VERSIONS, layer_sizes=SMALL_LAYERS, seed=5)
    models = tmp_path / "models" / FAMILY
    shutil.copytree(tmp_path / "all" / FAMILY, models)
    (models / "channels.toml").write_text(
        '[stable]\ntarget = "1.2.0"\nprevious = "1.1.0"\nrollout = { percent = 50 }\n[beta]\ntarget = "1.2.0"\n'
    )
    assert publish(tmp_path / "models", tmp_path / "repo").ok
    return tmp_path / "repo"


@pytest.fixture
def server(repo: Path) -> Iterator[FaultyServer]:
    live = FaultyServer(repo, Faults())
    yield live
    live.close()


def device_on(
    tmp_path: Path, server: FaultyServer, devices: list, name: str, version: str, *extra: str
) -> DeviceProcess:
    model = tmp_path / name / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "all" / FAMILY / f"{version}.tflite", model)
    device = DeviceProcess(tmp_path / name, server.url, model, *extra)
    devices.append(device)
    return device


def installed(device: DeviceProcess, tmp_path: Path) -> str | None:
    digest = sha256(device.model)
    for version in VERSIONS:
        if sha256(tmp_path / "all" / FAMILY / f"{version}.tflite") == digest:
            return version
    return None


def update(device: DeviceProcess) -> dict:
    assert device.api("POST", "update-latest").status_code == 200
    return device.wait_until_done()


def device_ids(target: str, inside: bool) -> str:
    """A device id whose bucket for ``target`` is inside (or outside) a 50 % rollout."""
    return next(f"dev-{i}" for i in range(1000) if (bucket(f"dev-{i}", FAMILY, target) < 50) == inside)


def test_a_device_follows_its_channel_and_names_itself_in_every_request(
    tmp_path: Path, server: FaultyServer, devices: list
) -> None:
    device = device_on(tmp_path, server, devices, "beta", "1.0.0", "--channel", "beta", "--device-id", "pump-7")
    status = update(device)
    assert status["last_result"]["ok"], status
    assert installed(device, tmp_path) == "1.2.0"
    assert status["rollout"]["channel"] == "beta" and status["rollout"]["decision"]["state"] == "in"
    agents = [agent for agent in server.faults.agents if agent]
    assert len(agents) == len(server.faults.agents)  # every request, documents and blobs
    assert all(agent.startswith("lorien/") and "family=cls; channel=beta" in agent for agent in agents)
    assert all("device=pump-7" in agent for agent in agents)
    assert "installed=none" in agents[0]  # before the first manifest, the device cannot name its model
    assert "installed=1.0.0" in agents[-1]  # the blobs of the update, after the manifest named it
    update(device)  # the next check reports the new version and the rollout state
    assert "installed=1.2.0" in server.faults.agents[-1] and "rollout=in:" in server.faults.agents[-1]


def test_staged_rollout_takes_inside_devices_to_the_target_and_others_to_the_previous(
    tmp_path: Path, server: FaultyServer, devices: list
) -> None:
    inside = device_on(tmp_path, server, devices, "in", "1.0.0", "--device-id", device_ids("1.2.0", True))
    outside = device_on(tmp_path, server, devices, "out", "1.0.0", "--device-id", device_ids("1.2.0", False))
    assert update(inside)["last_result"]["ok"] and update(outside)["last_result"]["ok"]
    assert installed(inside, tmp_path) == "1.2.0"
    assert installed(outside, tmp_path) == "1.1.0"
    check = outside.api("POST", "check").json()["data"]
    assert check["up_to_date"] and check["rollout"]["state"] == "out" and check["rollout"]["percent"] == 50
    assert outside.status()["rollout"]["decision"]["state"] == "out"
    metrics = requests.get(outside.url.replace("/api/v1.0/", "/metrics"), timeout=30).text
    assert 'lorien_rollout_info{channel="stable",state="out",target="1.1.0"} 1.0' in metrics


def test_halt_with_roll_back_brings_devices_that_took_the_target_back(
    tmp_path: Path, server: FaultyServer, devices: list, repo: Path
) -> None:
    inside = device_on(tmp_path, server, devices, "in", "1.1.0", "--device-id", device_ids("1.2.0", True))
    assert update(inside)["last_result"]["ok"] and installed(inside, tmp_path) == "1.2.0"
    halted = run_lorien("rollout", "halt", FAMILY, "stable", "--repo", repo, "--roll-back")
    assert halted.returncode == 0, halted.stderr
    status = update(inside)
    assert status["last_result"]["ok"], status
    assert installed(inside, tmp_path) == "1.1.0"  # the publisher-authorised downgrade
    assert status["rollout"]["decision"]["downgrade"]
    # a device of another channel on 1.2.0 is not moved: its channel withdrew nothing
    beta = device_on(tmp_path, server, devices, "beta", "1.2.0", "--channel", "beta")
    update(beta)
    assert installed(beta, tmp_path) == "1.2.0"


def test_pin_wins_over_the_channel_and_hold_installs_nothing(
    tmp_path: Path, server: FaultyServer, devices: list
) -> None:
    pinned = device_on(tmp_path, server, devices, "pinned", "1.2.0", "--pin", "1.0.0")
    assert update(pinned)["last_result"]["ok"]
    assert installed(pinned, tmp_path) == "1.0.0"  # installed although older: the operator pinned it
    held = device_on(
        tmp_path, server, devices, "held", "1.0.0", "--hold", "--device-id", device_ids("1.2.0", True)
    )
    update(held)
    assert installed(held, tmp_path) == "1.0.0"
    assert "held by the operator (would install 1.2.0)" in held.api("GET", "progress").json()["data"]["message"]
    # at run time: release the hold, pin to 1.1.0, unpin
    assert held.api("POST", "control", json={"hold": False, "pin": "1.1.0"}).json()["data"] == {
        "pin": "1.1.0",
        "hold": False,
    }
    update(held)
    assert installed(held, tmp_path) == "1.1.0"
    ctl = run_lorien("ctl", "unpin", "--url", held.url, "--token", held.token or "", "--json")
    assert ctl.returncode == 0, ctl.stderr
    update(held)
    assert installed(held, tmp_path) == "1.2.0"
    shown = run_lorien("ctl", "status", "--url", held.url)
    assert "pinned" not in shown.stdout and "in the rollout of 1.2.0" in shown.stdout, shown.stdout
    assert held.api("POST", "control", json={"pin": "../x"}).status_code == 400
    assert held.api("POST", "control", json={"hold": "yes"}).status_code == 400


def test_a_closed_download_window_defers_until_the_operator_says_now(
    tmp_path: Path, server: FaultyServer, devices: list
) -> None:
    now = datetime.now().astimezone()
    closed = f"{now + timedelta(hours=2):%H:%M}-{now + timedelta(hours=3):%H:%M}"
    device = device_on(
        tmp_path, server, devices, "windowed", "1.0.0", "--channel", "beta", "--download-window", closed
    )
    update(device)
    progress = device.api("GET", "progress").json()["data"]
    assert f"waiting for the download window {closed}" in progress["message"], progress
    assert installed(device, tmp_path) == "1.0.0"
    assert not [path for path, _range, _if_range in server.faults.requests if path.startswith("blobs/")]
    now_run = run_lorien("ctl", "update", "--now", "--wait", "--url", device.url, "--token", device.token or "")
    assert now_run.returncode == 0, now_run.stdout + now_run.stderr
    assert installed(device, tmp_path) == "1.2.0"


def test_on_a_tuf_signed_repository_the_rollout_command_signs_and_the_device_follows(
    tmp_path: Path, devices: list
) -> None:
    """The channel state is TUF-signed like the rest of the manifest: a device that trusts only the repository's
    first root.json takes the rollout, and goes back after a signed `lorien rollout halt --roll-back`."""
    site = tmp_path / "site"
    write_family(site / "all" / FAMILY, VERSIONS, layer_sizes=SMALL_LAYERS, seed=9)
    shutil.copytree(site / "all" / FAMILY, site / "models" / FAMILY)
    (site / "models" / FAMILY / "channels.toml").write_text(
        '[stable]\ntarget = "1.2.0"\nprevious = "1.1.0"\nrollout = { percent = 50 }\n'
    )
    assert run_lorien("keygen", "--out", site / "keys").returncode == 0
    key, repo = site / "keys" / "lorien.key", site / "repo"
    published = run_lorien("publish", "--models", site / "models", "--repo", repo, "--sign-key", key, "-q")
    assert published.returncode == 0, published.stderr
    root = tmp_path / "root.json"
    shutil.copy(repo / "metadata" / "1.root.json", root)  # installed with the device
    server = FaultyServer(repo, Faults())
    try:
        model = tmp_path / "in" / "app" / "model.tflite"
        model.parent.mkdir(parents=True)
        shutil.copy(site / "all" / FAMILY / "1.1.0.tflite", model)
        inside = device_ids("1.2.0", True)
        device = DeviceProcess(
            tmp_path / "in", server.url, model, "--trusted-root", str(root), "--device-id", inside
        )
        devices.append(device)
        assert update(device)["last_result"]["ok"] and sha256(model) == sha256(
            site / "all" / FAMILY / "1.2.0.tflite"
        )
        halted = run_lorien("rollout", "halt", FAMILY, "stable", "--repo", repo, "--sign-key", key, "--roll-back")
        assert halted.returncode == 0, halted.stderr
        status = update(device)
        assert status["last_result"]["ok"] and status["trust"]["tuf"] is not None, status
        assert sha256(model) == sha256(site / "all" / FAMILY / "1.1.0.tflite")  # back, by a signed decision
    finally:
        server.close()
