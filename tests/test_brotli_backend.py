"""Entropy backend 3, Brotli (container version 6): round trips, the version it makes a patch, the cap that keeps
it out of patches for older devices, and a bounded decoder that refuses bombs, damage and trailing bytes with a
PatchError and nothing written."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import brotli
import numpy as np
import pytest

from lorien.repo.engine import apply_patch, codecs, create_patch, patch_info
from lorien.repo.engine.container import (
    BACKEND_CODECS,
    COMPACT_VERSION,
    Backend,
    Codec,
    Header,
    Segment,
    Transform,
    pack_head,
    version_for,
)
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from tests.support.model_files import mlp_tensors, write_safetensors


def test_a_brotli_segment_needs_version_6_and_other_backends_do_not() -> None:
    brotli_segment = Segment(Codec.ZSTD, 0, Transform.NONE, 10, 0, 0, 5, 0, Backend.BROTLI)
    assert version_for([brotli_segment]) == 6
    assert version_for([Segment(Codec.ZSTD, 0, Transform.NONE, 10, 0, 0, 5, 0, Backend.BZ2)]) == 1
    assert Backend.BROTLI not in codecs.other_backends(slow=True)  # Brotli is a pass over the finished patch


def test_brotli_round_trips_and_refuses_what_is_not_one_stream_within_the_limit() -> None:
    raw = np.random.default_rng(0).integers(0, 4, 50_000, dtype=np.uint8).tobytes()
    payload = codecs.pack(raw, 19, Backend.BROTLI)
    assert codecs.unpack(payload, Backend.BROTLI, len(raw), len(raw)) == raw
    with pytest.raises(PatchError, match="at most 49999 bytes"):
        codecs.unpack(payload, Backend.BROTLI, len(raw) - 1, len(raw))
    bomb = brotli.compress(bytes(64 << 20), quality=5)  # ~300 bytes that inflate to 64 MiB
    with pytest.raises(PatchError, match="at most 1000 bytes"):
        codecs.brotli_decompress(bomb, 1000)
    with pytest.raises(PatchError, match="at most"):
        codecs.brotli_decompress(payload[: len(payload) // 2], len(raw))  # cut short
    with pytest.raises(PatchError, match="corrupt Brotli"):
        codecs.brotli_decompress(payload + b"\x00\x01", len(raw))  # trailing bytes
    with pytest.raises(PatchError):
        codecs.brotli_decompress(b"\xff" * 40, len(raw))


def _head(old: bytes, target: bytes, segment: Segment, version: int) -> bytes:
    header = Header(1, len(old), len(target), hashlib.sha256(old).digest(), hashlib.sha256(target).digest())
    return pack_head(header, [segment], version)


def test_a_version_6_patch_with_a_brotli_bomb_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    old = bytes(range(256)) * 4
    (tmp_path / "old").write_bytes(old)
    bomb = brotli.compress(bytes(16 << 20), quality=5)
    segment = Segment(Codec.ZSTD, 0, Transform.NONE, 100, 0, 0, len(bomb), zlib.crc32(bomb), Backend.BROTLI)
    (tmp_path / "p").write_bytes(_head(old, bytes(100), segment, 6) + bomb)
    with pytest.raises(PatchError, match="at most 100 bytes"):
        apply_patch(tmp_path / "old", tmp_path / "p", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_version_5_patch_that_declares_brotli_is_refused(tmp_path: Path) -> None:
    old, target = bytes(1000), b"hello world" * 10
    (tmp_path / "old").write_bytes(old)
    payload = codecs.pack(target, 19, Backend.BROTLI)
    segment = Segment(
        Codec.ZSTD, 0, Transform.NONE, len(target), 0, 0, len(payload), zlib.crc32(payload), Backend.BROTLI
    )
    (tmp_path / "v6").write_bytes(_head(old, target, segment, 6) + payload)
    apply_patch(tmp_path / "old", tmp_path / "v6", tmp_path / "out")  # the same patch, honestly versioned
    assert (tmp_path / "out").read_bytes() == target
    (tmp_path / "v5").write_bytes(_head(old, target, segment, COMPACT_VERSION) + payload)
    with pytest.raises(PatchError, match="uses codecs or backends of version 6"):
        apply_patch(tmp_path / "old", tmp_path / "v5", tmp_path / "out5")
    assert not (tmp_path / "out5").exists()


def test_the_engine_uses_brotli_where_it_is_smallest_and_never_under_a_cap_of_5(tmp_path: Path) -> None:
    """A sparse edit of a small model: its residual is small and Brotli codes it smallest; capped at version 5
    the patch is larger (measured: 451 B against 460) and has no Brotli; nor has a patch whose payloads are
    spooled (they are not held in memory for the Brotli pass, see LorienEngine.create)."""
    tensors = mlp_tensors(3, (64, 128, 64, 10))
    write_safetensors(tmp_path / "old.safetensors", tensors)
    rng = np.random.default_rng(4)
    for name, values in tensors.items():
        flat = values.reshape(-1).copy()
        picked = rng.choice(flat.size, max(1, flat.size // 200), replace=False)
        flat[picked] += np.float32(0.01)
        tensors[name] = flat.reshape(values.shape)
    write_safetensors(tmp_path / "new.safetensors", tensors)
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    made = create_patch(old, new, tmp_path / "p")
    capped = create_patch(old, new, tmp_path / "p5", max_format=5)
    backends = {s.backend for s in LorienEngine().segments(tmp_path / "p")}
    assert Backend.BROTLI in backends and made.format_version == 6 == patch_info(tmp_path / "p").format_version
    assert Backend.BROTLI not in {s.backend for s in LorienEngine().segments(tmp_path / "p5")}
    assert capped.format_version <= 5 and made.patch_size < capped.patch_size
    LorienEngine(spool=True).create(old, new, tmp_path / "spooled")  # as for new files from 64 MiB
    assert Backend.BROTLI not in {s.backend for s in LorienEngine().segments(tmp_path / "spooled")}
    for patch in ("p", "p5", "spooled"):
        apply_patch(old, tmp_path / patch, tmp_path / f"{patch}.out")
        assert (tmp_path / f"{patch}.out").read_bytes() == new.read_bytes()


def test_the_brotli_pass_keeps_a_patch_brotli_gains_under_1_percent_on_at_its_older_version(
    tmp_path: Path,
) -> None:
    """Weights nudged, a few biases changed: Brotli codes some small segments smaller (measured: 513 B of a
    432,785-byte patch), under 1 %, so the patch is written without it — byte for byte what a cap of 5 makes."""
    tensors = mlp_tensors(6, (256, 512, 256, 10))
    write_safetensors(tmp_path / "old.safetensors", tensors)
    rng = np.random.default_rng(1)
    for name, values in tensors.items():
        if values.ndim == 2:
            tensors[name] = values * np.float32(1.001)
        else:
            values[rng.choice(values.size, max(1, values.size // 50), replace=False)] += np.float32(0.01)
    write_safetensors(tmp_path / "new.safetensors", tensors)
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    made = create_patch(old, new, tmp_path / "p")
    create_patch(old, new, tmp_path / "p5", max_format=5)
    assert made.format_version < 6 and (tmp_path / "p").read_bytes() == (tmp_path / "p5").read_bytes()
    data = (tmp_path / "p").read_bytes()
    segments = LorienEngine().segments(tmp_path / "p")
    at, smaller = len(data) - sum(segment.payload_length for segment in segments), 0
    for segment in segments:  # what the pass saw: some segments are smaller in Brotli, by too little
        payload = data[at : at + segment.payload_length]
        at += segment.payload_length
        if segment.codec in BACKEND_CODECS and payload:
            raw = codecs.unpack(payload, segment.backend, None, 1 << 24)
            smaller += max(0, len(payload) - len(codecs.brotli_compress(raw)))
    assert 0 < smaller < 0.01 * made.patch_size
