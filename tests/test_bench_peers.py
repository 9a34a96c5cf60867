"""bench.peers: the HDiffPatch peers keep the smallest patch over every compressor and say which one won."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from bench import peers

hdiffpatch = pytest.importorskip("hdiffpatch")  # the bench extra


def model_pair() -> tuple[bytes, bytes]:
    rng = random.Random(0)
    old = bytes(rng.getrandbits(8) for _ in range(20_000)) + bytes(20_000)
    new = bytearray(old)
    for offset in range(0, len(new), 97):
        new[offset] ^= 1
    return old, bytes(new)


@pytest.mark.parametrize("lite", [False, True])
def test_the_smallest_compressor_wins_and_its_patch_applies(lite: bool) -> None:
    old, new = model_pair()
    patch, winner, tried = peers.hdiff_best(old, new, lite)
    diff, recompress, apply = (
        (hdiffpatch.diff_lite, hdiffpatch.recompress_lite, hdiffpatch.apply_lite)
        if lite
        else (hdiffpatch.diff, hdiffpatch.recompress, hdiffpatch.apply)
    )
    raw = diff(old, new, compression="none")
    sizes = {}
    for label, setting in peers.hdiff_candidates():
        with contextlib.suppress(hdiffpatch.HDiffPatchError, ValueError):
            sizes[label] = len(recompress(raw, setting))
    assert tried == len(sizes) == len(peers.HDIFF_COMPRESSORS) - lite  # xz has no HPatchLite header byte
    assert len(patch) == min(sizes.values()) == sizes[winner]
    assert apply(old, patch) == new


def test_create_writes_the_winner_beside_the_patch_and_apply_decodes_it(tmp_path: Path) -> None:
    old, new = model_pair()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    for tool in peers.HDIFF_TOOLS:
        patch = tmp_path / f"{tool}.patch"
        peers.main(["create", tool, str(tmp_path / "old"), str(tmp_path / "new"), str(patch), "bytes"])
        notes = peers.notes_path(patch).read_text()
        assert notes.startswith("compressor ") and "tried)" in notes
        peers.main(["apply", tool, str(tmp_path / "old"), str(patch), str(tmp_path / f"{tool}.out")])
        assert (tmp_path / f"{tool}.out").read_bytes() == new
