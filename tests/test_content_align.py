"""Alignment by content (:mod:`repo.engine.content_align`) and the cheap stretches of a run
(:func:`repo.engine.runs.improve`): what a layer added to or removed from a ``torch.save`` checkpoint needs, whose
storages ``data/N`` are renumbered after the change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.torch_checkpoint import write_torch_checkpoint
from lorien.repo.engine import apply_patch, create_patch, runs
from lorien.repo.engine.container import ENTRY_SIZE, Codec, usable_up_to
from lorien.repo.engine.content_align import by_content
from lorien.repo.engine.formats import find_tensors
from lorien.repo.engine.lorien_engine import Encoded, LorienEngine
from lorien.repo.engine.planning import Piece, _anchors, align, plan
from lorien.repo.engine.regions import TensorRegion, region
from lorien.repo.limits import DEFAULT_LIMITS
from tests.support.model_files import mlp_tensors, nudged, write_safetensors


def _layers(seed: int, count: int, width: int = 64) -> dict[str, np.ndarray]:
    """``count`` layers of one shape (a weight and a bias each), as a transformer's blocks are."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for index in range(count):
        tensors[f"blk.{index}.weight"] = (rng.standard_normal((width, width)) * 0.05).astype(np.float32)
        tensors[f"blk.{index}.norm"] = np.ones(width * 4, np.float32)  # equal in every layer
    return tensors


def _inserted(tensors: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A new layer in the middle (named after the next free id, as the bench corpus does)."""
    items = list(tensors.items())
    middle = len(items) // 2
    extra = _layers(seed, 1)
    added = [("blk.99.weight", extra["blk.0.weight"]), ("blk.99.norm", extra["blk.0.norm"])]
    return dict(items[:middle] + added + items[middle:])


def _matches(
    old: bytes, new: bytes
) -> tuple[list[TensorRegion], dict[str, TensorRegion], dict[str, TensorRegion]]:
    old_regions, new_regions = find_tensors(memoryview(old))[1], find_tensors(memoryview(new))[1]
    by_name = align(old_regions, new_regions)
    return new_regions, by_name, by_content(old_regions, new_regions, by_name, memoryview(old), memoryview(new))


def test_renumbered_storages_are_aligned_with_the_old_tensor_holding_their_bytes(tmp_path: Path) -> None:
    tensors = _layers(1, 6)
    for variant, old_tensors, new_tensors in (
        ("added", tensors, _inserted(tensors, 2)),
        ("removed", tensors, {k: v for k, v in tensors.items() if not k.startswith("blk.3.")}),
        ("added and fine-tuned", tensors, nudged(_inserted(tensors, 2), 3)),
    ):
        write_torch_checkpoint(tmp_path / "old.pt", old_tensors)
        write_torch_checkpoint(tmp_path / "new.pt", new_tensors)
        old, new = (tmp_path / "old.pt").read_bytes(), (tmp_path / "new.pt").read_bytes()
        regions, by_name, refined = _matches(old, new)
        old_values = list(old_tensors.values())
        wrong = right = 0
        for index, name in enumerate(new_tensors):
            if name == "blk.99.weight" or not name.endswith(".weight"):
                continue  # the new layer has no twin; the norms are all equal
            reg = next(r for r in regions if r.name == f"data/{index}")
            twin = old_values[list(old_tensors).index(name)]
            for matches, count in ((by_name, "wrong"), (refined, "right")):
                match = matches.get(f"{reg.name}@{reg.offset}")
                equal = match is not None and old[match.offset : match.end] == twin.tobytes()
                if count == "wrong":
                    wrong += not equal
                else:
                    right += equal
        expected = sum(1 for n in new_tensors if n.endswith(".weight") and n != "blk.99.weight")
        assert wrong > 0, variant  # names alone pick another layer's weights after the change
        assert right == expected, variant


def test_equal_candidates_and_unrelated_tensors_keep_their_name_match() -> None:
    rng = np.random.default_rng(4)
    ones = np.ones(1024, np.float32).tobytes()
    noise = [(rng.standard_normal(1024) * 0.05).astype(np.float32).tobytes() for _ in range(3)]
    old_data = ones + ones + noise[0] + noise[1]
    new_data = ones + ones + noise[2]  # a new random tensor: like every old one, and like none of them
    size = 4096
    old = [region(f"t{i}", i * size, size, "float32", ()) for i in range(4)]
    new = [region(f"t{i}", i * size, size, "float32", ()) for i in (1, 0, 3)]
    new = [region(r.name, i * size, size, "float32", ()) for i, r in enumerate(new)]
    matches = align(old, new)
    assert by_content(old, new, matches, old_data, new_data) == matches


def test_a_tensor_without_a_same_length_match_moves_only_to_identical_bytes() -> None:
    rng = np.random.default_rng(5)
    data = (rng.standard_normal(2048) * 0.05).astype(np.float32).tobytes()
    old = [region("only", 0, len(data), "float32", ())]
    for new_data, moved in (
        (data, True),
        (nudged({"x": np.frombuffer(data, np.float32)}, 6)["x"].tobytes(), False),
    ):
        new = [region("renamed", 0, len(new_data), "float32", (7,))]
        matches = by_content(old, new, {}, data, new_data)
        assert (matches.get("renamed@0") == old[0]) is moved


def _run_with_a_new_layer_in_the_middle() -> tuple[list[Piece], memoryview, memoryview]:
    """Six pieces at the same place in both files: five with a few bytes changed (zip entry times, renamed
    entries) around a 64 KiB float32 layer replaced wholesale."""
    rng = np.random.default_rng(7)
    size, layer = 4096, 64 * 1024
    lengths = [size, size, size, layer, size, size]
    offsets = [sum(lengths[:i]) for i in range(6)]
    old = bytearray(rng.integers(0, 256, sum(lengths), dtype=np.uint8).tobytes())
    new = bytearray(old)
    for chunk in (0, 1, 2, 4, 5):
        new[offsets[chunk] + 100 : offsets[chunk] + 104] = b"\x01\x02\x03\x04"
    new[offsets[3] : offsets[3] + layer] = (rng.standard_normal(layer // 4) * 0.05).astype(np.float32).tobytes()
    pieces = [
        Piece(offsets[i], lengths[i], 4 if i == 3 else 1, i == 3, same=(offsets[i], lengths[i])) for i in range(6)
    ]
    return pieces, memoryview(bytes(old)), memoryview(bytes(new))


def test_a_run_keeps_its_changed_middle_and_merges_the_nearly_unchanged_parts_around_it() -> None:
    pieces, old_view, new_view = _run_with_a_new_layer_in_the_middle()
    engine = LorienEngine()
    encoded = [engine.encode_run(piece, old_view, new_view) for piece in pieces]
    result = runs.improve(pieces, encoded, old_view, new_view, 19, DEFAULT_LIMITS, Encoded)
    own = sum(item.segment.payload_length + ENTRY_SIZE for items in encoded for item in items)
    assert len(result) == 3
    assert result[1] == encoded[3][0]  # the new layer keeps its own (plane) segment
    assert result[0].segment.codec != Codec.COPY and result[0].segment.target_length == 3 * 4096
    assert sum(item.segment.payload_length + ENTRY_SIZE for item in result) < own - 2 * ENTRY_SIZE


def test_merged_stretches_keep_to_a_container_version_cap() -> None:
    pieces, old_view, new_view = _run_with_a_new_layer_in_the_middle()
    engine = LorienEngine(max_version=3)
    encoded = [engine.encode_run(piece, old_view, new_view) for piece in pieces]
    result = runs.improve(pieces, encoded, old_view, new_view, 19, DEFAULT_LIMITS, Encoded, 3)
    assert len(result) < sum(map(len, encoded))  # a stretch was still merged, with an older codec
    assert all(usable_up_to(item.segment.codec, 3) for item in result)


def test_a_checkpoint_with_a_layer_inserted_beats_whole_file_zstd_and_round_trips(tmp_path: Path) -> None:
    tensors = _layers(8, 8, width=96)
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    write_torch_checkpoint(old, tensors)
    write_torch_checkpoint(new, _inserted(tensors, 9))
    patch, out = tmp_path / "p", tmp_path / "out"
    create_patch(old, new, patch)
    apply_patch(old, patch, out)
    assert out.read_bytes() == new.read_bytes()
    generic = create_patch(old, new, tmp_path / "generic", engine="zstd").patch_size
    # names alone predict every weight after the new layer from another layer's, and whole-file zstd wins
    # (15,743 B vs zstd's 15,691 B when measured); aligned by content it is the new layer's planes and small
    # residuals (14,907 B)
    assert patch.stat().st_size <= generic - 512


def test_small_tensors_after_a_removed_layer_are_referenced_where_they_sit_in_the_old_file(tmp_path: Path) -> None:
    tensors = mlp_tensors(11, (128, 256, 256, 256, 10))  # 1 KiB biases (generic bytes) after 256 KiB weights
    removed = {k: v for k, v in tensors.items() if not k.startswith("layer1.")}
    write_safetensors(tmp_path / "old.safetensors", tensors)
    write_safetensors(tmp_path / "new.safetensors", removed)
    old, new = (tmp_path / "old.safetensors").read_bytes(), (tmp_path / "new.safetensors").read_bytes()
    pieces = plan(memoryview(old), memoryview(new), DEFAULT_LIMITS)
    small = [r for r in find_tensors(memoryview(new))[1] if r.length < 4096]
    assert len(small) >= 3
    for tensor in small:
        piece = next(p for p in pieces if p.offset <= tensor.offset and tensor.end <= p.offset + p.length)
        assert piece.same is not None, tensor.name
        start = piece.same[0] + tensor.offset - piece.offset
        assert old[start : start + tensor.length] == new[tensor.offset : tensor.end], tensor.name
    patch, out = tmp_path / "p", tmp_path / "out"
    create_patch(tmp_path / "old.safetensors", tmp_path / "new.safetensors", patch)
    apply_patch(tmp_path / "old.safetensors", patch, out)
    assert out.read_bytes() == new


def test_untyped_stored_files_with_equal_bytes_do_not_move_the_generic_bytes() -> None:
    """TorchScript archives hold many equal small debug pickles; one aligned to its twin elsewhere (by size) must
    not send the bytes after it to that twin's place."""
    blob = bytes(range(100)) + b"\x00" * 6
    old = memoryview(b"a" * 300 + blob + b"b" * 300 + blob)
    new = memoryview(b"a" * 300 + blob + b"b" * 300)
    regions = [region("debug_pkl", 300, len(blob), "unknown", ()), region("bias", 300, len(blob), "float32", ())]
    far = region("debug_pkl", 706, len(blob), "unknown", ())
    matches = {"debug_pkl@300": far, "bias@300": far}
    assert _anchors(regions[:1], matches, old, new) == []
    assert _anchors(regions[1:], matches, old, new) == [(300, 406)]
