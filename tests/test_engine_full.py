"""A whole model compressed on its own (issue 15 item 3): ``repo.engine.full`` and the FLOAT_PLANES codec.

Round trips are byte-exact on real safetensors/GGUF/ONNX files of float32, float16 and bfloat16 tensors and on
arbitrary bytes; the planner matches nothing when there is no old file; a corrupt blob, or a patch between
two versions passed off as a compressed model, is refused with nothing written.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorien.repo.engine import candidates, codecs, patch_info
from lorien.repo.engine.container import Codec, Segment, Transform, version_for
from lorien.repo.engine.formats import find_tensors
from lorien.repo.engine.full import compress_model, decompress_model
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.planning import ALONE, plan
from lorien.repo.errors import PatchError
from lorien.repo.hashing import sha256_file
from lorien.repo.limits import DEFAULT_LIMITS
from tests.support.model_files import mlp_tensors, write_gguf, write_onnx, write_safetensors

BFLOAT16 = "bfloat16"


def _tensors(dtype: str) -> dict[str, np.ndarray]:
    if dtype == BFLOAT16:
        import ml_dtypes

        return {k: v.astype(ml_dtypes.bfloat16) for k, v in mlp_tensors(1, (64, 512, 256, 10)).items()}
    return mlp_tensors(1, (64, 512, 256, 10), dtype=np.dtype(dtype))


WRITERS = {"safetensors": write_safetensors, "gguf": write_gguf, "onnx": write_onnx}


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        ("safetensors", "float32"),
        ("safetensors", "float16"),
        ("gguf", "float32"),
        ("gguf", "float16"),
        ("onnx", "float32"),
        ("safetensors", BFLOAT16),
    ],
)
def test_round_trip_is_byte_exact_and_smaller_than_zstd(tmp_path: Path, fmt: str, dtype: str) -> None:
    model = tmp_path / f"model.{fmt}"
    WRITERS[fmt](model, _tensors(dtype))
    blob, out = tmp_path / "model.lpatch", tmp_path / "out"
    stats = compress_model(model, blob)
    assert stats.source_size == 0 and stats.target_size == model.stat().st_size
    segments = LorienEngine().segments(blob)
    assert Codec.FLOAT_PLANES in {s.codec for s in segments}
    assert all(s.ref_length == 0 and s.codec != Codec.COPY for s in segments)  # nothing to match
    import zstandard

    assert stats.patch_size < len(zstandard.ZstdCompressor(level=19).compress(model.read_bytes()))
    result = decompress_model(blob, out)
    assert out.read_bytes() == model.read_bytes()
    assert result.target_sha256 == sha256_file(model)
    assert result.target_sha256.startswith(patch_info(blob).target_sha256)  # the compact layout's 8 bytes


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=20000), st.sampled_from([2, 4]))
def test_float_planes_codec_round_trips_any_bytes(data: bytes, width: int) -> None:
    data = data[: len(data) // width * width]
    payload = codecs.float_planes_payload(data, width)
    segment = Segment(
        Codec.FLOAT_PLANES, width, Transform.NONE, len(data), 0, 0, len(payload), zlib.crc32(payload)
    )
    assert codecs.decode(segment, payload, b"") == data


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=1, max_size=5000))
def test_any_file_round_trips(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    directory = tmp_path_factory.mktemp("any")
    model, blob, out = directory / "m", directory / "b", directory / "o"
    model.write_bytes(data)
    compress_model(model, blob)
    decompress_model(blob, out)
    assert out.read_bytes() == data


def test_planner_with_no_old_file_groups_small_tensors_and_keeps_large_ones_alone(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_safetensors(model, mlp_tensors(2, (64, 512, 256, 10)))
    data = memoryview(model.read_bytes())
    pieces = plan(memoryview(b""), data, DEFAULT_LIMITS)
    assert sum(p.length for p in pieces) == len(data)
    assert all(p.same is None and p.window is None and p.cast is None for p in pieces)
    _, regions = find_tensors(data)
    large = {(r.offset, r.length) for r in regions if r.length >= ALONE}
    assert large <= {(p.offset, p.length) for p in pieces if p.is_tensor}
    small_bytes = sum(r.length for r in regions if r.length < ALONE)
    assert small_bytes and len(pieces) < len(regions)  # the small ones were joined


def test_float_planes_makes_version_3_and_a_patch_between_unrelated_versions_is_no_larger(tmp_path: Path) -> None:
    """Unrelated versions (a retrain from scratch): the patch is the new model compressed on its own, not
    larger than the compressed model (it was 3 % larger while patches could not use FLOAT_PLANES); devices
    capped below version 3 get one without it."""
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, mlp_tensors(3))
    write_safetensors(new, mlp_tensors(4))
    compress_model(new, tmp_path / "c")
    assert version_for(LorienEngine().segments(tmp_path / "c")) == 3
    compress_model(new, tmp_path / "c4", max_format=4)  # the classic layout declares the codecs' version
    assert struct.unpack_from("<H", (tmp_path / "c4").read_bytes(), 8)[0] == 3
    LorienEngine().create(old, new, tmp_path / "p")
    assert Codec.FLOAT_PLANES in {s.codec for s in LorienEngine().segments(tmp_path / "p")}
    assert (tmp_path / "p").stat().st_size <= (tmp_path / "c").stat().st_size
    LorienEngine(max_version=2).create(old, new, tmp_path / "p2")
    assert Codec.FLOAT_PLANES not in {s.codec for s in LorienEngine().segments(tmp_path / "p2")}
    assert (tmp_path / "p2").stat().st_size > (tmp_path / "p").stat().st_size
    for patch in ("p", "p2"):
        LorienEngine().apply(old, tmp_path / patch, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_a_replaced_tensor_in_a_patch_is_coded_on_its_own(tmp_path: Path) -> None:
    """One layer re-initialised (last-layers retrain): its tensor shares nothing with the old one, and
    FLOAT_PLANES codes it smaller than any residual against the old bytes."""
    old_tensors = mlp_tensors(5, (64, 512, 256, 10))
    new_tensors = dict(old_tensors)
    new_tensors["layer1.weight"] = mlp_tensors(6, (64, 512, 256, 10))["layer1.weight"]
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, old_tensors)
    write_safetensors(new, new_tensors)
    LorienEngine().create(old, new, tmp_path / "p")
    codecs_used = [s.codec for s in LorienEngine().segments(tmp_path / "p")]
    assert Codec.FLOAT_PLANES in codecs_used and Codec.COPY in codecs_used
    LorienEngine().apply(old, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_small_retrained_tensors_among_generic_bytes_are_coded_as_floats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last layers retrained, each tensor under 4 KiB (so the planner leaves them in generic bytes): the
    run of them is coded as float32 planes rather than as byte planes against the unrelated old bytes."""
    sizes = (128, 64, 24, 24, 24, 24, 24, 24, 24, 24)
    old_tensors = mlp_tensors(7, sizes)
    new_tensors = dict(old_tensors)
    replacement = mlp_tensors(8, sizes)
    small = [name for name in new_tensors if not name.startswith(("layer0.", "layer1."))]
    for name in small:
        new_tensors[name] = replacement[name]  # the last eight layers re-initialised, the first two kept
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, old_tensors)
    write_safetensors(new, new_tensors)
    assert all(new_tensors[name].nbytes < 4096 for name in small)
    LorienEngine().create(old, new, tmp_path / "p")
    assert Codec.FLOAT_PLANES in {s.codec for s in LorienEngine().segments(tmp_path / "p")}
    LorienEngine().apply(old, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    monkeypatch.setattr(candidates, "GENERIC_FLOATS", range(0))  # generic bytes never tried as floats
    LorienEngine().create(old, new, tmp_path / "without")
    assert (tmp_path / "p").stat().st_size < (tmp_path / "without").stat().st_size


def test_a_patch_between_versions_is_not_a_compressed_model(tmp_path: Path) -> None:
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, mlp_tensors(3))
    write_safetensors(new, mlp_tensors(4))
    LorienEngine().create(old, new, tmp_path / "p")
    with pytest.raises(PatchError, match="not a compressed model"):
        decompress_model(tmp_path / "p", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", ["float32", BFLOAT16])
def test_skewed_exponent_planes_take_rans_and_noise_planes_zstd(dtype: str) -> None:
    import ml_dtypes

    rng = np.random.default_rng(7)  # 9 in 10 weights in [1, 2): one exponent, ~0.5 bit where Huffman pays ≥ 1
    values = (1 + rng.random(50_000)) * np.where(rng.random(50_000) < 0.1, 2.0, 1.0)
    array = values.astype(np.float32 if dtype == "float32" else ml_dtypes.bfloat16)
    data, width = array.tobytes(), array.dtype.itemsize
    payload = codecs.float_planes_payload(data, width)
    modes = [codecs.PLANE_ENTRY.unpack_from(payload, codecs.PLANE_ENTRY.size * k)[0] for k in range(width)]
    assert modes[-1] == codecs.PLANE_RANS and modes[0] == codecs.PLANE_ZSTD  # exponent byte, lowest mantissa
    segment = Segment(Codec.FLOAT_PLANES, width, Transform.NONE, len(data), 0, 0, len(payload), 0)
    assert codecs.decode(segment, payload, b"") == data
    corrupt = bytearray(payload)
    corrupt[-5] ^= 0x10  # a rANS word of the exponent plane
    with contextlib.suppress(PatchError):
        assert codecs.decode(segment, bytes(corrupt), b"") != data
    bad_mode = bytearray(payload)
    bad_mode[0] = 9
    with pytest.raises(PatchError, match="mode 9"):
        codecs.decode(segment, bytes(bad_mode), b"")


@pytest.mark.parametrize("where", ["frame length", "plane byte"])
def test_a_corrupt_float_planes_payload_is_refused(tmp_path: Path, where: str) -> None:
    data = np.random.default_rng(5).standard_normal(4096).astype(np.float32).tobytes()
    payload = bytearray(codecs.float_planes_payload(data, 4))
    if where == "frame length":
        payload[1] ^= 0x01
    else:
        payload[-3] ^= 0xFF
    segment = Segment(Codec.FLOAT_PLANES, 4, Transform.NONE, len(data), 0, 0, len(payload), 0)
    try:
        decoded = codecs.decode(segment, bytes(payload), b"")
    except PatchError:
        return
    assert decoded != data  # undetected here, the container's CRC-32 and target SHA-256 catch it


def test_a_corrupt_blob_writes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_safetensors(model, mlp_tensors(6))
    blob = tmp_path / "b"
    compress_model(model, blob)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0x40
    blob.write_bytes(bytes(data))
    with pytest.raises(PatchError):
        decompress_model(blob, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "m.safetensors"]
