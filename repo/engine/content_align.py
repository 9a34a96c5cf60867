"""Create-side alignment by content: a new tensor whose name points at the wrong old tensor is moved to the old
tensor of the same length whose bytes it resembles most.

Names do not always survive an update: ``torch.save`` names its storages ``data/0``, ``data/1``, … in the order
the tensors are first used, so a layer added or removed renumbers every storage after it, and an entry that
keeps its name then holds another layer's weights. Aligning those by name predicts each tensor from the wrong
one (and every unnamed tensor after them from nothing), which loses to a whole-file ``zstd --patch-from``.

    old, new regions and the name/shape/size alignment of :func:`~repo.engine.planning.align`
      → new tensors from ``MIN_LENGTH`` bytes grouped with the old tensors of the same length
      → for each: a sample of its bytes (``SLICES`` evenly spread slices, the whole tensor when short)
        compared byte for byte with the same positions of every old candidate (one numpy comparison per new
        tensor); the count of equal bytes is the score
      → the best-scoring old tensor replaces the current match only when it beats that match's score by
        ``MARGIN`` of the sample (an unchanged or fine-tuned tensor scores far above an unrelated one of the
        same shape; ties, e.g. layer norms that are all ones, keep the name)

Only lengths with at most ``MAX_PAIRS`` (new × old) tensor pairs are compared, so the cost stays a few
milliseconds however many tensors a model has. Old tensors may be matched more than once (tied weights):
a match only says which old bytes predict a piece.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lorien.repo.engine.regions import Buffer, TensorRegion

MIN_LENGTH = 1024  # smaller tensors are coded with the generic bytes around them anyway
SLICES = 64
SLICE = 64  # bytes per slice: a sample of up to 4 KiB per tensor
MARGIN = 8  # a content match must beat the current one by 1/MARGIN of the sample's bytes
MAX_PAIRS = 1 << 16  # (new, old) pairs compared per length at most


def by_content(
    old: list[TensorRegion],
    new: list[TensorRegion],
    matches: dict[str, TensorRegion],
    old_data: Buffer,
    new_data: Buffer,
) -> dict[str, TensorRegion]:
    """``matches`` (new ``name@offset`` → old region) with the matches content contradicts replaced."""
    olds: dict[int, list[TensorRegion]] = defaultdict(list)
    for region in old:
        if region.length >= MIN_LENGTH:
            olds[region.length].append(region)
    news: dict[int, list[TensorRegion]] = defaultdict(list)
    for region in new:
        if region.length in olds:
            news[region.length].append(region)
    refined = dict(matches)
    for length, group in news.items():
        candidates = olds[length]
        if len(group) * len(candidates) > MAX_PAIRS:
            continue
        positions = _positions(length)
        samples = np.stack([_sample(old_data, region, positions) for region in candidates])
        index = {candidate.offset: i for i, candidate in enumerate(candidates)}
        for region in group:
            key = f"{region.name}@{region.offset}"
            scores = (samples == _sample(new_data, region, positions)).sum(axis=1)
            best = int(np.argmax(scores))
            current = matches.get(key)
            found = index.get(current.offset) if current is not None and current.length == length else None
            if found == best:
                continue
            if found is not None:
                baseline = int(scores[found])
            elif len(candidates) > 1:
                baseline = int(np.median(scores))  # no same-length match: what an unrelated tensor scores
            else:  # nothing to compare with: only identical sampled bytes move it
                baseline = len(positions) if int(scores[best]) < len(positions) else 0
            if int(scores[best]) - baseline >= max(1, len(positions) // MARGIN):
                refined[key] = candidates[best]
    return refined


def _positions(length: int) -> np.ndarray:
    """Byte positions sampled from a tensor of ``length`` bytes: all of it when short, else ``SLICES`` slices of
    ``SLICE`` bytes at evenly spread 8-byte-aligned starts."""
    if length <= SLICES * SLICE:
        return np.arange(length)
    step = (length - SLICE) // (SLICES - 1) // 8 * 8
    starts = np.arange(SLICES) * step
    return (starts[:, None] + np.arange(SLICE)[None, :]).ravel()


def _sample(data: Buffer, region: TensorRegion, positions: np.ndarray) -> np.ndarray:
    return np.frombuffer(data, np.uint8, region.length, region.offset)[positions]
