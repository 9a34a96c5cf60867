"""Patch bombs: tiny hostile patches that declare a huge result or ask the zstd decoder for a huge window are
refused before one byte of output is written (no output, no temporary file)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import zstandard

from lorien.repo.engine import apply_patch, create_patch
from lorien.repo.engine.container import Codec, Header, Segment, Transform, pack_header
from lorien.repo.engine.zstd_dict import MAGIC as ZSTD_MAGIC
from lorien.repo.errors import LocalIOError, PatchError
from lorien.repo.limits import DEFAULT_LIMITS, Limits
from tests.support.processes import run_lorien

SOURCE_BYTES = 4 << 20


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "model.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(SOURCE_BYTES))
    return path


def copy_bomb(source: Path, copies: int) -> Path:
    """A valid container whose ``copies`` COPY segments each repeat the whole source (40 bytes per segment)."""
    data = source.read_bytes()
    table = Segment(Codec.COPY, 0, Transform.NONE, len(data), 0, len(data), 0, zlib.crc32(b"")).pack() * copies
    header = Header(copies, len(data), copies * len(data), hashlib.sha256(data).digest(), b"\1" * 32)
    patch = source.parent / "bomb.lpatch"
    patch.write_bytes(pack_header(header, table) + table)
    return patch


def zstd_bomb(source: Path, target_size: int, frame_size: int, window_log: int) -> Path:
    """A ``zstd``-engine patch whose frame header declares ``frame_size`` bytes and a 2**window_log window."""
    data = source.read_bytes()
    header = struct.pack(
        "<8sQQ32s32s", ZSTD_MAGIC, len(data), target_size, hashlib.sha256(data).digest(), b"\1" * 32
    )
    # frame: magic, descriptor (8-byte content size, no single segment), window descriptor, content size, then junk
    frame = struct.pack("<IBBQ", 0xFD2FB528, 0xC0, (window_log - 10) << 3, frame_size) + b"\0" * 80_000
    patch = source.parent / "bomb.zpatch"
    patch.write_bytes(header + frame)
    assert zstandard.get_frame_parameters(frame).window_size == 1 << window_log
    return patch


def assert_nothing_written(directory: Path) -> None:
    assert list(directory.iterdir()) == []


def test_more_copies_than_the_disk_holds_are_refused_before_writing(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    copies = (shutil.disk_usage(out).free + (4 << 30)) // SOURCE_BYTES + 1
    patch = copy_bomb(source, copies)
    assert patch.stat().st_size < 100 + 40 * copies + 1
    with pytest.raises(LocalIOError, match=rf"{copies * SOURCE_BYTES} bytes needed.*{out / 'model'}.*No space"):
        apply_patch(source, patch, out / "model")
    assert_nothing_written(out)


def test_a_target_above_max_target_is_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    patch = copy_bomb(source, 5_000)  # 200 KB declaring 20 GiB
    with pytest.raises(PatchError, match="exceeds the limit"):
        apply_patch(source, patch, out / "model", limits=Limits(max_target=1 << 30))
    assert_nothing_written(out)


def test_the_cli_refuses_a_copy_bomb_in_one_line(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    copies = (shutil.disk_usage(out).free + (4 << 30)) // SOURCE_BYTES + 1
    result = run_lorien("apply", source, copy_bomb(source, copies), "-o", out / "model")
    assert result.returncode == 5 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "bytes needed" in result.stderr and str(out / "model") in result.stderr
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("target_size", "frame_size", "window_log", "why"),
    [
        (1 << 62, 1 << 62, 31, "exceeds the limit"),  # no target limit used to be enforced at all
        (1 << 20, 1 << 20, 31, "asks for a 2147483648-byte window"),  # 80 KB asking for 2 GiB of memory
        (1 << 20, 1 << 40, 20, "the zstd frame declares"),  # frame and header disagree
    ],
)
def test_zstd_patches_cannot_ask_for_more_than_their_sizes_need(
    source: Path, tmp_path: Path, target_size: int, frame_size: int, window_log: int, why: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PatchError, match=why):
        apply_patch(source, zstd_bomb(source, target_size, frame_size, window_log), out / "model")
    assert_nothing_written(out)


@pytest.mark.slow
def test_the_zstd_window_limit_is_a_device_limit(source: Path, tmp_path: Path) -> None:
    new = tmp_path / "in" / "new.bin"
    new.write_bytes(source.read_bytes()[::-1])
    patch = tmp_path / "in" / "real.zpatch"
    create_patch(source, new, patch, engine="zstd")
    assert apply_patch(source, patch, tmp_path / "ok.bin").verified
    assert (tmp_path / "ok.bin").read_bytes() == new.read_bytes()
    with pytest.raises(PatchError, match="max_window 1048576"):
        apply_patch(source, patch, tmp_path / "refused.bin", limits=Limits(max_window=1 << 20))
    assert not (tmp_path / "refused.bin").exists()
    assert DEFAULT_LIMITS.max_window == 1 << 27


def test_a_device_limits_table_reaches_the_bomb_limits(tmp_path: Path) -> None:
    from lorien.device.config import load_config

    config = tmp_path / "device.toml"
    config.write_text(
        'repo_url = "http://127.0.0.1:1/repo/"\nfamily = "cls"\n'
        f'model_path = "{tmp_path / "model.tflite"}"\nstate_dir = "{tmp_path / "state"}"\n'
        "insecure_allow_unsigned = true\n[limits]\nmax_target = 1073741824\nmax_window = 1048576\n"
    )
    limits = load_config(config).limits
    assert (limits.max_target, limits.max_window) == (1 << 30, 1 << 20)
