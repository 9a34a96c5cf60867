"""`lorien serve` as a drop-in for Mallorn's example patch server: a client written only from the reference's
shapes (tests/seed_clients/mallorn_client.py) against a real `lorien serve` subprocess."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from lorien.publisher.publish import publish
from lorien.repo.engine import apply_patch
from lorien.repo.fingerprint import fingerprint, sample_offsets, sampled_hash
from tests.seed_clients.mallorn_client import MallornClient, MallornHTTPError, ValidationItem
from tests.support.model_files import write_onnx
from tests.support.processes import LiveServer, start_server

pytestmark = pytest.mark.slow  # a real `lorien serve` process per test

TOKEN = {"Authorization": "Bearer s3cret"}


def _release_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {  # embedding first (> 64 KiB) and head last (> 4 KiB): frozen, so header and tail never change
        "embed.weight": rng.standard_normal((128, 256)).astype(np.float32),
        "block.weight": rng.standard_normal((256, 256)).astype(np.float32),
        "block.bias": rng.standard_normal(256).astype(np.float32),
        "head.weight": rng.standard_normal((16, 256)).astype(np.float32),
    }


def _write_releases(folder: Path) -> None:
    """Three releases of one ONNX architecture with one Mallorn fingerprint: 1.1.0 retrains the middle block
    (its sampled hash differs); 1.2.0 changes one weight of 1.1.0 between two sampled blocks (only sha256 differs)."""
    folder.mkdir(parents=True)
    base = _release_tensors(1)
    write_onnx(folder / "1.0.0.onnx", base)
    tuned = dict(base, **{name: base[name] * np.float32(1.001) for name in ("block.weight", "block.bias")})
    write_onnx(folder / "1.1.0.onnx", tuned)
    data = bytearray((folder / "1.1.0.onnx").read_bytes())
    start = data.find(tuned["block.weight"].tobytes())
    offsets = sample_offsets(len(data))
    spot = next(p for p in range(start, len(data), 4) if not any(o <= p < o + 4096 for o in offsets))
    data[spot] ^= 0x01  # lowest mantissa bit of one float32
    (folder / "1.2.0.onnx").write_bytes(bytes(data))


@pytest.fixture(scope="module")
def two_families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    """onnxnet: 3 releases sharing one Mallorn fingerprint; tiny: 2 files under 68 KiB (short_id all zeros)."""
    root = tmp_path_factory.mktemp("families")
    _write_releases(root / "models" / "onnxnet")
    (root / "models" / "tiny").mkdir()
    (root / "models" / "tiny" / "1.bin").write_bytes(b"first small model")
    (root / "models" / "tiny" / "2.bin").write_bytes(b"second small model, longer")
    report = publish(root / "models", root / "repo")
    assert report.ok, report.all_problems()
    server = start_server(root / "repo")
    yield server, root / "models"
    server.process.terminate()
    server.process.wait(timeout=10)


def _ids(models: Path, family: str, version: str) -> dict:
    path = next((models / family).glob(f"{version}.*"))
    fp = fingerprint(path)
    return {
        "short_id": fp.short_id,
        "file_size": fp.file_size,
        "header_hash": fp.header_hash,
        "tail_hash": fp.tail_hash,
        "sampled_sha256": sampled_hash(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_health(live_server: LiveServer) -> None:
    health = MallornClient(live_server.url).health()
    manifest = json.loads((live_server.repo / "classifier" / "manifest.json").read_text())
    assert health.status == "healthy" and isinstance(health.mallorn_available, bool)
    assert (health.models_count, health.patches_count) == (3, len(manifest["patches"]))


def test_check_update_download_with_resume_and_apply(
    live_server: LiveServer, models_dir: Path, tmp_path: Path
) -> None:
    client = MallornClient(live_server.url)
    old = models_dir / "classifier" / "1.0.0.tflite"
    update = client.check_update(fingerprint(old).short_id)
    assert update.update_available and (update.current_version, update.latest_version) == ("1.0.0", "1.2.0")
    assert update.patch_url is not None and update.patch_size is not None and update.expected_hash is not None
    status, whole = client.download_patch(update.patch_url)
    assert status == 200 and len(whole) == update.patch_size
    status, rest = client.download_patch(update.patch_url, start=1000)
    assert status == 206 and rest == whole[1000:]
    (tmp_path / "update.patch").write_bytes(whole[:1000] + rest)
    apply_patch(old, tmp_path / "update.patch", tmp_path / "new.tflite")
    assert hashlib.sha256((tmp_path / "new.tflite").read_bytes()).hexdigest() == update.expected_hash
    newest = fingerprint(models_dir / "classifier" / "1.2.0.tflite")
    latest = client.check_update(newest.short_id, newest.file_size)
    assert latest.update_available is False and latest.current_version == "1.2.0" and latest.patch_url is None
    with pytest.raises(MallornHTTPError) as missing:
        client.download_patch("/patch/v1_to_v2")
    assert missing.value.status == 404


def test_unsatisfiable_range_is_416_with_a_detail(live_server: LiveServer) -> None:
    """The reference answers 416 with FastAPI's {"detail": "Range not satisfiable"}; a client reads it as it
    reads every other error (lorien adds Content-Range: bytes */SIZE)."""
    client = MallornClient(live_server.url)
    patch = client.manifest().patches[0]
    for start in (patch.size, patch.size + 1000):
        with pytest.raises(MallornHTTPError) as refused:
            client.download_patch(patch.url, start=start)
        assert refused.value.status == 416 and refused.value.detail.startswith("Range not satisfiable")
    answer = requests.get(live_server.url + patch.url.lstrip("/"), headers={"Range": "bytes=abc-"}, timeout=10)
    assert answer.status_code == 416 and answer.headers["Content-Range"] == f"bytes */{patch.size}"
    body = answer.json()
    assert answer.headers["Content-Type"] == "application/json" and body["error"] == body["detail"]


def test_seed_endpoints_answer_head_and_name_their_method(live_server: LiveServer) -> None:
    """HEAD of a JSON endpoint is its GET without the body (not a 404 from the static files behind it), and a
    GET of a POST endpoint is 405 with ``Allow``, as the reference's FastAPI answers (not 404)."""
    for path in ("health", "manifest", "fingerprint/classifier"):
        get = requests.get(live_server.url + path, timeout=10)
        head = requests.head(live_server.url + path, timeout=10)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["Content-Type"] == get.headers["Content-Type"] == "application/json", path
        assert head.headers["Content-Length"] == str(len(get.content)), path
    for path in ("check-update", "create-patch"):
        for method in ("GET", "HEAD"):
            wrong = requests.request(method, live_server.url + path, timeout=10)
            assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST", (method, path)
        assert requests.get(live_server.url + path, timeout=10).json()["detail"].startswith("Method Not Allowed")


@pytest.mark.parametrize("short_id", ["f" * 16, "a1b2c3d4e5f6g7h8"])  # the second is the README's example
def test_unknown_device_is_200_current_unknown(live_server: LiveServer, short_id: str) -> None:
    update = MallornClient(live_server.url).check_update(short_id)
    assert update == type(update)(False, "unknown", None, None, None, None)


def test_manifest_one_family(live_server: LiveServer) -> None:
    client = MallornClient(live_server.url)
    manifest = client.manifest()
    assert (manifest.model_family, manifest.latest_version) == ("classifier", "1.2.0")
    assert {p.id for p in manifest.patches} == {"classifier_1.0.0_to_1.2.0", "classifier_1.1.0_to_1.2.0"}
    for patch in manifest.patches:
        assert patch.url == f"/patch/{patch.id}" and len(client.download_patch(patch.url)[1]) == patch.size


def test_manifest_several_families(two_families: tuple[LiveServer, Path]) -> None:
    client = MallornClient(two_families[0].url)
    first = client.manifest()  # no ?family=: the first family by name
    assert (first.model_family, first.latest_version) == ("onnxnet", "1.2.0") and len(first.patches) == 2
    tiny = client.manifest({"family": "tiny"})
    assert (tiny.model_family, tiny.latest_version, [p.id for p in tiny.patches]) == ("tiny", "2", ["tiny_1_to_2"])
    with pytest.raises(MallornHTTPError) as unknown:
        client.manifest({"family": "nope"})
    assert unknown.value.status == 404 and "onnxnet, tiny" in unknown.value.detail


def _conflict(client: MallornClient, **body) -> MallornHTTPError:
    with pytest.raises(MallornHTTPError) as conflict:
        client.check_update(**body)
    assert conflict.value.status == 409
    return conflict.value


def test_same_fingerprint_releases_need_the_extension_fields(two_families: tuple[LiveServer, Path]) -> None:
    server, models = two_families
    client = MallornClient(server.url)
    ids = {v: _ids(models, "onnxnet", v) for v in ("1.0.0", "1.1.0", "1.2.0")}
    mallorn_fields = ("short_id", "file_size", "header_hash", "tail_hash")
    assert len({tuple(i[k] for k in mallorn_fields) for i in ids.values()}) == 1, "one Mallorn identity"
    for sent in (("short_id",), mallorn_fields):
        error = _conflict(client, **{k: ids["1.0.0"][k] for k in sent})
        assert "same Mallorn fingerprint" in error.detail and "68 KiB" not in error.detail
        assert "onnxnet 1.0.0, onnxnet 1.1.0, onnxnet 1.2.0" in error.detail and "sampled_sha256" in error.detail
    found = client.check_update(ids["1.0.0"]["short_id"], sampled_sha256=ids["1.0.0"]["sampled_sha256"])
    assert (found.current_version, found.patch_url) == ("1.0.0", "/patch/onnxnet_1.0.0_to_1.2.0")
    error = _conflict(client, short_id=ids["1.1.0"]["short_id"], sampled_sha256=ids["1.1.0"]["sampled_sha256"])
    assert "onnxnet 1.1.0, onnxnet 1.2.0" in error.detail and "send sha256" in error.detail
    for version in ("1.1.0", "1.2.0"):
        exact = client.check_update(ids[version]["short_id"], sha256=ids[version]["sha256"])
        assert exact.current_version == version and exact.update_available is (version != "1.2.0")


def test_small_files_need_the_mallorn_fields(two_families: tuple[LiveServer, Path]) -> None:
    server, models = two_families
    client = MallornClient(server.url)
    error = _conflict(client, short_id="0" * 16)
    assert "68 KiB" in error.detail and "file_size, header_hash, tail_hash" in error.detail
    found = client.check_update("0" * 16, file_size=_ids(models, "tiny", "1")["file_size"])
    assert (found.current_version, found.latest_version, found.patch_url) == ("1", "2", "/patch/tiny_1_to_2")


def test_sampled_hash_works_with_manifests_that_lack_it(two_families: tuple[LiveServer, Path]) -> None:
    server, models = two_families
    manifest_file = server.repo / "onnxnet" / "manifest.json"
    original = manifest_file.read_bytes()
    document = json.loads(original)
    for version in document["versions"]:
        del version["sampled_sha256"]
    manifest_file.write_text(json.dumps(document))  # as written by a lorien before the field existed
    try:
        ids = _ids(models, "onnxnet", "1.0.0")
        found = MallornClient(server.url).check_update(ids["short_id"], sampled_sha256=ids["sampled_sha256"])
        assert found.current_version == "1.0.0"
    finally:
        manifest_file.write_bytes(original)


def test_fingerprint_endpoint(live_server: LiveServer, models_dir: Path) -> None:
    client = MallornClient(live_server.url)
    answer = client.fingerprint("classifier_1.0.0")
    expected = fingerprint(models_dir / "classifier" / "1.0.0.tflite")
    assert (answer.format, answer.file_size, answer.header_hash, answer.tail_hash, answer.short_id) == (
        expected.format,
        expected.file_size,
        expected.header_hash,
        expected.tail_hash,
        expected.short_id,
    )
    with pytest.raises(MallornHTTPError) as missing:
        client.fingerprint("model_v1")
    assert missing.value.status == 404 and "Model not found" in missing.value.detail


def test_create_patch(live_server: LiveServer) -> None:
    client = MallornClient(live_server.url)
    created = client.create_patch("1.0.0", "1.1.0", headers=TOKEN)
    assert created.patch_id == "classifier_1.0.0_to_1.1.0" and created.url == f"/patch/{created.patch_id}"
    assert created.compression_ratio > 1 and len(client.download_patch(created.url)[1]) == created.patch_size
    assert client.create_patch("1.0.0", "1.1.0", headers=TOKEN) == created  # already there: same answer
    with pytest.raises(MallornHTTPError) as refused:
        client.create_patch("1.0.0", "1.1.0")
    assert refused.value.status == 401 and "Bearer" in refused.value.detail
    with pytest.raises(MallornHTTPError) as unknown:
        client.create_patch("1.0.0", "9.9.9", headers=TOKEN)
    assert unknown.value.status == 404


def test_create_patch_without_query_parameters_is_422(live_server: LiveServer) -> None:
    error = MallornClient(live_server.url).post_raw("/create-patch?source_version=1.0.0", b"", TOKEN)
    assert error.status == 422 and error.detail == [
        ValidationItem(["query", "target_version"], "Field required", "missing")
    ]


@pytest.mark.parametrize(
    "as_sent",
    [lambda n: f" {n} ", lambda n: f"+{n}", lambda n: f"{n}.00", float],
    ids=["spaces", "+", ".00", "float"],
)
def test_file_size_is_read_as_pydantic_reads_an_int(live_server: LiveServer, models_dir: Path, as_sent) -> None:
    """The reference's ``file_size: Optional[int]`` is validated in pydantic's lax mode: a numeric string or a
    number without a fraction is that integer (a client that sends ``"file_size": "2114064"`` gets its update)."""
    fp = fingerprint(models_dir / "classifier" / "1.0.0.tflite")
    client = MallornClient(live_server.url)
    update = client.check_update(fp.short_id, as_sent(fp.file_size))
    assert (update.current_version, update.update_available) == ("1.0.0", True)
    assert client.check_update(fp.short_id, True).current_version == "unknown"  # pydantic: True is 1


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b"", ["body"], "missing"),
        (b"{not json", ["body", 1], "json_invalid"),
        (b"[1, 2]", ["body"], "model_attributes_type"),
        (b'{"file_size": 3}', ["body", "short_id"], "missing"),
        (b'{"short_id": 5}', ["body", "short_id"], "string_type"),
        (b'{"short_id": "ab", "file_size": "big"}', ["body", "file_size"], "int_parsing"),
        (b'{"short_id": "ab", "file_size": "12.5"}', ["body", "file_size"], "int_parsing"),
        (b'{"short_id": "ab", "file_size": 12.5}', ["body", "file_size"], "int_from_float"),
        (b'{"short_id": "ab", "file_size": [12]}', ["body", "file_size"], "int_type"),
        (b'{"short_id": "ab", "sampled_sha256": "xyz"}', ["body", "sampled_sha256"], "string_pattern_mismatch"),
        (b'{"short_id": "ab", "header_hash": 1}', ["body", "header_hash"], "string_type"),
    ],
)
def test_malformed_check_update_is_422_with_detail(
    live_server: LiveServer, body: bytes, loc: list, kind: str
) -> None:
    error = MallornClient(live_server.url).post_raw("/check-update", body)
    assert error.status == 422 and [(item.loc, item.type) for item in error.detail] == [(loc, kind)]


def test_pages_flag_every_group_sharing_a_mallorn_identity(two_families: tuple[LiveServer, Path]) -> None:
    repo = two_families[0].repo
    root = (repo / "index.html").read_text()
    assert "Shared Mallorn identities" in root
    assert "onnxnet 1.0.0, onnxnet 1.1.0, onnxnet 1.2.0" in root and "tiny 1, tiny 2" in root
    family = (repo / "onnxnet" / "index.html").read_text()
    assert "(shared with 1.1.0, 1.2.0)" in family and "same Mallorn fingerprint" in family
    assert "sha256 (some also share their sampled hash)" in family  # 1.1.0 and 1.2.0 differ between samples
    assert "files under 68 KiB all have this short_id" in (repo / "tiny" / "index.html").read_text()
