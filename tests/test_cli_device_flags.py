"""``lorien device`` flags are derived from the configuration dataclass: one per key, same names as before,
and their values reach ``load_config`` as the TOML keys they replace."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from lorien.cli import build_parser
from lorien.device.config import (
    DeviceConfig,
    RetrySettings,
    ServiceControl,
    config_flags,
    load_config,
    overrides_from_flags,
)
from lorien.repo.errors import BadInputError

REQUIRED = ["--repo-url", "http://127.0.0.1:1/", "--family", "fam", "--model-path", "m", "--state-dir", "s"]


def _overrides(*flags: str) -> dict:
    return overrides_from_flags(vars(build_parser().parse_args(["device", *flags])))


def test_every_config_key_but_the_limits_table_has_its_flag() -> None:
    assert {flag.key[0] for flag in config_flags()} == {f.name for f in fields(DeviceConfig)} - {"limits"}
    assert {flag.flag for flag in config_flags()} == {
        "--repo-url", "--family", "--model-path", "--state-dir", "--host", "--port", "--api-token", "--insecure-no-token",
        "--check-interval", "--callback-url", "--keep-backups", "--health-check", "--health-check-litert",
        "--health-timeout", "--stop-timeout", "--trusted-root", "--insecure-allow-unsigned", "--service-unit",
        "--service-command", "--service-pid-file", "--retry-total-seconds", "--retry-max-backoff",
        "--retry-first-backoff", "--device-id", "--channel", "--pin", "--hold", "--download-window", "--deploy-window",
        "--max-download-rate",
    }  # fmt: skip


def test_flags_not_given_override_nothing() -> None:
    assert _overrides() == {}


def test_flag_values_become_the_toml_keys_they_replace() -> None:
    overrides = _overrides(
        *REQUIRED,
        "--port", "8080",
        "--check-interval", "0.5",
        "--health-check-litert",
        "--trusted-root", "root.json",
        "--service-command", "app --serve",
        "--service-pid-file", "app.pid",
    )  # fmt: skip
    assert overrides == {
        "repo_url": "http://127.0.0.1:1/",
        "family": "fam",
        "model_path": "m",
        "state_dir": "s",
        "port": 8080,
        "check_interval": 0.5,
        "health_check_litert": True,
        "trusted_root": "root.json",
        "service": {"command": "app --serve", "pid_file": "app.pid"},
    }


def test_flags_pass_the_checks_of_the_config_file() -> None:
    config = load_config(
        None,
        _overrides(
            *REQUIRED, "--insecure-allow-unsigned", "--service-command", "app --serve", "--service-pid-file", "p"
        ),
    )
    assert config.service.command == ["app", "--serve"] and config.service.pid_file == Path("p")
    assert config.insecure_allow_unsigned and config.port == 12315
    unit = load_config(None, _overrides(*REQUIRED, "--insecure-allow-unsigned", "--service-unit", "app.service"))
    assert unit.service == ServiceControl(unit="app.service")


def test_retry_flags_change_their_key_and_keep_the_files_others(tmp_path: Path) -> None:
    config_file = tmp_path / "device.toml"
    config_file.write_text("[retry]\ntotal_seconds = 600\nmax_backoff = 30\n")
    config = load_config(
        config_file, _overrides(*REQUIRED, "--insecure-allow-unsigned", "--retry-max-backoff", "5")
    )
    assert config.retry == RetrySettings(total_seconds=600.0, max_backoff=5.0, first_backoff=0.5)
    policy = config.retry.policy
    assert (policy.attempts, policy.backoff, policy.max_backoff, policy.budget) == (None, 0.5, 5.0, 600.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("total_seconds = -1", "retry.total_seconds: must be a number of seconds from 0 to 604800, got -1"),
        ('max_backoff = "1m"', "retry.max_backoff: must be a number of seconds from 0.01 to 3600, got '1m'"),
        ("first_backoff = 10\nmax_backoff = 5", "retry.first_backoff: must not exceed retry.max_backoff (5)"),
        ("attempts = 6", "retry.attempts: unknown option (known: total_seconds, max_backoff, first_backoff)"),
    ],
)
def test_retry_table_is_checked(tmp_path: Path, table: str, message: str) -> None:
    config_file = tmp_path / "device.toml"
    config_file.write_text(f"[retry]\n{table}\n")
    with pytest.raises(BadInputError) as caught:
        load_config(config_file, _overrides(*REQUIRED, "--insecure-allow-unsigned"))
    assert str(caught.value) == f"{config_file}: {message}"
