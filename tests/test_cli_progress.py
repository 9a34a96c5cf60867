"""Progress of long work: the reporter on a (fake) terminal and in a log, and the real commands' progress lines
when stderr is not a terminal (``LORIEN_PROGRESS_INTERVAL=0``: a line at every step, no timing involved)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lorien.cli._progress import Progress
from tests.support.processes import run_lorien

EVERY_STEP = {"LORIEN_PROGRESS_INTERVAL": "0"}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_per_piece_of_work_cleared_at_the_end() -> None:
    stream = FakeTerminal()
    with Progress("publish", stream=stream, interval=0) as progress:
        progress.update("cls 1.0.0→1.1.0 patch", 512, 2048)
        progress.update("cls 1.0.0→1.1.0 patch", 2048, 2048)
        first = stream.getvalue()
        progress.update("cls 1.1.0→1.2.0 patch", 0, 4096)
    output = stream.getvalue()
    assert "cls 1.0.0→1.1.0 patch" in first and "25%" in first and "100%" in first and "2.00k" in first
    assert "cls 1.1.0→1.2.0 patch" in output[len(first) :]
    assert "publish:" not in output  # bars, not log lines
    assert output.endswith("\r") or output.endswith("\x1b[A")  # the last bar was cleared (leave=False)


def test_a_log_gets_a_line_per_interval_and_short_work_gets_none() -> None:
    stream = io.StringIO()
    progress = Progress("diff", stream=stream, interval=0)
    callback = progress.bytes("new.tflite encoded")
    assert callback is not None
    callback(0, 3 << 20)
    callback(3 << 19, 3 << 20)
    assert stream.getvalue().splitlines() == [
        "diff: new.tflite encoded: 0 % of 3.0 MiB",
        "diff: new.tflite encoded: 50 % of 3.0 MiB",
    ]
    patient = io.StringIO()
    Progress("diff", stream=patient, interval=3600).update("new.tflite encoded", 1, 2)
    assert patient.getvalue() == ""  # the first line would come after an hour of work


def test_quiet_shows_nothing_and_gives_no_callback() -> None:
    stream = FakeTerminal()
    progress = Progress("inspect", quiet=True, stream=stream, interval=0)
    assert progress.bytes("blobs re-hashed") is None
    progress.update("blobs re-hashed", 1, 2)
    assert stream.getvalue() == ""


def test_the_lorien_engine_reports_each_piece_and_segment(models_dir: Path, tmp_path: Path) -> None:
    from lorien.repo.engine import apply_patch, create_patch, verify_patch
    from lorien.repo.engine.lorien_engine import LorienEngine

    old, new = models_dir / "classifier" / "1.0.0.tflite", models_dir / "classifier" / "1.2.0.tflite"
    total = new.stat().st_size
    for index, make in enumerate(
        (
            lambda progress: create_patch(old, new, tmp_path / "p.lrnpatch", progress=progress),
            lambda progress: apply_patch(old, tmp_path / "p.lrnpatch", tmp_path / "out", progress=progress),
            lambda progress: verify_patch(old, tmp_path / "p.lrnpatch", progress=progress),
        )
    ):
        calls: list[tuple[int, int]] = []
        make(lambda done, total_bytes, calls=calls: calls.append((done, total_bytes)))
        done = [call[0] for call in calls]
        assert {call[1] for call in calls} == {total} and done == sorted(done), calls
        assert calls[0] == (0, total) and calls[-1] == (total, total)
        if index == 0:
            assert any(0 < step < total for step in done), calls  # pieces in between, not only start and end
        else:  # one call per segment between start and end (a run of pieces may have become one segment)
            assert len(calls) == len(LorienEngine().segments(tmp_path / "p.lrnpatch")) + 2, calls


def _progress_lines(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{command}: ")]


@pytest.fixture
def patch_pair(models_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    old, new = models_dir / "classifier" / "1.0.0.tflite", models_dir / "classifier" / "1.2.0.tflite"
    return old, new, tmp_path / "1.0.0-1.2.0.lrnpatch"


def test_diff_apply_and_verify_patch_log_progress_lines(
    patch_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    old, new, patch = patch_pair
    diff = run_lorien("diff", old, new, "-o", patch, env=EVERY_STEP)
    assert diff.returncode == 0, diff.stderr
    lines = _progress_lines(diff.stderr, "diff")
    assert lines[0].startswith("diff: 1.2.0.tflite encoded: 0 % of ") and lines[-1].startswith(
        "diff: 1.2.0.tflite encoded: 100 % of "
    )
    applied = run_lorien("apply", old, patch, "-o", tmp_path / "out.tflite", env=EVERY_STEP)
    assert applied.returncode == 0 and "apply: out.tflite written: 100 % of" in applied.stderr
    verified = run_lorien("verify-patch", old, patch, env=EVERY_STEP)
    assert verified.returncode == 0 and "verify-patch: 1.0.0-1.2.0.lrnpatch checked: 100 % of" in verified.stderr
    quiet = run_lorien("diff", old, new, "-o", patch, "--quiet", env=EVERY_STEP)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_bad_interval_is_refused(patch_pair: tuple[Path, Path, Path]) -> None:
    old, new, patch = patch_pair
    result = run_lorien("diff", old, new, "-o", patch, env={"LORIEN_PROGRESS_INTERVAL": "soon"})
    assert result.returncode == 2 and "LORIEN_PROGRESS_INTERVAL='soon'" in result.stderr


@pytest.mark.slow
def test_publish_and_inspect_verify_log_progress_lines(models_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    quiet = run_lorien("publish", "--models", models_dir, "--repo", tmp_path / "quiet", "-q", env=EVERY_STEP)
    assert quiet.returncode == 0 and _progress_lines(quiet.stderr, "publish") == []
    result = run_lorien("publish", "--models", models_dir, "--repo", repo, env=EVERY_STEP)
    assert result.returncode == 0, result.stderr
    lines = _progress_lines(result.stderr, "publish")
    assert "publish: classifier versions (hashing): 0 % of" in lines[0]
    assert any(line.startswith("publish: classifier versions (hashing): 100 % of") for line in lines)
    for source in ("1.0.0", "1.1.0"):
        assert f"publish: classifier {source}→1.2.0 patch: 0 % of" in "\n".join(lines)
        assert f"publish: classifier {source}→1.2.0 patch: 100 % of" in "\n".join(lines)
    inspect = run_lorien("inspect", repo, "--verify", env=EVERY_STEP)
    assert inspect.returncode == 0 and _progress_lines(inspect.stderr, "inspect")[-1].startswith(
        "inspect: blobs re-hashed: 100 % of "
    )
    assert _progress_lines(run_lorien("inspect", repo, "--verify", "-q", env=EVERY_STEP).stderr, "inspect") == []
