"""Zip containers (PyTorch checkpoints, NumPy ``.npz``): the zip tensor finder and what it buys.

Checkpoints come from :func:`bench.torch_checkpoint.write_torch_checkpoint` (``torch.save``'s zip layout,
no torch needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.torch_checkpoint import write_torch_checkpoint
from lorien.repo.engine import apply_patch, create_patch
from lorien.repo.engine.formats import find_tensors
from tests.support.model_files import mlp_tensors, nudged


def test_checkpoint_tensors_are_found_with_their_dtypes(tmp_path: Path) -> None:
    tensors = mlp_tensors(1, (64, 128, 32))
    tensors["layer1.weight"] = tensors["layer1.weight"].astype(np.float16)
    write_torch_checkpoint(tmp_path / "model.pt", tensors)
    data = (tmp_path / "model.pt").read_bytes()
    fmt, regions = find_tensors(data)
    by_name = {r.name: r for r in regions}
    assert fmt == "zip"
    for index, array in enumerate(tensors.values()):
        region = by_name[f"data/{index}"]
        assert data[region.offset : region.end] == array.tobytes()
        assert region.dtype == array.dtype.name


def test_npz_arrays_are_found_after_their_headers(tmp_path: Path) -> None:
    tensors = mlp_tensors(2, (64, 128, 32))
    np.savez(tmp_path / "model.npz", **tensors)
    data = (tmp_path / "model.npz").read_bytes()
    fmt, regions = find_tensors(data)
    by_name = {r.name: r for r in regions}
    assert fmt == "zip"
    for name, array in tensors.items():
        region = by_name[f"{name}.npy"]
        assert data[region.offset : region.end] == array.tobytes()
        assert (region.dtype, region.shape) == ("float32", array.shape)


@pytest.mark.parametrize("kind", ["pt", "npz"])
def test_zip_retrain_round_trips_and_beats_whole_file_zstd(kind: str, tmp_path: Path) -> None:
    tensors = mlp_tensors(3, (256, 512, 256))
    old, new = tmp_path / f"old.{kind}", tmp_path / f"new.{kind}"
    for path, values in ((old, tensors), (new, nudged(tensors, 4))):
        if kind == "pt":
            write_torch_checkpoint(path, values)
        else:
            np.savez(path, **values)
    patch = tmp_path / "p"
    create_patch(old, new, patch)
    apply_patch(old, patch, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    generic = create_patch(old, new, tmp_path / "generic", engine="zstd")
    assert patch.stat().st_size < 0.8 * generic.patch_size


def test_damaged_archives_are_generic_bytes(tmp_path: Path) -> None:
    np.savez(tmp_path / "model.npz", a=np.arange(4096, dtype=np.float32))
    data = bytearray((tmp_path / "model.npz").read_bytes())
    for cut in (10, len(data) // 2, len(data) - 10):
        find_tensors(bytes(data[:cut]))  # never raises
    data[-30:] = b"\xff" * 30
    find_tensors(bytes(data))
