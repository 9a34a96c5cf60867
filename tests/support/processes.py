"""The real ``lorien`` command in subprocesses: one-shot runs, a live ``lorien serve``, and the CI rule that a
missing real component (nginx, inotify, a browser) fails instead of skipping."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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


@contextmanager
def serving(repo: Path, *extra: str) -> Iterator[LiveServer]:
    """A ``lorien serve`` of ``repo`` for the ``with`` block (a fixture's lifetime), stopped afterwards."""
    live = start_server(repo, *extra)
    try:
        yield live
    finally:
        live.process.terminate()
        live.process.wait(10)


def require(condition: bool, reason: str) -> None:
    """Skip when a real component (nginx, inotify, …) is missing — but fail in CI, where .ci/run sets
    LORIEN_REQUIRE_REAL_COMPONENTS=1 and installs everything, so a skip there would hide a broken setup."""
    if condition:
        return
    if os.environ.get("LORIEN_REQUIRE_REAL_COMPONENTS") == "1":
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)
