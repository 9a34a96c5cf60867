"""Small dense float16/bfloat16 fine-tunes: many tiny tensors grouped into one piece share one rANS table.

Checks that a small model (tensors of 64 B to 8 KiB, most under the 4 KiB tensor threshold) lands within 3 % of
the order-0 entropy of its ulp differences, round-trips byte-exactly, and that a file whose small tensors
cannot be grouped (odd offsets) falls back to the round-2 plan.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lorien.repo.engine import apply_patch, create_patch
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.planning import MIN_TENSOR, Piece, group_half_floats
from lorien.repo.limits import DEFAULT_LIMITS
from tests.support.model_files import mlp_tensors, write_safetensors


def _order0_bytes(old: Path, new: Path) -> float:
    header = 8 + struct.unpack("<Q", old.read_bytes()[:8])[0]
    difference = np.frombuffer(new.read_bytes()[header:], np.int16) - np.frombuffer(
        old.read_bytes()[header:], np.int16
    )
    _, counts = np.unique((difference << 1) ^ (difference >> 15), return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum() / 8)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_small_half_precision_model_is_within_3_percent_of_its_entropy(dtype: str, tmp_path: Path) -> None:
    half = np.dtype(np.float16) if dtype == "float16" else np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    tensors = {f"block{i}.{k}": v for i in range(6) for k, v in mlp_tensors(i, (32, 96, 64, 48)).items()}
    rng = np.random.default_rng(7)
    nudged = {k: v * (1 + rng.standard_normal(v.shape, dtype=np.float32) * 2e-3) for k, v in tensors.items()}
    old, new, patch, out = (tmp_path / name for name in ("old.safetensors", "new.safetensors", "p", "out"))
    write_safetensors(old, {k: v.astype(half) for k, v in tensors.items()})
    write_safetensors(new, {k: v.astype(half) for k, v in nudged.items()})
    create_patch(old, new, patch)
    apply_patch(old, patch, out)
    assert out.read_bytes() == new.read_bytes()
    shared = [s.codec.name for s in LorienEngine().segments(patch) if s.codec.name in ("DIFF_RANS", "RANGES")]
    assert len(shared) == 1  # every tensor in one rANS stream: grouped (DIFF_RANS) or listed as ranges (RANGES)
    assert patch.stat().st_size <= 1.03 * _order0_bytes(old, new)


def _tensor(offset: int, length: int, old_offset: int) -> Piece:
    return Piece(offset, length, 2, True, (old_offset, length), None)


def test_generic_bytes_join_only_between_half_float_pieces() -> None:
    pieces = [
        Piece(0, 100, same=(0, 100)),  # leading header: stays apart
        _tensor(100, 64, 100),
        Piece(164, 10, same=(164, 10)),
        _tensor(174, 2048, 174),
        Piece(2222, 40, same=(2222, 40)),  # trailing bytes: stay apart
    ]
    grouped = group_half_floats(pieces, DEFAULT_LIMITS)
    assert [(p.offset, p.length) for p in grouped] == [(0, 100), (100, 2122), (2222, 40)]
    assert grouped[1].same == (100, 2122) and grouped[1].width == 2


def test_odd_gaps_keep_pieces_apart() -> None:
    pieces = [_tensor(0, 64, 0), Piece(64, 5, same=(64, 5)), _tensor(69, 64, 69)]
    grouped = group_half_floats(pieces, DEFAULT_LIMITS)
    assert len(grouped) == 3 and all(p.length < MIN_TENSOR for p in grouped)
