"""The `lorien` command itself: usage errors, and the end-to-end demo as README runs it."""

from __future__ import annotations

import re

import pytest

from lorien.repo.engine import available_engines
from tests.support.processes import run_lorien


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    result = run_lorien("demo", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "device updater API at http://127.0.0.1:" in out and "plan: patch 1.0.0→1.2.0" in out
    assert "model is now 1.2.0" in out and "verified" in out
    match = re.search(r"full model (\d+) bytes, downloaded (\d+) bytes", out)
    assert match and int(match.group(2)) < int(match.group(1)) / 5
    assert "labels.txt: keep (0 B), model.tflite: patch" in out and "(switched as one)" in out
    bundle = re.search(r"full bundle (\d+) bytes, downloaded (\d+) bytes", out)
    assert bundle and int(bundle.group(2)) < int(bundle.group(1)) / 5


def test_usage_errors_exit_2() -> None:
    assert run_lorien().returncode == 2
    result = run_lorien("publish", "--models", "x")
    assert result.returncode == 2 and "--repo" in result.stderr
    assert run_lorien("nonsense").returncode == 2


def test_help_lists_commands() -> None:
    out = run_lorien("--help").stdout
    for command in ("fingerprint", "publish", "inspect", "serve", "demo"):
        assert command in out


def test_engine_option_lists_the_engines_of_the_registry() -> None:
    for command in ("diff", "publish", "watch"):
        assert (
            f"patch engine: {' | '.join(available_engines())} (default lorien)"
            in run_lorien(command, "--help").stdout
        )
