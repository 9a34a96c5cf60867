"""What ``/progress`` says during a download and a patch chain (device/steps.py), driven with progress reports
and a patch chain of its own — no processes: waiting to retry, resumed at byte N, verifying, patch k of n."""

from __future__ import annotations

from pathlib import Path

from lorien.device.plan import Step
from lorien.device.state import Stage
from lorien.device.steps import _on_progress, apply_steps
from lorien.repo.download import Progress
from lorien.repo.engine import create_patch
from lorien.repo.hashing import sha256_file
from lorien.repo.limits import DEFAULT_LIMITS
from lorien.repo.transport import Waiting


class RecordingReporter:
    def __init__(self) -> None:
        self.messages: list[tuple[Stage, str]] = []

    def show(self, stage: Stage, message: str, percent: float) -> None:
        self.messages.append((stage, message))

    report = show


def _step(**overrides: object) -> Step:
    values = {"kind": "full", "blob": "blobs/x", "size": 1000, "md5": "0" * 32, "sha256": "1" * 64}
    values |= {"target": "1.2.0", "target_sha256": "2" * 64}
    return Step(**(values | overrides))  # type: ignore[arg-type]


def test_download_messages_say_waiting_resumed_and_verifying() -> None:
    reporter = RecordingReporter()
    on_progress = _on_progress(_step(), 0, 1000, reporter)  # type: ignore[arg-type]
    on_progress(Progress(100, 1000, 5e5, 2.0))
    on_progress(Progress(300, 1000, 0.0, None, Waiting(3, 16, "connection reset")))
    on_progress(Progress(400, 1000, 5e5, 1.0))
    on_progress(Progress(1000, 1000, 5e5, 0.0))
    texts = [message for _, message in reporter.messages]
    assert "resumed" not in texts[0] and "ETA 2 s" in texts[0]
    assert texts[1] == "full 1.2.0: 300/1000 bytes; connection lost, retry 3 in 16 s (connection reset)"
    assert "resumed at byte 300" in texts[2] and "ETA" in texts[2]
    assert texts[3] == "full 1.2.0: 1000/1000 bytes; verifying size, MD5 and SHA-256"


def test_a_patch_chain_says_which_patch_of_how_many(tmp_path: Path) -> None:
    versions = [tmp_path / f"{n}.bin" for n in range(3)]
    for number, path in enumerate(versions):
        path.write_bytes(bytes(range(256)) * 64 + bytes([number]) * 100)
    steps, blobs = [], []
    for number in (1, 2):
        blob = tmp_path / f"{number}.patch"
        create_patch(versions[number - 1], versions[number], blob)
        digest = sha256_file(versions[number])
        steps.append(_step(kind="patch", source=f"1.{number - 1}", target=f"1.{number}", target_sha256=digest))
        blobs.append(blob)
    reporter = RecordingReporter()
    output = apply_steps(steps, blobs, versions[0], tmp_path, DEFAULT_LIMITS, reporter)  # type: ignore[arg-type]
    assert output.read_bytes() == versions[2].read_bytes()
    assert [message for _, message in reporter.messages] == [
        "applying patch 1 of 2: 1.0 → 1.1",
        "applying patch 2 of 2: 1.1 → 1.2",
    ]
