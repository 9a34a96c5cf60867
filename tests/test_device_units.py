"""Device pieces without servers: configuration errors, version identification and cheapest-plan search."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorien.device.config import check_environment, load_config
from lorien.device.plan import Installed, cheapest_plan, identify
from lorien.publisher.publish import publish
from lorien.repo.errors import BadInputError
from lorien.repo.manifest import Manifest, PatchEntry, parse_manifest
from tests.support.processes import run_lorien

BASE = {
    "repo_url": "http://127.0.0.1:1/",
    "family": "cls",
    "model_path": "/tmp/m.tflite",
    "state_dir": "/tmp/s",
    "insecure_allow_unsigned": True,
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('family = "cls"\nmodel_path = "/m"\nstate_dir = "/s"\n', "repo_url: required"),
        (
            'repo_url = "ftp://x/"\nfamily = "cls"\nmodel_path = "/m"\nstate_dir = "/s"\n',
            "repo_url: must be an http",
        ),
        ('repo_url = "http://x/"\nfamily = "a/b"\nmodel_path = "/m"\nstate_dir = "/s"\n', "family:"),
        (
            'repo_url = "http://x/"\nfamily = "c"\nmodel_path = "/m"\nstate_dir = "/s"\nport = "80"\n',
            "port: must be an integer",
        ),
        (
            'repo_url = "http://x/"\nfamily = "c"\nmodel_path = "/m"\nstate_dir = "/s"\ncolour = 1\n',
            "colour: unknown option",
        ),
        (
            'repo_url = "http://x/"\nfamily = "c"\nmodel_path = "/m"\nstate_dir = "/s"\nhost = "0.0.0.0"\n',
            "host: binding to 0.0.0.0",
        ),
        (
            'repo_url = "http://x/"\nfamily = "c"\nmodel_path = "/m"\nstate_dir = "/s"\nservice = 3\n',
            "service: must be",
        ),
        ("repo_url = [unclosed\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        load_config(_write(tmp_path, text))


def test_flags_override_the_file_and_services_parse(tmp_path: Path) -> None:
    text = (
        'repo_url = "http://x/repo"\nfamily = "c"\nmodel_path = "/m"\nstate_dir = "/s"\nport = 1\n'
        'api_token = "0123456789"\nhost = "0.0.0.0"\ninsecure_allow_unsigned = true\n[service]\ncommand = ["/bin/app", "--serve"]\n'
        'pid_file = "/run/app.pid"\n'
    )
    config = load_config(_write(tmp_path, text), {"port": 2, "family": None})
    assert config.port == 2 and config.family == "c" and config.repo_url == "http://x/repo/"
    assert config.service.command == ["/bin/app", "--serve"] and config.service.pid_file == Path("/run/app.pid")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the CLI check below covers a missing dir")
def test_unwritable_model_directory_refuses_to_start(tmp_path: Path) -> None:  # pragma: no cover - non-root only
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = load_config(None, {**BASE, "model_path": str(locked / "m"), "state_dir": str(tmp_path / "s")})
    with pytest.raises(BadInputError, match="not writable"):
        check_environment(config)


def test_device_cli_refuses_a_missing_model_directory(tmp_path: Path) -> None:
    result = run_lorien(
        "device",
        "--repo-url",
        "http://127.0.0.1:9/",
        "--family",
        "c",
        "--model-path",
        tmp_path / "absent" / "m.tflite",
        "--state-dir",
        tmp_path / "state",
        "--insecure-allow-unsigned",
    )
    assert (
        result.returncode == 2 and "model_path: directory" in result.stderr and "does not exist" in result.stderr
    )


def _manifest(published: Path) -> Manifest:
    return parse_manifest((published / "classifier" / "manifest.json").read_bytes())


def test_identify_by_fingerprint_confirmed_by_sha256(published: Path, models_dir: Path, tmp_path: Path) -> None:
    manifest = _manifest(published)
    assert identify(models_dir / "classifier" / "1.1.0.tflite", manifest).version == "1.1.0"
    tampered = tmp_path / "m.tflite"
    data = bytearray((models_dir / "classifier" / "1.1.0.tflite").read_bytes())
    data[65_600] ^= 1  # between the hashed head (64 KiB) and tail (4 KiB): fingerprint matches, SHA-256 not
    tampered.write_bytes(bytes(data))
    found = identify(tampered, manifest)
    assert found.version is None and found.sha256 is not None
    assert identify(tmp_path / "absent", manifest) == Installed(None, None, 0, None)


def test_plan_prefers_cheapest_patch_and_skips_unknown_engines(published: Path) -> None:
    manifest = _manifest(published)
    v110 = manifest.version("1.1.0")
    installed = Installed("1.1.0", v110.sha256, v110.size, None)
    plan = cheapest_plan(manifest, installed)
    assert [(s.kind, s.source, s.target) for s in plan.steps] == [("patch", "1.1.0", "1.2.0")]
    foreign = tuple(PatchEntry(**{**p.__dict__, "engine": "bsdiff"}) for p in manifest.patches)
    fallback = cheapest_plan(Manifest(**{**manifest.__dict__, "patches": foreign}), installed)
    compressed = manifest.latest_entry().compressed  # the model compressed on its own, smaller than the raw one
    assert compressed is not None and compressed.size < fallback.full_size
    assert [s.kind for s in fallback.steps] == ["compressed"] and fallback.download_bytes == compressed.size
    unknown = cheapest_plan(manifest, Installed(None, "0" * 64, 10, None))
    assert [s.kind for s in unknown.steps] == ["compressed"]
    latest = manifest.latest_entry()
    assert cheapest_plan(manifest, Installed("1.2.0", latest.sha256, latest.size, None)).up_to_date


def test_plan_takes_a_two_hop_chain_when_cheaper_than_full(tmp_path: Path) -> None:
    from lorien.modelgen import write_family

    all_versions = write_family(tmp_path / "all" / "c", ["1", "2", "3"], layer_sizes=(64, 128, 64, 10), seed=5)
    models = tmp_path / "models" / "c"
    models.mkdir(parents=True)
    for path in all_versions[:2]:
        (models / path.name).write_bytes(path.read_bytes())
    publish(tmp_path / "models", tmp_path / "repo")
    (models / all_versions[2].name).write_bytes(all_versions[2].read_bytes())
    publish(tmp_path / "models", tmp_path / "repo", keep=1)
    manifest = parse_manifest((tmp_path / "repo" / "c" / "manifest.json").read_bytes())
    first = manifest.version("1")
    plan = cheapest_plan(manifest, Installed("1", first.sha256, first.size, None))
    assert [(s.source, s.target) for s in plan.steps] == [("1", "2"), ("2", "3")]
    assert plan.download_bytes < plan.full_size
    capped = cheapest_plan(manifest, Installed("1", first.sha256, first.size, None), max_chain=1)
    assert [s.kind for s in capped.steps] == ["compressed"]  # a chain longer than limits.max_chain_length
