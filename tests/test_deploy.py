"""deploy/: the systemd units parse (systemd-analyze verify when available) and install.sh is idempotent."""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import run_lorien

pytestmark = pytest.mark.slow  # installs into a temporary root and runs the real CLI

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = ("lorien-device.service", "lorien-publisher.service")
HARDENING = {"NoNewPrivileges": "true", "ProtectSystem": "strict", "PrivateTmp": "true", "ProtectHome": "true"}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(DEPLOY / name)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_units_have_the_directives_we_rely_on(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert service["User"] == "lorien" and service["Restart"] == "on-failure"
    assert service["ExecStart"].startswith("/opt/lorien/venv/bin/lorien ")
    assert service["StandardOutput"] == "journal"
    for key, value in HARDENING.items():
        assert service[key] == value, key
    assert service["ReadWritePaths"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _tree_digest(root: Path, parts: tuple[str, ...]) -> dict[str, str]:
    digest = {}
    for part in parts:
        for path in sorted((root / part).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def test_install_into_a_temporary_root_is_idempotent_and_units_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(root)}
    first = subprocess.run(
        [str(DEPLOY / "install.sh"), "both"], env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout + first.stderr
    lorien = root / "opt" / "lorien" / "venv" / "bin" / "lorien"
    assert subprocess.run([str(lorien), "--help"], capture_output=True, timeout=60).returncode == 0
    for unit in UNITS:
        assert (root / "etc" / "systemd" / "system" / unit).is_file()
    key = root / "etc" / "lorien" / "publisher.key"  # the watcher's signing key, made once
    assert key.stat().st_mode & 0o777 == 0o600 and "BEGIN PRIVATE KEY" in key.read_text()
    assert (root / "etc" / "lorien" / "publisher.pub").is_file()
    assert "--sign-key /etc/lorien/publisher.key" in (DEPLOY / "lorien-publisher.service").read_text()
    config = root / "etc" / "lorien" / "device.toml"
    config.write_text(config.read_text().replace("classifier", "my-family"))  # an operator's edit
    parts = ("etc", "var", "srv", "opt/lorien/src")
    before = _tree_digest(root, parts)
    second = subprocess.run(
        [str(DEPLOY / "install.sh"), "both"], env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr
    assert _tree_digest(root, parts) == before  # nothing changed, the edited config kept
    assert "my-family" in config.read_text()

    analyze = shutil.which("systemd-analyze")
    if analyze:  # verify the real directives; point ExecStart at the staged binary so it exists
        for unit in UNITS:
            staged = tmp_path / unit
            staged.write_text((DEPLOY / unit).read_text().replace("/opt/lorien/venv/bin/lorien", str(lorien)))
            result = subprocess.run([analyze, "verify", str(staged)], capture_output=True, text=True, timeout=60)
            output = result.stdout + result.stderr
            assert result.returncode == 0, output
            assert "Unknown key" not in output and "Unknown section" not in output and "Failed" not in output, (
                output
            )

    bad = subprocess.run([str(DEPLOY / "install.sh"), "everything"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    removed = subprocess.run([str(DEPLOY / "uninstall.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0 and not (root / "opt" / "lorien").exists()
    assert config.exists() and not (root / "etc" / "systemd" / "system" / UNITS[0]).exists()
    purged = subprocess.run([str(DEPLOY / "uninstall.sh"), "--purge"], env=env, capture_output=True, text=True)
    assert (
        purged.returncode == 0
        and not (root / "etc" / "lorien").exists()
        and not (root / "srv" / "lorien").exists()
    )


def test_example_device_config_is_valid(tmp_path: Path) -> None:
    text = (DEPLOY / "device.toml.example").read_text()
    text = text.replace("/var/lib/lorien-model/model.tflite", str(tmp_path / "model.tflite"))
    text = text.replace('"/var/lib/lorien"', f'"{tmp_path / "state"}"')
    from lorien.repo.signing import generate_keypair, load_signing_key
    from tests.support.tuf_roots import signed_root

    private, _public, _keyid = generate_keypair(tmp_path / "keys")
    (tmp_path / "root.json").write_bytes(signed_root(load_signing_key(private)))
    text = text.replace("/etc/lorien/root.json", str(tmp_path / "root.json"))
    (tmp_path / "device.toml").write_text(text)
    from lorien.device.config import load_config

    config = load_config(tmp_path / "device.toml")
    assert config.family == "classifier" and config.check_interval == 3600
    rollout_keys = r"^# ((channel|device_id|pin|hold|download_window|deploy_window|max_download_rate) = )"
    (tmp_path / "rollout.toml").write_text(re.sub(rollout_keys, r"\1", text, flags=re.MULTILINE))
    rollout = load_config(tmp_path / "rollout.toml")  # the commented rollout examples are valid too
    assert (rollout.channel, rollout.pin, rollout.hold, rollout.max_download_rate) == (
        "stable",
        "1.2.0",
        True,
        65536,
    )
    assert run_lorien("device", "--config", tmp_path / "device.toml", "--port", "99999").returncode == 2
