"""Publishing the newest version compressed on its own (``versions[].compressed``, issue 15 item 3): made when it
saves at least 5 %, content-addressed, decoding to the raw model; kept for older versions, not remade on a
re-publish, absent with ``--no-compressed`` or for a model that does not compress; kept by gc; valid against
the JSON schema; shown by ``lorien inspect``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema

from lorien.modelgen import write_family
from lorien.publisher.gc import referenced_blobs
from lorien.publisher.options import PublishOptions
from lorien.publisher.publish import publish
from lorien.repo.engine.full import decompress_model
from lorien.repo.hashing import digest_file
from lorien.repo.manifest import parse_manifest
from tests.support.processes import SMALL_LAYERS, run_lorien

SCHEMA = Path(__file__).resolve().parents[1] / "repo" / "schemas" / "manifest.schema.json"


def _manifest(repo: Path, family: str = "classifier"):
    return parse_manifest((repo / family / "manifest.json").read_bytes())


def test_the_newest_version_is_stored_compressed_and_decodes_to_the_model(
    published: Path, models_dir: Path, tmp_path: Path
) -> None:
    manifest = _manifest(published)
    latest = manifest.latest_entry()
    compressed = latest.compressed
    assert compressed is not None and compressed.engine == "lorien"
    assert [v.version for v in manifest.versions if v.compressed is not None] == [latest.version]
    blob = published / compressed.blob
    assert compressed.blob.endswith(f"{compressed.sha256}.compressed")
    digests = digest_file(blob)
    assert (digests.size, digests.sha256, digests.md5) == (compressed.size, compressed.sha256, compressed.md5)
    assert compressed.size <= 0.95 * latest.size
    decompress_model(blob, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == (models_dir / "classifier" / latest.filename).read_bytes()
    jsonschema.validate(
        json.loads((published / "classifier" / "manifest.json").read_bytes()), json.loads(SCHEMA.read_text())
    )
    assert compressed.blob in referenced_blobs(published)[0]  # gc keeps it
    inspected = run_lorien("inspect", published, "--verify")
    assert inspected.returncode == 0 and "compressed" in inspected.stdout and "%" in inspected.stdout


def test_older_versions_keep_theirs_and_a_republish_changes_nothing(published: Path, models_dir: Path) -> None:
    before = _manifest(published)
    assert publish(models_dir, published).ok
    assert (published / "classifier" / "manifest.json").read_bytes() == before.to_bytes()
    write_family(models_dir / "classifier", ["1.0.0", "1.1.0", "1.2.0", "1.3.0"], layer_sizes=SMALL_LAYERS, seed=3)
    report = publish(models_dir, published)
    assert report.ok
    after = _manifest(published)
    assert after.version("1.2.0").compressed == before.latest_entry().compressed  # kept, not remade
    assert after.latest_entry().compressed is not None
    event = report.events()[0]
    assert [(made["target"], made["kept"]) for made in event["compressed"]] == [("1.3.0", True)]


def test_no_compressed_option_and_incompressible_models(tmp_path: Path, models_dir: Path) -> None:
    plain = publish(models_dir, tmp_path / "plain", options=PublishOptions(compress=False))
    assert plain.ok and all(v.compressed is None for v in _manifest(tmp_path / "plain").versions)
    noise = tmp_path / "noise" / "random"
    noise.mkdir(parents=True)
    (noise / "1.0.bin").write_bytes(os.urandom(200_000))
    options = PublishOptions()
    report = publish(tmp_path / "noise", tmp_path / "repo", options=options)
    assert report.ok
    assert _manifest(tmp_path / "repo", "random").latest_entry().compressed is None
    assert [made["kept"] for made in report.events()[0]["compressed"]] == [False]
    assert not list((tmp_path / "repo" / "blobs").rglob("*.compressed"))  # the attempt left nothing behind
    again = publish(tmp_path / "noise", tmp_path / "repo", options=options)
    assert "compressed" not in again.events()[0]  # remembered: not tried again by the same process


def test_publish_cli_no_compressed(models_dir: Path, tmp_path: Path) -> None:
    result = run_lorien("publish", "--models", models_dir, "--repo", tmp_path / "repo", "--no-compressed")
    assert result.returncode == 0, result.stderr
    assert "compressed" not in (tmp_path / "repo" / "classifier" / "manifest.json").read_text()


def test_every_channel_target_is_compressed(published: Path, models_dir: Path) -> None:
    """With release channels (docs/rollouts.md) devices are sent to each channel's target, not only the newest
    version: each gets its compressed blob."""
    (models_dir / "classifier" / "channels.toml").write_text(
        '[stable]\ntarget = "1.1.0"\n\n[beta]\ntarget = "1.2.0"\n'
    )
    report = publish(models_dir, published)
    assert report.ok, report.all_problems()
    manifest = _manifest(published)
    assert manifest.latest == "1.1.0"  # the stable channel's target
    assert {v.version for v in manifest.versions if v.compressed is not None} == {"1.1.0", "1.2.0"}
    assert [made["target"] for made in report.events()[0]["compressed"]] == ["1.1.0"]  # 1.2.0 already had one
