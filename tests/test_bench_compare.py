"""bench.compare: result files of separate runs merged per pair, and the pairs lorien does not beat listed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import compare


def record(tool: str, size: int | None, status: str = "ok") -> dict[str, Any]:
    return {"tool": tool, "status": status, "patch_bytes": size}


def pair(name: str, sha: str = "a" * 64, **sizes: int | None) -> dict[str, Any]:
    results = {
        tool.replace("_", "-"): record(tool, size, "ok" if size is not None else "create-error")
        for tool, size in sizes.items()
    }
    return {"name": name, "new_bytes": 1000, "new_sha256": sha, "results": results}


def write(path: Path, *pairs: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"started": "x", "pairs": list(pairs)}))
    return path


def test_merges_runs_and_lists_every_pair_not_beaten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lorien = write(
        tmp_path / "lorien.json",
        pair("a-dense", lorien=100),
        pair("b-identical", lorien=140),
        pair("c-fp16", lorien=50),
        pair("d-new", lorien=5),
    )
    peers = write(
        tmp_path / "peers.json",
        pair("a-dense", z4ai=120, hdiffpatch=150, hdiffpatch_lite=140, zipnn=900, zstd_patch_from=90),
        pair("b-identical", z4ai=200, hdiffpatch=37, hdiffpatch_lite=13),
        pair("c-fp16", z4ai=None, hdiffpatch=70, hdiffpatch_lite=60),
        pair("d-new", z4ai=10),
    )
    rows_file = tmp_path / "rows.json"
    assert compare.main([str(lorien), str(peers), "--json", str(rows_file)]) == 0
    out = capsys.readouterr().out
    rows = {row["pair"]: row for row in json.loads(rows_file.read_text())["rows"]}

    assert rows["a-dense"]["ratios"] == {
        "z4ai": 0.8333,
        "zipnn": 0.1111,
        "hdiffpatch": 0.6667,
        "hdiffpatch-lite": 0.7143,
    }
    assert rows["a-dense"]["best_peer"] == {"tool": "zstd-patch-from", "bytes": 90}
    assert rows["a-dense"]["not_beaten"] == [] and rows["a-dense"]["unknown"] == []
    assert rows["b-identical"]["not_beaten"] == [
        {"tool": "hdiffpatch", "bytes": 37, "excess": 103},
        {"tool": "hdiffpatch-lite", "bytes": 13, "excess": 127},
    ]
    assert rows["b-identical"]["best_peer"] == {"tool": "hdiffpatch-lite", "bytes": 13}  # counts as a peer
    assert rows["c-fp16"]["failed"] == ["z4ai create-error"] and rows["c-fp16"]["unknown"] == []
    assert rows["d-new"]["unknown"] == ["hdiffpatch not run", "hdiffpatch-lite not run"]
    assert "strictly smaller than z4ai and hdiffpatch and hdiffpatch-lite: 2 of 3 compared pairs (1 not " in out
    assert "b-identical: lorien 140 B vs hdiffpatch 37 B (+103 B), hdiffpatch-lite 13 B (+127 B)" in out
    assert "not compared: d-new (hdiffpatch not run; hdiffpatch-lite not run)" in out
    assert "peer made no patch (1): c-fp16 (z4ai create-error)" in out


def test_a_failed_record_never_hides_an_ok_one_and_equal_size_is_not_ahead(tmp_path: Path) -> None:
    first = write(tmp_path / "1.json", pair("p", lorien=100, hdiffpatch=100, z4ai=300))
    second = write(tmp_path / "2.json", pair("p", "b" * 64, hdiffpatch=None, z4ai=250))
    merged = compare.merge_pairs([(str(path), compare.load(path)) for path in (first, second)])
    row = compare.compare_pair(merged["p"], "lorien", ["z4ai"], ["z4ai", "hdiffpatch"])
    assert row["sizes"] == {"z4ai": 250, "hdiffpatch": 100}  # later ok wins, later failure ignored
    assert merged["p"].sources == {"lorien": str(first), "hdiffpatch": str(first), "z4ai": str(second)}
    assert row["not_beaten"] == [{"tool": "hdiffpatch", "bytes": 100, "excess": 0}]
    assert row["new_sha256_differs"] is True


def test_a_file_that_is_not_a_result_is_refused_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "full-download.json"
    bad.write_text(json.dumps({"models": []}))
    with pytest.raises(SystemExit, match=r"not a bench\.run result file"):
        compare.main([str(bad)])
