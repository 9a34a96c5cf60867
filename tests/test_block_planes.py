"""Block-quantized GGUF tensors (issue 15 item 4): the ggml block table, the finder, codec BLOCK_PLANES (8).

Real blocks come from bench.ggml_quants (gguf-py's Q8_0 quantizer and our Q4_K one, checked here against
gguf-py's dequantizer); GGUF files are written with gguf-py so the finder sees the real ggml type ids.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from bench import ggml_quants
from lorien.repo.engine import block_planes, codecs
from lorien.repo.engine.container import Codec, Segment, Transform, read_header_and_table, version_for
from lorien.repo.engine.formats import find_tensors
from lorien.repo.engine.ggml_blocks import LAYOUTS
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from tests.support.model_files import write_gguf

Q8_0, Q4_K = LAYOUTS[ggml_quants.Q8_0], LAYOUTS[ggml_quants.Q4_K]


def _weights(seed: int, shape: tuple[int, int] = (64, 512)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * np.float32(0.05)


def _nudged(array: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (array * (1 + 1e-3 * rng.standard_normal(array.shape))).astype(np.float32)


def _pair(ggml_type: int, seed: int = 0) -> tuple[bytes, bytes]:
    """(old, new) block bytes: the same weights quantized before and after a small dense fine-tune."""
    base = _weights(seed)
    return (
        ggml_quants.quantize(base, ggml_type).tobytes(),
        ggml_quants.quantize(_nudged(base, seed + 1), ggml_type).tobytes(),
    )


def _model(seed: int, nudge: bool) -> dict[str, np.ndarray]:
    tensors = {
        "token_embd.weight": _weights(seed, (128, 256)),
        "blk.0.attn_norm.weight": np.ones(256, np.float32),
        "blk.0.ffn_up.weight": _weights(seed + 1, (256, 512)),
        "output.weight": _weights(seed + 2, (40, 256)),
    }
    return {k: _nudged(v, seed + 9) if nudge else v for k, v in tensors.items()}


# --------------------------------------------------------------------------- the table and the quantizer


def test_every_layout_matches_gguf_py_block_sizes() -> None:
    import gguf

    for type_id, layout in LAYOUTS.items():
        elements, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        assert (layout.elements, layout.block_bytes) == (elements, block_bytes), layout.name
        assert layout.name == gguf.GGMLQuantizationType(type_id).name.lower()


@pytest.mark.parametrize("ggml_type", [ggml_quants.Q8_0, ggml_quants.Q4_K])
def test_corpus_quantizers_write_blocks_gguf_py_decodes(ggml_type: int) -> None:
    import gguf

    weights = _weights(3)
    blocks = ggml_quants.quantize(weights, ggml_type)
    assert blocks.shape == (64, 512 // LAYOUTS[ggml_type].elements * LAYOUTS[ggml_type].block_bytes)
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(ggml_type))
    error = np.sqrt(np.mean((decoded - weights) ** 2)) / weights.std()
    assert error < (0.01 if ggml_type == ggml_quants.Q8_0 else 0.12)  # 8 vs 4 bits per weight


def test_finder_reports_block_types_with_their_exact_extent(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, _model(0, False), ggml_quants.Q4_K)
    regions = {r.name: r for r in find_tensors(path.read_bytes())[1]}
    assert regions["blk.0.ffn_up.weight"].dtype == "q4_k"
    assert regions["blk.0.ffn_up.weight"].length == 256 * 2 * Q4_K.block_bytes  # 256 rows of 2 super-blocks
    assert regions["output.weight"].length == 40 * Q4_K.block_bytes  # padding after it stays generic bytes
    assert regions["blk.0.attn_norm.weight"].dtype == "float32"


# --------------------------------------------------------------------------- codec round trips


@pytest.mark.parametrize("ggml_type", [ggml_quants.Q8_0, ggml_quants.Q4_K])
def test_block_planes_round_trip_real_blocks_and_beat_plain_planes(ggml_type: int) -> None:
    old, new = _pair(ggml_type)
    layout = LAYOUTS[ggml_type]
    with_reference = block_planes.payload(new, old, layout, 19)
    alone = block_planes.payload(new, None, layout, 19)
    assert block_planes.decode(with_reference, old, len(new)) == new
    assert block_planes.decode(alone, b"", len(new)) == new
    generic = codecs.zstd_compress(codecs.xor_residual(new, old, 1), 19)
    assert len(with_reference) < 0.8 * len(generic)


@pytest.mark.parametrize("type_id", sorted(LAYOUTS))
def test_every_layout_round_trips_any_bytes(type_id: int) -> None:
    layout = LAYOUTS[type_id]
    rng = np.random.default_rng(type_id)
    old = rng.integers(0, 256, 20 * layout.block_bytes, dtype=np.uint8)
    new = old.copy()
    new[rng.integers(0, len(new), 40)] ^= rng.integers(1, 256, 40, dtype=np.uint8)
    for reference in (old.tobytes(), None):
        payload = block_planes.payload(new.tobytes(), reference, layout, 3)
        assert block_planes.decode(payload, reference or b"", len(new)) == new.tobytes()


@pytest.mark.parametrize(
    ("plane", "mode"),
    [
        (np.random.default_rng(1).integers(0, 256, 50_000).astype(np.uint8), codecs.PLANE_ZSTD),
        (np.zeros(50_000, np.uint8), block_planes.PLANE_ZERO),
        ((np.random.default_rng(2).random(50_000) < 0.01).astype(np.uint8) * 3, block_planes.PLANE_SPARSE),
        (np.random.default_rng(3).choice(4, 50_000, p=[0.7, 0.2, 0.07, 0.03]).astype(np.uint8), codecs.PLANE_RANS),
    ],
)
def test_each_stream_mode_is_chosen_where_it_wins_and_decodes(plane: np.ndarray, mode: int) -> None:
    chosen, stream = block_planes._stream(plane, 19)
    assert chosen == mode
    assert np.array_equal(block_planes._plane(stream, chosen, len(plane)), plane)
    if mode == codecs.PLANE_RANS:  # enough lanes that decoding takes at most RANS_ROWS steps
        lanes = codecs.RANS_BYTES_HEADER.unpack_from(stream)[0]
        assert -(-len(plane) // lanes) <= block_planes.RANS_ROWS


# --------------------------------------------------------------------------- hostile payloads


def _segment(payload: bytes, length: int, ref_length: int) -> Segment:
    return Segment(Codec.BLOCK_PLANES, 1, Transform.NONE, length, 0, ref_length, len(payload), zlib.crc32(payload))


@pytest.fixture(scope="module")
def q4k_case() -> tuple[bytes, bytes, bytes]:
    old, new = _pair(ggml_quants.Q4_K, seed=4)
    return old, new, block_planes.payload(new, old, Q4_K, 19)


def test_every_truncation_is_refused(q4k_case: tuple[bytes, bytes, bytes]) -> None:
    old, new, payload = q4k_case
    for cut in [*range(0, 64), *range(64, len(payload), max(1, len(payload) // 200))]:
        with pytest.raises(PatchError):
            codecs.decode(_segment(payload[:cut], len(new), len(old)), payload[:cut], old)


def test_fields_that_do_not_add_up_to_the_block_are_refused(q4k_case: tuple[bytes, bytes, bytes]) -> None:
    old, new, payload = q4k_case
    bad = bytearray(payload)
    struct.pack_into("<H", bad, block_planes.BLOCK_HEADER.size, 3)  # field d: 3 bytes instead of 2
    with pytest.raises(PatchError, match=r"add up|whole"):
        block_planes.decode(bytes(bad), old, len(new))
    bad = bytearray(payload)
    struct.pack_into("<H", bad, 0, Q4_K.block_bytes + 2)  # block size no longer the sum of its fields
    with pytest.raises(PatchError, match=r"blocks|add up"):
        block_planes.decode(bytes(bad), old, len(new))


def test_block_count_must_match_the_segment(q4k_case: tuple[bytes, bytes, bytes]) -> None:
    old, new, payload = q4k_case
    with pytest.raises(PatchError, match="whole"):
        block_planes.decode(payload, old + b"\0", len(new) + 1)  # not whole blocks
    with pytest.raises(PatchError, match=r"declares|plane|rANS|sparse"):
        shorter = len(new) - Q4_K.block_bytes  # whole blocks, but one fewer than the streams hold
        block_planes.decode(payload, old[:shorter], shorter)
    with pytest.raises(PatchError, match="reference"):
        block_planes.decode(payload, old[: Q4_K.block_bytes], len(new))


@pytest.mark.parametrize("header", [(144, 0), (0, 4), (144, 200)])
def test_impossible_headers_are_refused(header: tuple[int, int]) -> None:
    with pytest.raises(PatchError):
        block_planes.decode(block_planes.BLOCK_HEADER.pack(*header) + b"\0" * 64, b"", 144 * 4)


@pytest.mark.parametrize("field", [(144, 9, 1), (144, 1, 3), (143, 1, 2), (144, block_planes.NIBBLE_DIFF, 2)])
def test_invalid_fields_are_refused(field: tuple[int, int, int]) -> None:
    payload = block_planes.BLOCK_HEADER.pack(144, 1) + block_planes.FIELD.pack(*field) + b"\0" * 64
    with pytest.raises(PatchError, match="field"):
        block_planes.decode(payload, b"", 144 * 4)


def test_sparse_streams_out_of_bounds_are_refused() -> None:
    def sparse(symbols: bytes, values: bytes) -> bytes:
        gaps = codecs.zstd_compress(symbols, 3)
        return block_planes.SPARSE_HEADER.pack(len(gaps)) + gaps + codecs.zstd_compress(values, 3)

    assert np.array_equal(block_planes._decode_sparse(sparse(b"\x02\xff\x01", b"\x05\x07"), 300)[[1, 257]], [5, 7])
    for symbols, values, why in [
        (b"\x02\xff\x01", b"\x05\x07", "inside the plane"),  # position 257 in a 200-byte plane
        (b"\x02\x00", b"\x05\x07", "increasing"),  # a gap of 0 repeats a position
        (b"\x02\xff", b"\x05", "inside a gap"),
        (b"\x02\x01", b"\x05", "declares"),  # two positions, one value
    ]:
        with pytest.raises(PatchError, match=why):
            block_planes._decode_sparse(sparse(symbols, values), 200)
    huge = codecs.zstd_compress(b"\xff" * 100_000, 3)  # a gap stream far longer than the plane allows
    with pytest.raises(PatchError, match="more than"):
        block_planes._decode_sparse(block_planes.SPARSE_HEADER.pack(len(huge)) + huge, 200)
    with pytest.raises(PatchError, match="past its end"):
        block_planes._decode_sparse(block_planes.SPARSE_HEADER.pack(1000) + b"\0" * 10, 200)


def test_unknown_stream_mode_is_refused(q4k_case: tuple[bytes, bytes, bytes]) -> None:
    old, new, payload = q4k_case
    bad = bytearray(payload)
    bad[block_planes.BLOCK_HEADER.size + block_planes.FIELD.size * len(Q4_K.fields)] = 7  # first stream's mode
    with pytest.raises(PatchError, match="mode 7"):
        block_planes.decode(bytes(bad), old, len(new))
    with pytest.raises(PatchError, match="mode 3"):  # "all zeros" carries no stream
        block_planes._plane(b"\0", block_planes.PLANE_ZERO, 10)


@pytest.mark.parametrize(("width", "ref_length"), [(2, 288), (1, 100)])
def test_container_refuses_block_planes_segments_that_do_not_fit(width: int, ref_length: int) -> None:
    from lorien.repo.engine.container import Header, pack_header

    segment = Segment(Codec.BLOCK_PLANES, width, Transform.NONE, 288, 0, ref_length, 0, zlib.crc32(b""))
    header = Header(1, 1000, 288, b"\0" * 32, b"\0" * 32)
    table = segment.pack()
    data = pack_header(header, table, 4) + table
    import io

    with pytest.raises(PatchError, match="BLOCK_PLANES"):
        read_header_and_table(io.BytesIO(data), len(data), "p")


# --------------------------------------------------------------------------- the engine


def test_quantized_gguf_pair_uses_block_planes_at_version_4_and_round_trips(tmp_path: Path) -> None:
    old, new, patch = tmp_path / "old.gguf", tmp_path / "new.gguf", tmp_path / "p"
    write_gguf(old, _model(0, False), ggml_quants.Q4_K)
    write_gguf(new, _model(0, True), ggml_quants.Q4_K)
    engine = LorienEngine(max_version=4)  # the classic layout, at the version its codecs need
    engine.create(old, new, patch)
    segments = engine.segments(patch)
    assert Codec.BLOCK_PLANES in {s.codec for s in segments}
    assert struct.unpack_from("<H", patch.read_bytes(), 8)[0] == version_for(segments) == 4
    engine.apply(old, patch, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_float_gguf_pair_uses_no_block_planes(tmp_path: Path) -> None:
    old, new, patch = tmp_path / "old.gguf", tmp_path / "new.gguf", tmp_path / "p"
    write_gguf(old, _model(0, False), None)
    write_gguf(new, _model(0, True), None)
    LorienEngine().create(old, new, patch)
    assert Codec.BLOCK_PLANES not in {segment.codec for segment in LorienEngine().segments(patch)}
    LorienEngine().apply(old, patch, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_a_version_3_header_may_not_carry_block_planes(tmp_path: Path) -> None:
    old, new, patch = tmp_path / "old.gguf", tmp_path / "new.gguf", tmp_path / "p"
    write_gguf(old, _model(0, False), ggml_quants.Q8_0)
    write_gguf(new, _model(0, True), ggml_quants.Q8_0)
    LorienEngine(max_version=4).create(old, new, patch)
    data = bytearray(patch.read_bytes())
    struct.pack_into("<H", data, 8, 3)
    count = struct.unpack_from("<I", data, 12)[0]
    table_end = 100 + 40 * count
    struct.pack_into("<I", data, 96, zlib.crc32(bytes(data[100:table_end]), zlib.crc32(bytes(data[:96]))))
    patch.write_bytes(bytes(data))
    with pytest.raises(PatchError, match="uses codecs or backends of version 4"):
        LorienEngine().apply(old, patch, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_large_block_piece_is_ranked_on_a_block_aligned_sample_and_keeps_block_planes(tmp_path: Path) -> None:
    from lorien.repo.engine.lorien_engine import SAMPLED_FROM
    from lorien.repo.engine.planning import plan
    from lorien.repo.limits import DEFAULT_LIMITS

    weights = _weights(11, (2048, 1024))  # 2.2 MB of Q8_0 blocks: ranked on a sample first
    old, new = tmp_path / "old.gguf", tmp_path / "new.gguf"
    write_gguf(old, {"w": weights}, ggml_quants.Q8_0)
    write_gguf(new, {"w": _nudged(weights, 12)}, ggml_quants.Q8_0)
    old_view, new_view = memoryview(old.read_bytes()), memoryview(new.read_bytes())
    (piece,) = [p for p in plan(old_view, new_view, DEFAULT_LIMITS) if p.block is not None]
    assert piece.length >= SAMPLED_FROM and piece.length % Q8_0.block_bytes == 0
    encoded = LorienEngine().encode(piece, old_view, new_view)
    assert encoded.segment.codec == Codec.BLOCK_PLANES
    reference = old_view[encoded.segment.ref_offset : encoded.segment.ref_offset + encoded.segment.ref_length]
    target = bytes(new_view[piece.offset : piece.offset + piece.length])
    assert codecs.decode(encoded.segment, encoded.payload, bytes(reference)) == target
