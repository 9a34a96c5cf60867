"""The engine's speed paths change how fast patches are made and applied, never what they contain: candidates
ranked on a sample of large tensor pieces (create), more rANS lanes for large streams, and hashing + writing
beside the decoding (apply)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest

from lorien.repo.engine import apply_patch, applying, codecs, create_patch, lorien_engine, rans
from lorien.repo.engine.candidates import Candidate
from lorien.repo.engine.container import Codec, Segment, Transform
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.planning import Piece
from lorien.repo.errors import PatchError
from tests.support.model_files import write_safetensors

MiB = 1 << 20


def _fine_tune(seed: int, elements: int, dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.02, elements).astype(np.float32)
    nudged = weights * (1 + rng.normal(0, 1e-3, elements).astype(np.float32))
    return weights.astype(dtype), nudged.astype(dtype)


def test_a_sample_holds_the_same_slices_of_target_old_and_cast_bytes() -> None:
    old = memoryview(bytes(range(256)) * (48 * 1024))  # 12 MiB with recognisable positions
    target = bytes(reversed(bytes(range(256)))) * (16 * 1024)  # 4 MiB
    piece = Piece(
        1000, len(target), 2, True, same=(4096, len(target)), window=(0, 8 * MiB), cast=(0, 2 * len(target))
    )
    sample, sample_target, sample_old = lorien_engine._sample(piece, target, old)
    step = (len(target) // lorien_engine.SAMPLE_SLICES) & ~7
    starts = [k * step for k in range(lorien_engine.SAMPLE_SLICES)]
    slice_ = lorien_engine.SAMPLE_SLICE
    assert sample_target == b"".join(target[s : s + slice_] for s in starts)
    assert sample.length == len(sample_target) and sample.width == 2 and sample.is_tensor
    same = sample_old[sample.same[0] : sample.same[0] + sample.same[1]]
    assert same == b"".join(old[4096 + s : 4096 + s + slice_] for s in starts)
    cast = sample_old[sample.cast[0] : sample.cast[0] + sample.cast[1]]
    assert cast == b"".join(old[2 * s : 2 * s + 2 * slice_] for s in starts)
    near = lorien_engine.SAMPLE_NEAR
    window = sample_old[sample.window[0] : sample.window[0] + sample.window[1]]
    assert window == b"".join(old[max(0, 4096 + s - near) : 4096 + s + slice_ + near] for s in starts)


def test_large_tensor_pieces_build_only_the_shortlisted_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    before, after = _fine_tune(1, 2 * MiB)  # one 4 MiB float16 tensor
    old, new = before.tobytes(), after.tobytes()
    piece = Piece(0, len(new), 2, True, same=(0, len(old)), window=(0, len(old)))
    built: list[Codec] = []
    payload = Candidate.payload

    def counting(self: Candidate, target: bytes, raw: bytes | None, level: int) -> bytes:
        if len(target) == len(new):
            built.append(self.codec)
        return payload(self, target, raw, level)

    monkeypatch.setattr(Candidate, "payload", counting)
    sampled = LorienEngine().encode(piece, memoryview(old), memoryview(new))
    assert sampled.segment.codec == Codec.DIFF_RANS
    assert 1 <= len(set(built)) <= lorien_engine.SHORTLIST and Codec.ZSTD_REF not in built
    built.clear()
    monkeypatch.setattr(lorien_engine, "_sampled", lambda _piece: False)
    everything = LorienEngine().encode(piece, memoryview(old), memoryview(new))
    assert len(set(built)) >= 5  # without the sample every candidate is built for the whole piece
    assert everything == sampled  # and on a dense fine-tune the sample picks what ranking everything picks


def test_sampled_patches_round_trip_a_model_with_large_and_small_tensors(tmp_path: Path) -> None:
    tensors_old, tensors_new = {}, {}
    for index, elements in enumerate((3 * MiB // 2, 700, 1_500_000)):
        before, after = _fine_tune(index, elements, "float16" if index != 2 else "float32")
        tensors_old[f"t{index}"], tensors_new[f"t{index}"] = before, after
    write_safetensors(tmp_path / "old.safetensors", tensors_old)
    write_safetensors(tmp_path / "new.safetensors", tensors_new)
    create_patch(tmp_path / "old.safetensors", tmp_path / "new.safetensors", tmp_path / "p")
    apply_patch(tmp_path / "old.safetensors", tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == (tmp_path / "new.safetensors").read_bytes()


def test_large_rans_streams_get_more_lanes_and_small_ones_keep_theirs() -> None:
    rng = np.random.default_rng(3)
    large = np.minimum(rng.geometric(0.05, 3_000_000) - 1, 255).astype(np.uint8)  # ~5.7 bits, ~2 MB coded
    freqs = rans.frequencies(large)
    lanes = rans.lanes_for(freqs, len(large))
    assert rans.MAX_LANES < lanes <= rans.LARGE_MAX_LANES
    states, words = rans.encode(large, freqs, lanes)
    assert np.array_equal(rans.decode(states, words, freqs, len(large)), large)
    small = large[:100_000]
    assert rans.lanes_for(rans.frequencies(small), len(small)) <= rans.MAX_LANES


def test_long_streams_that_compress_well_still_decode_in_few_rows() -> None:
    rng = np.random.default_rng(4)
    sparse = (rng.random(1_000_000) < 0.02).astype(np.uint8)  # ~0.14 bits a symbol: ~18 KB coded
    freqs = rans.frequencies(sparse)
    lanes = rans.lanes_for(freqs, len(sparse))
    assert -(-len(sparse) // lanes) <= rans.LONG_MAX_ROWS  # the share rule alone would give 8 lanes
    states, words = rans.encode(sparse, freqs, lanes)
    assert np.array_equal(rans.decode(states, words, freqs, len(sparse)), sparse)
    short = sparse[: rans.LONG_STREAM - 1]
    assert rans.lanes_for(rans.frequencies(short), len(short)) < rans.VECTOR_FROM_LANES  # symbol by symbol


def _reference_decode(states: list[int], words: list[int], freqs: list[int], count: int) -> list[int] | None:
    """rANS decoding with Python integers (no overflow possible), row by row over the lanes; None where the
    vectorised decoder must raise."""
    starts = [sum(freqs[:k]) for k in range(256)]
    slot_symbol = [k for k in range(256) for _ in range(freqs[k])]
    lanes, states, position, out = len(states), list(states), 0, []
    for index in range(-(-count // lanes) * lanes):
        lane = index % lanes
        slot = states[lane] & ((1 << rans.PRECISION) - 1)
        symbol = slot_symbol[slot]
        out.append(symbol)
        states[lane] = freqs[symbol] * (states[lane] >> rans.PRECISION) + slot - starts[symbol]
        if states[lane] < rans.LOW:
            if position == len(words):
                return None
            states[lane] = (states[lane] << 16) | words[position]
            position += 1
    if position != len(words) or any(state != rans.LOW for state in states):
        return None
    return out[:count]


@pytest.mark.parametrize("seed", range(40))
def test_rans_decoder_agrees_with_exact_integer_arithmetic_or_refuses_any_states(seed: int) -> None:
    rng = np.random.default_rng(seed)
    used = rng.integers(1, 257)
    freqs = np.zeros(256, np.int64)
    freqs[rng.choice(256, used, replace=False)] = 1
    freqs += np.where(freqs > 0, rng.multinomial((1 << rans.PRECISION) - used, np.ones(256) / 256), 0)
    freqs[np.argmax(freqs)] += (1 << rans.PRECISION) - freqs.sum()
    lanes, count = int(rng.integers(1, 40)), int(rng.integers(40, 200))
    extremes = np.array([rans.LOW, 0xFFFFFFFF, 0xFFFF8000, rans.LOW + 1], dtype=np.uint32)
    states = np.where(rng.random(lanes) < 0.5, rng.choice(extremes, lanes), rng.integers(rans.LOW, 1 << 32, lanes))
    states = states.astype(np.uint32)
    words = rng.integers(0, 1 << 16, int(rng.integers(0, 3 * count)), dtype=np.uint16)
    expected = _reference_decode(states.tolist(), words.tolist(), freqs.tolist(), count)
    if expected is None:
        with pytest.raises(PatchError):
            rans.decode(states, words, freqs.astype(np.uint16), count)
    else:
        assert rans.decode(states, words, freqs.astype(np.uint16), count).tolist() == expected


@pytest.mark.parametrize("seed", range(10))
def test_rans_decoder_matches_exact_integer_arithmetic_on_real_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = np.minimum(rng.geometric(0.3, 3000) - 1, 255).astype(np.uint8)
    freqs = rans.frequencies(symbols)
    states, words = rans.encode(symbols, freqs, int(rng.integers(1, 40)))
    expected = _reference_decode(states.tolist(), words.tolist(), freqs.astype(int).tolist(), len(symbols))
    assert expected == symbols.tolist() == rans.decode(states, words, freqs, len(symbols)).tolist()


def test_apply_reports_a_wrong_source_of_the_right_size_even_when_decoding_fails(tmp_path: Path) -> None:
    before, after = _fine_tune(7, 200_000, "float32")
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(before.tobytes())
    new.write_bytes(b"prefix" + after.tobytes()[::-1])  # nothing aligned: zstd with the old file as dictionary
    create_patch(old, new, tmp_path / "p")
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(len(before.tobytes())))
    with pytest.raises(PatchError, match="another source model"):
        apply_patch(other, tmp_path / "p", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


class _FailingSink(io.BytesIO):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() > 100:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_a_write_error_on_the_sink_thread_reaches_the_caller() -> None:
    import hashlib

    sha = hashlib.sha256()
    with pytest.raises(OSError, match="No space left"), applying._Sink(sha, _FailingSink()) as sink:
        for _ in range(10):
            sink.put(b"x" * 64)


def test_the_sink_hashes_and_writes_every_chunk_in_order() -> None:
    import hashlib

    chunks = [bytes([k]) * (k * 1000 + 1) for k in range(50)]
    sha, out = hashlib.sha256(), io.BytesIO()
    with applying._Sink(sha, out) as sink:
        for chunk in chunks:
            sink.put(chunk)
    assert out.getvalue() == b"".join(chunks)
    assert sha.digest() == hashlib.sha256(b"".join(chunks)).digest()


def test_diff_rans_decoding_maps_symbols_and_escapes_to_the_same_ulps() -> None:
    rng = np.random.default_rng(11)
    reference = rng.integers(0, 1 << 16, 50_000, dtype=np.uint16)
    change = rng.integers(-200, 201, 50_000).astype(np.uint16)  # both sides of the escape symbol
    target = (reference + change).tobytes()
    payload = codecs.diff_rans_payload(target, reference.tobytes())
    segment = Segment(
        Codec.DIFF_RANS, 2, Transform.NONE, len(target), 0, len(target), len(payload), zlib.crc32(payload)
    )
    assert codecs.decode(segment, payload, reference.tobytes()) == target


@pytest.mark.parametrize("lanes", [1, 2, 7, 31, 32, 100])
def test_both_rans_code_paths_write_and_read_the_same_stream(lanes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(lanes)
    symbols = np.minimum(rng.geometric(0.2, 20_011) - 1, 255).astype(np.uint8)
    freqs = rans.frequencies(symbols)
    native = rans.encode(symbols, freqs, lanes)
    monkeypatch.setattr(rans, "VECTOR_FROM_LANES", 0)  # every stream row by row
    rows = rans.encode(symbols, freqs, lanes)
    assert np.array_equal(native[0], rows[0]) and np.array_equal(native[1], rows[1])
    assert np.array_equal(rans.decode(*rows, freqs, len(symbols)), symbols)
    monkeypatch.setattr(rans, "VECTOR_FROM_LANES", 1 << 30)  # every stream symbol by symbol
    assert np.array_equal(rans.decode(*rows, freqs, len(symbols)), symbols)


def test_apply_reads_ahead_the_next_segments_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors_old, tensors_new = {}, {}
    for index in range(3):
        tensors_old[f"t{index}"], tensors_new[f"t{index}"] = _fine_tune(20 + index, 300_000, "float32")
    write_safetensors(tmp_path / "old.safetensors", tensors_old)
    write_safetensors(tmp_path / "new.safetensors", tensors_new)
    create_patch(tmp_path / "old.safetensors", tmp_path / "new.safetensors", tmp_path / "p")
    segments = LorienEngine().segments(tmp_path / "p")
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(
        lorien_engine.os, "posix_fadvise", lambda fd, offset, length, advice: advised.append((offset, length))
    )
    apply_patch(tmp_path / "old.safetensors", tmp_path / "p", tmp_path / "out")
    expected = [(s.ref_offset, s.ref_length) for s in segments[1:] if s.ref_length]
    assert len(expected) >= 2 and advised == expected
    assert (tmp_path / "out").read_bytes() == (tmp_path / "new.safetensors").read_bytes()
