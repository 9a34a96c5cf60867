"""Exit codes by cause, through the real command: what a script calling ``lorien`` can rely on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import run_lorien


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_file_system_refusal_exits_5_naming_the_path_and_the_job(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 100)
    in_the_way = tmp_path / "not-a-directory"
    in_the_way.write_text("a file where the output directory should be")
    result = run_lorien("diff", model, model, "-o", in_the_way / "x.patch")
    assert result.returncode == 5
    line = _one_line(result.stderr)
    assert line.startswith("lorien diff: error: ") and str(in_the_way) in line


@pytest.mark.slow
def test_unreachable_server_exits_4_with_one_line() -> None:
    result = run_lorien("inspect", "http://127.0.0.1:9/")  # nothing listens on the discard port
    assert result.returncode == 4 and result.stdout == ""
    assert "http://127.0.0.1:9/metadata/1.root.json" in _one_line(result.stderr)  # the first file inspect reads


def test_closed_stdout_stops_quietly(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 100)
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` that has already exited
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lorien.cli", "fingerprint", str(model), "--json"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(writer)
    assert result.returncode == 141 and result.stderr == ""
