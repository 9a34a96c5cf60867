"""Mixed fleets: a cap on the patch container version, and the version in the manifest.

A device reads the container versions of its lorien release (``READABLE_VERSIONS``); newer codecs need newer
versions (docs/patch-format.md). ``--max-patch-format N`` (or ``$LORIEN_MAX_PATCH_FORMAT``) makes the publisher
use only codecs of versions up to N — for patches, per-file patches and compressed models, including those kept
from an earlier publish (re-made when above the cap). Every lorien blob's version is recorded in the manifest
(``format_version``), and a device plans around listed blobs it cannot read (another chain, the compressed or
the raw model) instead of downloading them and failing. An "old device" is this lorien with
``READABLE_VERSIONS`` cut down to (1, 2, 3), in the container parser and in the planner alike.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from lorien.device.plan import Installed, cheapest_plan
from lorien.modelgen import write_family
from lorien.publisher.options import PublishOptions
from lorien.publisher.publish import publish
from lorien.repo import engine as engine_package
from lorien.repo.engine import apply_patch, container, create_patch, patch_info
from lorien.repo.engine.container import FORMAT_VERSION, SINCE_VERSION, checked_max_version
from lorien.repo.engine.full import compress_model, decompress_model
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import BadInputError, ManifestError, PatchError
from lorien.repo.manifest import parse_manifest
from tests.support.inprocess import inprocess_updater, update_and_wait
from tests.support.model_files import mlp_tensors, nudged, write_safetensors
from tests.support.processes import SMALL_LAYERS, run_lorien
from tests.support.simulator import RepositorySimulator

SCHEMA = Path(__file__).resolve().parents[1] / "repo" / "schemas" / "manifest.schema.json"
FAMILY = "classifier"


def _become_old_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on this process reads container versions 1 to 3 only, like a device of the release before
    version 4 (called after publishing: the publisher reads its own patches back)."""
    monkeypatch.setattr(container, "READABLE_VERSIONS", (1, 2, 3))
    monkeypatch.setattr(engine_package, "READABLE_VERSIONS", (1, 2, 3))


def _sparse_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A float32 model and the same with a few weights changed: SPARSE_DIFF (version 4) codes it smallest."""
    tensors = mlp_tensors(seed=1, sizes=(64, 256, 128, 10))
    changed = {name: array.copy() for name, array in tensors.items()}
    first = next(iter(changed))
    changed[first].reshape(-1)[::97] *= 1.001  # small changes: SPARSE_DIFF codes their differences
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, tensors)
    write_safetensors(new, changed)
    return old, new


def _segments_version(patch: Path) -> int:
    return container.version_for(LorienEngine().segments(patch))


@pytest.mark.parametrize("cap", [1, 2, 3, 4])
def test_a_capped_patch_uses_only_codecs_of_that_version_and_still_applies(tmp_path: Path, cap: int) -> None:
    old, new = _sparse_pair(tmp_path)
    uncapped, capped = tmp_path / "uncapped.lpatch", tmp_path / "capped.lpatch"
    stats = create_patch(old, new, uncapped)
    assert stats.format_version == 5 == patch_info(uncapped).format_version  # a small patch: compact layout
    assert _segments_version(uncapped) == 4  # and codecs of version 4: the cap has something to do
    capped_stats = create_patch(old, new, capped, max_format=cap)
    assert capped_stats.format_version is not None and capped_stats.format_version <= cap
    assert _segments_version(capped) <= cap
    assert all(SINCE_VERSION.get(s.codec, 1) <= cap for s in LorienEngine().segments(capped))
    apply_patch(old, capped, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    assert capped_stats.patch_size >= stats.patch_size  # the newer codecs were chosen because they win


def test_a_capped_compressed_model_decodes(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_safetensors(model, nudged(mlp_tensors(seed=2), seed=3))
    newest, capped = tmp_path / "newest.compressed", tmp_path / "capped.compressed"
    assert compress_model(model, newest).format_version == 3  # FLOAT_PLANES
    assert compress_model(model, capped, max_format=2).format_version == 1
    decompress_model(capped, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == model.read_bytes()


@pytest.mark.parametrize("bad", [0, -1, FORMAT_VERSION + 1, True, "3", 2.0])
def test_a_cap_outside_the_written_versions_is_refused(bad: object) -> None:
    with pytest.raises(BadInputError, match="not a patch format version"):
        checked_max_version(bad)  # type: ignore[arg-type]
    with pytest.raises(BadInputError):
        LorienEngine(max_version=bad)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="--max-patch-format"):
        PublishOptions(max_patch_format=bad).check()  # type: ignore[arg-type]


def test_the_cli_takes_the_cap_from_the_flag_or_the_environment(tmp_path: Path) -> None:
    old, new = _sparse_pair(tmp_path)
    patch = tmp_path / "p.lpatch"
    made = run_lorien("diff", old, new, "-o", patch, "--max-patch-format", "3", "-q")
    assert made.returncode == 0, made.stderr
    assert "format 1," in made.stdout or "format 2," in made.stdout or "format 3," in made.stdout
    assert patch_info(patch).format_version <= 3
    info = run_lorien("patch-info", patch, "--json")
    assert json.loads(info.stdout)["format_version"] == patch_info(patch).format_version
    from_env = run_lorien("diff", old, new, "-o", patch, "-q", env={"LORIEN_MAX_PATCH_FORMAT": "1"})
    assert from_env.returncode == 0 and patch_info(patch).format_version == 1
    for argv, env in (
        (("--max-patch-format", "9"), {}),
        ((), {"LORIEN_MAX_PATCH_FORMAT": "three"}),
        ((), {"LORIEN_MAX_PATCH_FORMAT": "0"}),
    ):
        patch.unlink(missing_ok=True)
        refused = run_lorien("diff", old, new, "-o", patch, *argv, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "patch format version" in refused.stderr and "Traceback" not in refused.stderr
        assert not patch.exists()  # nothing written


def _published(tmp_path: Path, cap: int | None, repo: Path | None = None) -> tuple[Path, Path]:
    models = tmp_path / "models"
    if not models.exists():
        write_family(models / FAMILY, ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=SMALL_LAYERS, seed=3)
    repo = repo or tmp_path / "repo"
    report = publish(models, repo, options=PublishOptions(max_patch_format=cap))
    assert report.ok, report.all_problems()
    return models, repo


def _manifest_data(repo: Path) -> dict:
    return json.loads((repo / FAMILY / "manifest.json").read_bytes())


def _versions(repo: Path) -> list[int]:
    data = _manifest_data(repo)
    listed = [p["format_version"] for p in data["patches"]]
    listed += [v["compressed"]["format_version"] for v in data["versions"] if "compressed" in v]
    for patch in data["patches"]:  # the manifest tells the truth about each blob
        assert patch_info(repo / patch["blob"]).format_version == patch["format_version"]
    return listed


def test_the_manifest_records_each_blobs_version_and_a_cap_remakes_those_above_it(tmp_path: Path) -> None:
    _, repo = _published(tmp_path, None)
    assert max(_versions(repo)) > 3  # this family's patches use version 4's codecs or layout 5 when free to
    jsonschema.validate(_manifest_data(repo), json.loads(SCHEMA.read_text()))
    before = {p["id"]: p["blob"] for p in _manifest_data(repo)["patches"]}
    _published(tmp_path, 3, repo)
    assert _versions(repo) and max(_versions(repo)) <= 3
    after = {p["id"]: p["blob"] for p in _manifest_data(repo)["patches"]}
    assert after.keys() == before.keys() and all(after[i] != before[i] for i in after)
    again = (repo / FAMILY / "manifest.json").read_bytes()
    _published(tmp_path, None, repo)  # within the newest version too: kept as they are
    assert [p["blob"] for p in _manifest_data(repo)["patches"]] == list(after.values())
    assert json.loads(again)["patches"] == _manifest_data(repo)["patches"]


def test_a_manifest_written_before_the_field_gets_it_from_the_blobs(tmp_path: Path) -> None:
    _, repo = _published(tmp_path, None)
    path = repo / FAMILY / "manifest.json"
    data = json.loads(path.read_bytes())
    for patch in data["patches"]:
        del patch["format_version"]
    # the unsigned repository's manifest can be rewritten by hand here (a signed one would be re-signed)
    path.write_bytes(json.dumps(data).encode())
    assert all(p.format_version is None for p in parse_manifest(path.read_bytes()).patches)
    _published(tmp_path, 3, repo)
    assert max(_versions(repo)) <= 3


@pytest.mark.parametrize("value", [0, 65536, "4", True, 4.5])
def test_a_bad_format_version_in_a_manifest_is_refused(tmp_path: Path, value: object) -> None:
    _, repo = _published(tmp_path, None)
    data = _manifest_data(repo)
    data["patches"][0]["format_version"] = value
    with pytest.raises(ManifestError, match=r"patches\[0\]\.format_version"):
        parse_manifest(json.dumps(data).encode())


def test_a_device_plans_around_blobs_of_a_version_it_cannot_read(tmp_path: Path) -> None:
    _, repo = _published(tmp_path, None)
    manifest = parse_manifest((repo / FAMILY / "manifest.json").read_bytes())
    source = manifest.version("1.1.0")
    installed = Installed("1.1.0", source.sha256, source.size, None)
    assert [s.kind for s in cheapest_plan(manifest, installed).steps] == ["patch"]
    future = replace(manifest, patches=tuple(replace(p, format_version=99) for p in manifest.patches))
    assert [s.kind for s in cheapest_plan(future, installed).steps] == ["compressed"]
    latest = future.latest_entry()
    assert latest.compressed is not None
    unreadable = replace(latest, compressed=replace(latest.compressed, format_version=99))
    nothing = replace(future, versions=tuple(unreadable if v is latest else v for v in future.versions))
    assert [s.kind for s in cheapest_plan(nothing, installed).steps] == ["full"]
    unknown = replace(manifest, patches=tuple(replace(p, format_version=None) for p in manifest.patches))
    assert [s.kind for s in cheapest_plan(unknown, installed).steps] == ["patch"]  # older manifests: tried


def _device_update(tmp_path: Path, repo: Path, name: str) -> tuple[dict, list[str]]:
    """A device with 1.1.0 installed updates from ``repo``: its status and the kinds of its plan."""
    model = tmp_path / name / "model.tflite"
    model.parent.mkdir(parents=True)
    shutil.copyfile(tmp_path / "models" / FAMILY / "1.1.0.tflite", model)
    updater = inprocess_updater(RepositorySimulator.from_directory(repo), FAMILY, model, tmp_path / name / "state")
    kinds = [step.kind for step in updater.check().steps]
    status = update_and_wait(updater)
    latest = tmp_path / "models" / FAMILY / "1.2.0.tflite"
    assert model.read_bytes() == latest.read_bytes()
    return status, kinds


def test_an_old_device_updates_from_an_uncapped_repository_without_its_patches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, repo = _published(tmp_path, None)
    _become_old_device(monkeypatch)
    with pytest.raises(PatchError, match=r"version [456] is not supported"):  # what it would have hit
        apply_patch(
            tmp_path / "models" / FAMILY / "1.1.0.tflite",
            repo / _manifest_data(repo)["patches"][-1]["blob"],
            tmp_path / "x",
        )
    status, kinds = _device_update(tmp_path, repo, "uncapped")
    assert status["last_result"]["ok"] and kinds == ["compressed"]  # version 3: readable
    assert status["patch_formats"] == {"lorien": [1, 2, 3]}  # what its operator reads to pick the cap


def test_an_old_device_takes_patches_from_a_repository_capped_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, repo = _published(tmp_path, 3)
    _become_old_device(monkeypatch)
    status, kinds = _device_update(tmp_path, repo, "capped")
    assert status["last_result"]["ok"] and kinds == ["patch"]
