"""`lorien inspect` on a directory and over HTTP, with and without --verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorien.repo.errors import NetworkError
from lorien.repo.fetch import HttpFetcher
from lorien.repo.inspect import inspect_repository
from lorien.repo.transport import REQUEST_RETRY
from tests.support.processes import LiveServer, run_lorien
from tests.support.simulator import Fault, RepositorySimulator


def _blob(repo: Path, kind: str = "patches") -> Path:
    manifest = json.loads((repo / "classifier" / "manifest.json").read_text())
    return repo / manifest[kind][0]["blob"]


def test_inspect_text_lists_versions_and_patches(published: Path) -> None:
    result = run_lorien("inspect", published)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "family classifier" in out and "latest 1.2.0" in out
    assert "1.0.0 → 1.2.0" in out and "%" in out and "tflite" in out
    manifest = json.loads((published / "classifier" / "manifest.json").read_text())
    rows = [
        line.split()
        for line in out.splitlines()
        if line.strip().lstrip("*").split(" ")[0] in {entry["version"] for entry in manifest["versions"]}
        and "→" not in line
    ]
    assert len(rows) == len(manifest["versions"]), out  # one row per version, printed once
    for row, entry in zip(rows, manifest["versions"], strict=True):
        assert row.count(entry["sha256"][:16] + "…") == 1, row
        assert row[-3] == entry["fingerprint"]["format"], row  # the format column, then short_id and sha256


@pytest.mark.slow
def test_inspect_verify_passes_then_names_every_bad_file(published: Path) -> None:
    ok = run_lorien("inspect", published, "--verify")
    assert ok.returncode == 0 and "all sizes and digests match" in ok.stdout
    corrupted = _blob(published, "patches")
    data = bytearray(corrupted.read_bytes())
    data[100] ^= 1
    corrupted.write_bytes(bytes(data))
    missing = _blob(published, "versions")
    missing.unlink()
    bad = run_lorien("inspect", published, "--verify")
    assert bad.returncode == 1
    assert corrupted.name in bad.stdout and "sha256" in bad.stdout
    assert missing.name in bad.stdout and "cannot read" in bad.stdout


@pytest.mark.slow
def test_inspect_verify_detects_truncation_and_json_output(published: Path) -> None:
    blob = _blob(published, "versions")
    blob.write_bytes(blob.read_bytes()[:-1])
    result = run_lorien("inspect", published, "--verify", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and any("size" in p and blob.name in p for p in report["problems"])
    assert report["families"][0]["patches"][0]["percent_of_full"] > 0


@pytest.mark.slow
def test_inspect_over_http(live_server: LiveServer) -> None:
    result = run_lorien("inspect", live_server.url, "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 6 blobs" in result.stdout  # 3 models, 2 patches, the newest model compressed


@pytest.mark.slow
def test_inspect_missing_or_broken_repository(tmp_path: Path) -> None:
    result = run_lorien("inspect", tmp_path / "nothing")
    assert result.returncode != 0 and "does not exist" in result.stderr
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "index.json").write_text("{broken")
    result = run_lorien("inspect", tmp_path / "repo")
    assert result.returncode == 1 and "not valid UTF-8 JSON" in result.stdout
    result = run_lorien("inspect", "ftp://example.invalid/repo")
    assert result.returncode != 0 and "unsupported URL scheme" in result.stderr


def test_an_index_that_cannot_be_fetched_is_raised_after_one_round_of_retries(published: Path) -> None:
    sim = RepositorySimulator.from_directory(published)
    sim.inject("index.json", Fault(drop="ConnectionRefusedError: [Errno 111] Connection refused"), forever=True)
    with pytest.raises(NetworkError, match=r"index\.json: request failed after \d+ attempts"):
        inspect_repository(HttpFetcher(sim.BASE, transport=sim))
    index_requests = [seen for seen in sim.requests if seen.path == "index.json"]
    assert len(index_requests) == REQUEST_RETRY.attempts  # read once, not again by the command


def test_an_index_that_arrives_but_does_not_parse_is_a_finding(published: Path) -> None:
    sim = RepositorySimulator.from_directory(published)
    sim.add("index.json", b"{broken")
    report = inspect_repository(HttpFetcher(sim.BASE, transport=sim))
    assert report.index is None and not report.ok and "not valid UTF-8 JSON" in report.problems[0]
