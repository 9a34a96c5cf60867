"""The entropy bound of a dense float16/bfloat16 update, reported beside lorien's patch for those pairs.

    old, new files → tensors found and aligned as lorien's planner does (:mod:`repo.engine.planning`)
      → every aligned 2-byte float tensor of unchanged length: ``zigzag(new − old)`` as int16 (the change in
        ulps, sign folded into the low bit), concatenated over the whole tensor data
      → order-0 entropy of those 16-bit values, in bytes

No coder that codes each value on its own, with one model for the whole file, can beat it on average; the
bytes outside those tensors are not counted, so a patch can sit a little above it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorien.repo.engine.formats import find_tensors
from lorien.repo.engine.planning import align

HALF_FLOATS = ("float16", "bfloat16")


def zigzag_entropy_bytes(old: Path, new: Path) -> float | None:
    """Order-0 entropy (bytes) of the zigzag ulp difference over the aligned half-float tensors; None if none."""
    old_data, new_data = old.read_bytes(), new.read_bytes()
    old_regions, new_regions = find_tensors(memoryview(old_data))[1], find_tensors(memoryview(new_data))[1]
    matches = align(old_regions, new_regions)
    counts = np.zeros(1 << 16, dtype=np.int64)
    for region in new_regions:
        match = matches.get(f"{region.name}@{region.offset}")
        if region.dtype not in HALF_FLOATS or match is None or match.length != region.length:
            continue
        before = np.frombuffer(old_data, np.int16, region.length // 2, match.offset)
        after = np.frombuffer(new_data, np.int16, region.length // 2, region.offset)
        difference = after - before
        counts += np.bincount(((difference << 1) ^ (difference >> 15)).view(np.uint16), minlength=1 << 16)
    total = int(counts.sum())
    if not total:
        return None
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum() * total / 8)
