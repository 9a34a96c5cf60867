"""Atomic writes: all or nothing, no temp files left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorien.repo.atomic import atomic_write_bytes, atomic_writer, canonical_json, is_temp_name, write_if_changed


def test_replace_and_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_bytes(target, b"v1")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half of v2")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_write_if_changed_skips_identical_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a"
    assert write_if_changed(target, b"x")
    inode = target.stat().st_ino
    assert not write_if_changed(target, b"x")
    assert target.stat().st_ino == inode
    assert write_if_changed(target, b"y") and target.read_bytes() == b"y"


def test_canonical_json_is_deterministic() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == canonical_json({"a": [1, "é"], "b": 1})
    assert canonical_json({}).endswith(b"\n")


def test_temp_names() -> None:
    assert is_temp_name(".manifest.json.tmp-abc123")
    assert not is_temp_name("manifest.json") and not is_temp_name(".lock")
