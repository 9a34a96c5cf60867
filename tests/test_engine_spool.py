"""Payload spooling on the create side (:mod:`repo.engine.spool`): the container is byte-identical to the one
written from payloads held in memory, and no temporary file survives an encoding or writing failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lorien.repo.engine import apply_patch
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.planning import Piece
from lorien.repo.engine.spool import PayloadSpool
from tests.support.model_files import mlp_tensors, nudged, write_safetensors


def _pair(directory: Path) -> tuple[Path, Path]:
    # layer1.weight (1.1 MB) is larger than a RANGES run (planning.GROUP), so the plan keeps several pieces
    tensors = mlp_tensors(5, (64, 256, 1100, 128))
    changed = nudged(tensors, 6)
    changed["layer1.weight"] = tensors["layer1.weight"].copy()  # a copy among the residual segments
    old, new = directory / "old.safetensors", directory / "new.safetensors"
    write_safetensors(old, tensors)
    write_safetensors(new, {k: v.astype(np.float32) for k, v in changed.items()})
    return old, new


class FailingEngine(LorienEngine):
    """Fails on the third piece (module level so a worker process can unpickle its ``encode``)."""

    def encode(self, piece: Piece, old: memoryview, new: memoryview):  # type: ignore[no-untyped-def]
        if piece.offset > 2 * 4096 and piece.length > 1024:
            raise RuntimeError("encoder failed")
        return super().encode(piece, old, new)


def test_spooled_pool_patch_is_byte_identical_to_the_in_memory_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = _pair(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    in_memory, spooled = out / "memory.patch", out / "spooled.patch"
    LorienEngine(level=3, workers=1, processes=False, spool=False).create(old, new, in_memory)
    added: list[int] = []
    original = PayloadSpool.add
    monkeypatch.setattr(
        PayloadSpool, "add", lambda self, payload: (added.append(len(payload)), original(self, payload))
    )
    LorienEngine(level=3, workers=2, processes=True, spool=True).create(old, new, spooled)
    segments = LorienEngine().segments(spooled)
    assert len(segments) > 2 and sum(added) == sum(s.payload_length for s in segments) > 0
    assert spooled.read_bytes() == in_memory.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["memory.patch", "spooled.patch"]  # spool removed
    apply_patch(old, spooled, tmp_path / "result")
    assert (tmp_path / "result").read_bytes() == new.read_bytes()


def test_large_files_spool_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorien.repo.engine import lorien_engine

    old, new = _pair(tmp_path)
    monkeypatch.setattr(lorien_engine, "SPOOL_FROM", 1024)  # this small pair counts as large
    spools: list[PayloadSpool] = []
    original = PayloadSpool.__init__
    monkeypatch.setattr(
        PayloadSpool, "__init__", lambda self, output: (spools.append(self), original(self, output))[1]
    )
    LorienEngine(level=3, workers=1, processes=False).create(old, new, tmp_path / "p")
    assert len(spools) == 1 and spools[0].size > 0 and not spools[0].path.exists()


@pytest.mark.parametrize("processes", [False, True])
def test_failed_encoding_leaves_no_temporary_file(tmp_path: Path, processes: bool) -> None:
    old, new = _pair(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="encoder failed"):
        FailingEngine(level=3, workers=2, processes=processes, spool=True).create(old, new, out / "p.patch")
    assert list(out.iterdir()) == []


def test_failed_container_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _pair(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.patch").write_bytes(b"previous")

    def disk_full(self: PayloadSpool, sink: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PayloadSpool, "copy_to", disk_full)
    with pytest.raises(OSError, match="No space"):
        LorienEngine(level=3, workers=1, processes=False, spool=True).create(old, new, out / "p.patch")
    assert [p.name for p in out.iterdir()] == ["p.patch"]
    assert (out / "p.patch").read_bytes() == b"previous"
