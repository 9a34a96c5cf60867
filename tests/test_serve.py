"""`lorien serve` as a real subprocess (waitress): static semantics and the Mallorn seed endpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from lorien.repo.engine import apply_patch
from tests.support.processes import LiveServer


def _manifest(server: LiveServer) -> dict:
    return requests.get(server.url + "classifier/manifest.json", timeout=10).json()


def test_integration_publish_serve_fetch_ranges_apply(
    live_server: LiveServer, tmp_path: Path, models_dir: Path
) -> None:
    index = requests.get(live_server.url + "index.json", timeout=10)
    assert index.status_code == 200 and index.headers["Content-Type"] == "application/json"
    family = index.json()["families"][0]
    manifest = requests.get(live_server.url + family["manifest"], timeout=10).json()
    patch = next(p for p in manifest["patches"] if p["from"] == "1.0.0")
    chunks, size, step = [], patch["size"], patch["size"] // 3 + 1
    for start in range(0, size, step):
        end = min(start + step, size) - 1
        response = requests.get(
            live_server.url + patch["blob"], headers={"Range": f"bytes={start}-{end}"}, timeout=10
        )
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        chunks.append(response.content)
    data = b"".join(chunks)
    assert hashlib.sha256(data).hexdigest() == patch["sha256"] and hashlib.md5(data).hexdigest() == patch["md5"]
    (tmp_path / "p.patch").write_bytes(data)
    apply_patch(models_dir / "classifier" / "1.0.0.tflite", tmp_path / "p.patch", tmp_path / "out.tflite")
    assert (tmp_path / "out.tflite").read_bytes() == (models_dir / "classifier" / "1.2.0.tflite").read_bytes()


def test_etag_304_and_cache_headers(live_server: LiveServer) -> None:
    first = requests.get(live_server.url + "classifier/manifest.json", timeout=10)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["Cache-Control"] == "no-cache"
    again = requests.get(live_server.url + "classifier/manifest.json", headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    listed = requests.get(
        live_server.url + "classifier/manifest.json",
        headers={"If-None-Match": f'"nope", W/{etag}'},
        timeout=10,
    )
    assert listed.status_code == 304
    stale = requests.get(
        live_server.url + "classifier/manifest.json", headers={"If-None-Match": '"old"'}, timeout=10
    )
    assert stale.status_code == 200
    blob = _manifest(live_server)["versions"][0]["blob"]
    response = requests.head(live_server.url + blob, timeout=10)
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Accept-Ranges"] == "bytes"
    page = requests.get(live_server.url, timeout=10)
    assert (
        page.status_code == 200
        and page.headers["Content-Type"].startswith("text/html")
        and "classifier" in page.text
    )


def test_416_for_unsatisfiable_range(live_server: LiveServer) -> None:
    version = _manifest(live_server)["versions"][0]
    response = requests.get(
        live_server.url + version["blob"], headers={"Range": f"bytes={version['size']}-"}, timeout=10
    )
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{version['size']}"


def test_if_range_and_multi_range(live_server: LiveServer) -> None:
    version = _manifest(live_server)["versions"][0]
    url = live_server.url + version["blob"]
    etag = requests.head(url, timeout=10).headers["ETag"]
    same = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": etag}, timeout=10)
    assert same.status_code == 206 and len(same.content) == 10
    changed = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": '"other"'}, timeout=10)
    assert changed.status_code == 200 and len(changed.content) == version["size"]
    multi = requests.get(url, headers={"Range": "bytes=0-1,5-6"}, timeout=10)
    assert multi.status_code == 200 and len(multi.content) == version["size"]
    suffix = requests.get(url, headers={"Range": "bytes=-100"}, timeout=10)
    assert suffix.status_code == 206 and len(suffix.content) == 100


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", ".lock", "blobs/../.lock", "nope.json"]
)
def test_no_traversal_or_hidden_files(live_server: LiveServer, path: str) -> None:
    response = requests.get(live_server.url + path, timeout=10)
    assert response.status_code in (403, 404)
    assert "root:" not in response.text


def test_seed_manifest_patch_fingerprint_health(live_server: LiveServer) -> None:
    health = requests.get(live_server.url + "health", timeout=10).json()
    assert health == {"status": "ok", "families": 1, "versions": 3}
    seed = requests.get(live_server.url + "manifest", timeout=10).json()
    assert {m["version"] for m in seed["models"]} == {"1.0.0", "1.1.0", "1.2.0"}
    patch = seed["patches"][0]
    full = requests.get(live_server.url + patch["url"].lstrip("/"), timeout=10)
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == patch["sha256"]
    resumed = requests.get(
        live_server.url + patch["url"].lstrip("/"), headers={"Range": "bytes=1000-"}, timeout=10
    )
    assert resumed.status_code == 206 and resumed.content == full.content[1000:]
    assert requests.get(live_server.url + "patch/nope", timeout=10).status_code == 404
    fp = requests.get(live_server.url + "fingerprint/classifier_1.0.0", timeout=10).json()
    assert fp["version"] == "1.0.0" and len(fp["short_id"]) == 16
    assert requests.get(live_server.url + "fingerprint/classifier", timeout=10).json()["version"] == "1.2.0"
    assert requests.get(live_server.url + "fingerprint/classifier@1.1.0", timeout=10).json()["version"] == "1.1.0"
    assert requests.get(live_server.url + "fingerprint/other", timeout=10).status_code == 404


def test_check_update(live_server: LiveServer) -> None:
    manifest = _manifest(live_server)
    old = manifest["versions"][0]["fingerprint"]
    answer = requests.post(live_server.url + "check-update", json={"short_id": old["short_id"]}, timeout=10).json()
    assert answer["update_available"] is True
    assert (answer["current_version"], answer["latest_version"]) == ("1.0.0", "1.2.0")
    assert answer["patch_url"] == "/patch/classifier_1.0.0_to_1.2.0"
    assert answer["expected_hash"] == manifest["versions"][-1]["sha256"]
    latest = manifest["versions"][-1]["fingerprint"]
    answer = requests.post(
        live_server.url + "check-update",
        json={"short_id": latest["short_id"], "file_size": latest["file_size"]},
        timeout=10,
    ).json()
    assert answer["update_available"] is False and answer["patch_url"] is None
    unknown = requests.post(live_server.url + "check-update", json={"short_id": "f" * 16}, timeout=10)
    assert unknown.status_code == 404 and "short_id" in unknown.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"short_id": 5}).encode(), "short_id"),
        (json.dumps({"short_id": "XYZ"}).encode(), "short_id"),
        (json.dumps({"short_id": "0" * 16, "file_size": "big"}).encode(), "file_size"),
        (json.dumps({"short_id": "0" * 16, "header_hash": 1}).encode(), "header_hash"),
    ],
)
def test_check_update_bad_input_is_400(live_server: LiveServer, body: bytes, fragment: str) -> None:
    response = requests.post(
        live_server.url + "check-update", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400 and fragment in response.json()["error"]


def test_check_update_reports_ambiguous_short_ids(tmp_path: Path) -> None:
    from lorien.publisher.publish import publish
    from tests.support.processes import start_server

    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "1.bin").write_bytes(b"first small model")
    (models / "tiny" / "2.bin").write_bytes(b"second small model, longer")
    assert publish(models, tmp_path / "repo").ok
    server = start_server(tmp_path / "repo")
    try:
        response = requests.post(server.url + "check-update", json={"short_id": "0" * 16}, timeout=10)
        assert response.status_code == 409 and "ambiguous" in response.json()["error"]
        exact = requests.post(
            server.url + "check-update", json={"short_id": "0" * 16, "file_size": 17}, timeout=10
        )
        assert exact.status_code == 200 and exact.json()["current_version"] == "1"
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


def test_create_patch_requires_admin_token_and_creates(live_server: LiveServer) -> None:
    url = live_server.url + "create-patch?source_version=1.0.0&target_version=1.1.0"
    assert requests.post(url, timeout=10).status_code == 401
    assert requests.post(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    created = requests.post(url, headers={"Authorization": "Bearer s3cret"}, timeout=60)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "classifier_1.0.0_to_1.1.0"
    manifest = _manifest(live_server)
    assert manifest["sequence"] == 2
    assert "classifier_1.0.0_to_1.1.0" in {p["id"] for p in manifest["patches"]}
    again = requests.post(url, headers={"Authorization": "Bearer s3cret"}, timeout=60)
    assert again.status_code == 200 and again.json()["created"] is False
    missing = requests.post(
        live_server.url + "create-patch?source_version=1.0.0",
        headers={"Authorization": "Bearer s3cret"},
        timeout=10,
    )
    assert missing.status_code == 400
    unknown = requests.post(
        live_server.url + "create-patch?source_version=1.0.0&target_version=9",
        headers={"Authorization": "Bearer s3cret"},
        timeout=10,
    )
    assert unknown.status_code == 404


def test_create_patch_disabled_without_token(published: Path) -> None:
    from tests.support.processes import start_server

    server = start_server(published)
    try:
        response = requests.post(server.url + "create-patch?source_version=1.0.0&target_version=1.1.0", timeout=10)
        assert response.status_code == 403 and "--admin-token" in response.json()["error"]
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


def test_serve_missing_repo_is_a_clear_error(tmp_path: Path) -> None:
    from tests.support.processes import run_lorien

    result = run_lorien("serve", tmp_path / "absent", "--port", "0")
    assert result.returncode == 2 and "does not exist" in result.stderr
