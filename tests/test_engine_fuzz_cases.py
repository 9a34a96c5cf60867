"""Pairs ``bench/fuzz_keep.py`` found breaking the engine's "Keep" promise (issue 15): a patch never larger than
the best generic tool + 1 KiB. Each pair is built here from code, minimised; the generic tool is bsdiff4 (a main
dependency: the COVERS codec's matcher), so the bound is measured, not assumed."""

from __future__ import annotations

from pathlib import Path

import bsdiff4
import numpy as np
import pytest

from lorien.repo.engine import apply_patch, create_patch

SLACK = 1024  # "never larger than the best generic tool + 1 KiB"


def _fp16_dense(elements: int, seed: int = 15) -> tuple[bytes, bytes]:
    """Raw float16 weights and their dense fine-tune (noise relative to |w|, as bench.corpus's ``fp16-dense``):
    a file of no format lorien parses, so all of it is generic bytes."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(elements, dtype=np.float32) * np.float32(0.05)
    tuned = weights * (np.float32(1) + rng.standard_normal(elements, dtype=np.float32) * np.float32(1e-3))
    return weights.astype(np.float16).tobytes(), tuned.astype(np.float16).tobytes()


def _check(tmp_path: Path, old: bytes, new: bytes) -> tuple[int, int]:
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    stats = create_patch(tmp_path / "old", tmp_path / "new", tmp_path / "patch")
    apply_patch(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new
    return stats.patch_size, len(bsdiff4.diff(old, new))


@pytest.mark.parametrize(
    ("elements", "header"),
    [(64_000, b"\x00"), (64_000, b"v2"), (64_000, b"HDR!"), (200_000, b"\x00")],
    ids=["128KB-1-byte", "128KB-2-bytes", "128KB-4-bytes", "400KB-1-byte-sampled"],
)
def test_generic_fp16_fine_tune_behind_a_grown_header_stays_within_bsdiff4(
    tmp_path: Path, elements: int, header: bytes
) -> None:
    """fuzz_keep ``bytes-insert`` / ``bytes-mix`` on a ``pt`` checkpoint whose zip no longer parses, minimised:
    128 KB of float16 weights, densely fine-tuned, behind a header that grew by a few bytes. Nothing is found as
    a tensor and no piece sits at the same place in both files, so the plan is one zstd frame with the old file
    as dictionary (``zstd --patch-from``, ~83 KB), and the whole file as covers (bsdiff's model) was tried only
    for plans under 64 KiB: bsdiff4 makes ~26 KB of it (the 400 KB pair goes through the sampled estimate
    that decides whether covers are worth trying on a larger new file)."""
    old, tuned = _fp16_dense(elements)
    lorien, bsdiff = _check(tmp_path, old, header + tuned)
    assert lorien <= bsdiff + SLACK, (lorien, bsdiff)
