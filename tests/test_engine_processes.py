"""Create in a process pool (:mod:`repo.engine.pool`): byte-identical to the single-process patch, applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorien.repo.engine import apply_patch
from lorien.repo.engine.container import Codec
from lorien.repo.engine.lorien_engine import LorienEngine
from tests.support.model_files import mlp_tensors, nudged, write_safetensors


def test_two_worker_processes_make_the_same_patch_as_one(tmp_path: Path) -> None:
    # layer1.weight (1.1 MB) is larger than a RANGES run (planning.GROUP), so the plan keeps several pieces
    tensors = mlp_tensors(5, (64, 256, 1100, 128))
    changed = nudged(tensors, 6)
    changed["layer1.weight"] = tensors["layer1.weight"].copy()  # a copy among the residual segments
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, tensors)
    write_safetensors(new, {k: v.astype(np.float32) for k, v in changed.items()})
    single, pooled = tmp_path / "single.patch", tmp_path / "pooled.patch"
    LorienEngine(level=3, workers=1, processes=False).create(old, new, single)
    LorienEngine(level=3, workers=2, processes=True).create(old, new, pooled)
    codecs = [s.codec for s in LorienEngine().segments(pooled)]
    assert len(codecs) > 2 and Codec.RANGES in codecs  # ranges pieces (with their parts) cross to workers too
    assert pooled.read_bytes() == single.read_bytes()
    apply_patch(old, pooled, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
