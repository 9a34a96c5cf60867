"""Dense float16/bfloat16 fine-tunes: the rANS difference codec (DIFF_RANS, container version 2).

Checks the coder round-trips and refuses damaged input cleanly, that a dense half-precision fine-tune costs
within 3 % of the order-0 entropy of its ulp differences, and that version-1 patches (stored in
``tests/data/engine_v1``, made before version 2 existed) still apply.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorien.repo.engine import apply_patch, codecs, create_patch, patch_info, rans
from lorien.repo.engine.container import HEADER, Codec, Segment, Transform, version_for
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file
from tests.support.model_files import mlp_tensors, write_safetensors

V1 = Path(__file__).parent / "data" / "engine_v1"
V1_TARGET_SHA256 = "98713eab51470c839c3950b534ed332ea0ccbe2d0c41e229c904231d8f55aae9"


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(0, 20_000),
    spread=st.integers(1, 256),
    seed=st.integers(0, 2**32 - 1),
)
def test_rans_round_trips_any_symbols(count: int, spread: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = np.minimum(rng.geometric(1 / spread, count) - 1, 255).astype(np.uint8)
    freqs = rans.frequencies(symbols)
    states, words = rans.encode(symbols, freqs, rans.lanes_for(freqs, count))
    assert np.array_equal(rans.decode(states, words, freqs, count), symbols)


def _diff_rans(target: bytes, reference: bytes) -> tuple[Segment, bytes]:
    payload = codecs.diff_rans_payload(target, reference)
    segment = Segment(
        Codec.DIFF_RANS, 2, Transform.NONE, len(target), 0, len(reference), len(payload), zlib.crc32(payload)
    )
    return segment, payload


def _half_pair(seed: int, count: int, ulps: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 1 << 16, count, dtype=np.uint16)
    new = old + rng.integers(-ulps, ulps + 1, count).astype(np.uint16)  # wraps, as the codec does
    return new.tobytes(), old.tobytes()


@pytest.mark.parametrize("ulps", [0, 1, 40, 300, 40_000])  # 300 and up: escaped values
def test_diff_rans_codec_round_trips(ulps: int) -> None:
    target, reference = _half_pair(ulps, 10_001, ulps)
    segment, payload = _diff_rans(target, reference)
    assert codecs.decode(segment, payload, reference) == target


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_damaged_diff_rans_payloads_fail_cleanly(data: st.DataObject) -> None:
    target, reference = _half_pair(5, 3000, 300)
    segment, payload = _diff_rans(target, reference)
    damaged = bytearray(payload)
    for position in data.draw(st.lists(st.integers(0, len(damaged) - 1), min_size=1, max_size=4)):
        damaged[position] ^= data.draw(st.integers(1, 255))
    damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
    try:
        output = codecs.decode(segment, bytes(damaged), reference)
    except PatchError:
        return
    assert len(output) == len(target)  # a wrong but well-formed result is caught by the patch's SHA-256


def _order0_bytes(old: Path, new: Path, header: int) -> float:
    before = np.frombuffer(old.read_bytes()[header:], np.int16)
    after = np.frombuffer(new.read_bytes()[header:], np.int16)
    difference = after - before
    _, counts = np.unique((difference << 1) ^ (difference >> 15), return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dense_half_precision_fine_tune_is_within_3_percent_of_its_entropy(dtype: str, tmp_path: Path) -> None:
    half = np.dtype(np.float16) if dtype == "float16" else np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    tensors = mlp_tensors(3, (512, 1024, 512))
    rng = np.random.default_rng(4)
    nudged = {k: v * (1 + rng.standard_normal(v.shape, dtype=np.float32) * 2e-3) for k, v in tensors.items()}
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, {k: v.astype(half) for k, v in tensors.items()})
    write_safetensors(new, {k: v.astype(half) for k, v in nudged.items()})
    header = 8 + struct.unpack("<Q", old.read_bytes()[:8])[0]
    patch = tmp_path / "p"
    create_patch(old, new, patch)
    apply_patch(old, patch, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    assert "DIFF_RANS" in {s.codec.name for s in LorienEngine().segments(patch)}
    assert patch.stat().st_size <= 1.03 * _order0_bytes(old, new, header)
    assert version_for(LorienEngine().segments(patch)) == 2  # the codecs need version 2 ...
    LorienEngine(max_version=4).create(old, new, patch)  # ... which a classic-layout patch declares
    assert HEADER.unpack(patch.read_bytes()[: HEADER.size])[1] == 2


def test_patches_without_new_codecs_stay_version_1(tmp_path: Path) -> None:
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(bytes(range(256)) * 64)
    new.write_bytes(bytes(range(256)) * 60 + b"changed")
    create_patch(old, new, tmp_path / "p", max_format=4)  # capped below the compact layout (version 5)
    assert HEADER.unpack((tmp_path / "p").read_bytes()[: HEADER.size])[1] == 1
    create_patch(old, new, tmp_path / "p")
    assert patch_info(tmp_path / "p").format_version == 5


def test_a_stored_version_1_patch_still_applies(tmp_path: Path) -> None:
    data = (V1 / "fp16.lrnpatch").read_bytes()
    assert HEADER.unpack(data[: HEADER.size])[1] == 1
    result = apply_patch(V1 / "old.safetensors", V1 / "fp16.lrnpatch", tmp_path / "out")
    assert result.target_sha256 == V1_TARGET_SHA256 == sha256_file(tmp_path / "out")


def test_a_version_1_header_cannot_carry_a_version_2_codec(tmp_path: Path) -> None:
    target, reference = _half_pair(1, 5000, 3)
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(reference)
    new.write_bytes(target)
    engine = LorienEngine(max_version=4)  # the classic layout: a version-2 header
    engine.create(old, new, tmp_path / "p")
    data = bytearray((tmp_path / "p").read_bytes())
    assert [s.codec for s in engine.segments(tmp_path / "p")] == [Codec.DIFF_RANS]
    table_end = HEADER.size + 40
    data[8:10] = (1).to_bytes(2, "little")
    data[96:100] = zlib.crc32(bytes(data[HEADER.size : table_end]), zlib.crc32(bytes(data[:96]))).to_bytes(
        4, "little"
    )
    (tmp_path / "v1").write_bytes(bytes(data))
    with pytest.raises(PatchError, match="codecs or backends of version 2"):
        apply_patch(old, tmp_path / "v1", tmp_path / "out")
