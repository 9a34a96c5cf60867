"""Turning a plan's steps into one verified candidate file in ``tmp/``: download every step, then apply patches.

Data flow::

    Step (plan) ─▶ tmp/<sha256>.part (repo.download: resumable, size + MD5 + SHA-256) ─▶ tmp/<sha256>.blob
      ─▶ full model: the blob is the candidate
      ─▶ compressed full model: the blob decoded in-process (repo.engine.full) ─▶ tmp/<target_sha256>.model,
         SHA-256 checked like a patch's result
      ─▶ patches: model path + blob ─▶ tmp/<target_sha256>.model (repo.engine), SHA-256 checked, the next
         patch applies to that ─▶ the last one is the candidate

While a download waits to retry (``[retry]``: a time budget), the message says so: ``full 1.2.0: 300000/2000000
bytes; connection lost, retry 3 in 16 s (ConnectionError: …)``.

Both are idempotent, so a restart after a crash just runs them again: a blob already complete and verified is
not fetched again, a ``.part`` resumes, and an intermediate file with the right SHA-256 is not re-applied.
Crash points: ``mid-download`` (half of a blob), ``mid-apply`` (after each patch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lorien.device.plan import Step
from lorien.device.report import Reporter
from lorien.device.state import Stage
from lorien.repo.download import Downloader, DownloadRequest, Progress
from lorien.repo.engine import ApplyResult, apply_patch
from lorien.repo.engine.full import decompress_model
from lorien.repo.errors import IntegrityError
from lorien.repo.hashing import digest_file, sha256_file
from lorien.repo.limits import Limits
from lorien.repo.testhooks import crash_point

DownloaderFactory = Callable[[Callable[[Progress], None]], Downloader]


def download_steps(
    steps: list[Step],
    tmp_dir: Path,
    url_of: Callable[[str], str],
    downloader_factory: DownloaderFactory,
    reporter: Reporter,
) -> list[Path]:
    """The verified blob of every step, in order (``url_of`` maps a blob's repository path to its URL)."""
    total = sum(step.size for step in steps)
    blobs = []
    for index, step in enumerate(steps):
        final = tmp_dir / f"{step.sha256}.blob"
        if final.exists():
            digests = digest_file(final)
            if (digests.size, digests.md5, digests.sha256) == (step.size, step.md5, step.sha256):
                blobs.append(final)
                continue
            final.unlink()
        on_progress = _on_progress(step, sum(s.size for s in steps[:index]), total, reporter)
        part = final.with_suffix(".part")
        request = DownloadRequest(url_of(step.blob), part, step.size, step.md5, step.sha256)
        downloader_factory(on_progress).fetch(request)
        os.replace(part, final)
        blobs.append(final)
    return blobs


def _on_progress(step: Step, done_before: int, total: int, reporter: Reporter) -> Callable[[Progress], None]:
    crashed = False
    resumed_at: int | None = None  # where the .part stood when the connection was lost

    def on_progress(progress: Progress) -> None:
        nonlocal crashed, resumed_at
        done = done_before + progress.done
        eta = f", ETA {progress.eta:.0f} s" if progress.eta is not None else ""
        where = f"{step.kind} {step.target}: {progress.done}/{progress.total} bytes"
        if (waiting := progress.waiting) is not None:
            resumed_at = progress.done
            message = (
                f"{where}; connection lost, retry {waiting.attempt} in {waiting.pause:g} s ({waiting.reason})"
            )
        elif progress.done >= progress.total:
            message = f"{where}; verifying size, MD5 and SHA-256"
        else:
            resumed = f", resumed at byte {resumed_at}" if resumed_at else ""
            message = f"{where} ({progress.rate / 1e6:.2f} MB/s{eta}{resumed})"
        reporter.show(Stage.DOWNLOADING, message, 100 * done / total)
        if not crashed and progress.done >= progress.total // 2:
            crashed = True
            crash_point("mid-download")

    return on_progress


def apply_steps(
    steps: list[Step], blobs: list[Path], model_path: Path, tmp_dir: Path, limits: Limits, reporter: Reporter
) -> Path:
    """The candidate: the full model's blob, the compressed model decoded, or the result of the patch chain
    applied to ``model_path``."""
    if steps[0].kind == "full":
        return blobs[0]
    if steps[0].kind == "compressed":
        return _decompressed(steps[0], blobs[0], tmp_dir, limits, reporter)
    current = model_path
    for index, (step, blob) in enumerate(zip(steps, blobs, strict=True)):
        current = _verified_output(
            step,
            tmp_dir,
            lambda output, source=current, blob=blob: apply_patch(source, blob, output, limits=limits),
            lambda index=index, step=step: reporter.report(
                Stage.APPLYING,
                f"applying patch {index + 1} of {len(steps)}: {step.source} → {step.target}",
                100 * index / len(steps),
            ),
            f"patch {step.id} produced",
        )
    return current


def _decompressed(step: Step, blob: Path, tmp_dir: Path, limits: Limits, reporter: Reporter) -> Path:
    return _verified_output(
        step,
        tmp_dir,
        lambda output: decompress_model(blob, output, limits),
        lambda: reporter.report(Stage.APPLYING, f"decompressing full {step.target}", 0.0),
        f"compressed {step.target} decoded to",
    )


def _verified_output(
    step: Step, tmp_dir: Path, make: Callable[[Path], ApplyResult], announce: Callable[[], None], what: str
) -> Path:
    """``tmp/<target_sha256>.model`` made by ``make`` (unless a crash left it complete already), its SHA-256
    the step's target's; crash point ``mid-apply`` after it."""
    output = tmp_dir / f"{step.target_sha256}.model"
    if not (output.exists() and sha256_file(output) == step.target_sha256):
        announce()
        result = make(output)
        if result.target_sha256 != step.target_sha256:
            output.unlink(missing_ok=True)
            raise IntegrityError(
                f"{what} sha256 {result.target_sha256}, the manifest promises {step.target_sha256}"
            )
    crash_point("mid-apply")
    return output
