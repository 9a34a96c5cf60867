"""`lorien serve` as a real subprocess (waitress): static semantics and the Mallorn seed endpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from lorien.repo.engine import apply_patch
from tests.support.processes import LiveServer

pytestmark = pytest.mark.slow  # a real `lorien serve` process per test


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
    assert response.headers["Cache-Control"] == "no-store"  # not the blob's year-long "immutable"
    missing = requests.get(live_server.url + "metadata/2.root.json", timeout=10)
    assert missing.status_code == 404 and missing.headers["Cache-Control"] == "no-store"  # a root walk's end


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


def test_seed_endpoints_keep_lorien_fields(live_server: LiveServer) -> None:
    """Mallorn's shapes are checked by tests/test_mallorn_seed.py; here lorien's additional keys."""
    health = requests.get(live_server.url + "health", timeout=10).json()
    assert (health["status"], health["families"], health["versions"]) == ("healthy", 1, 3)
    seed = requests.get(live_server.url + "manifest", timeout=10).json()
    assert {m["version"] for m in seed["models"]} == {"1.0.0", "1.1.0", "1.2.0"} and seed["families"] == [
        "classifier"
    ]
    assert all(len(m["sampled_sha256"]) == 64 for m in seed["models"])
    patch = seed["patches"][0]
    assert patch["patch_id"] == patch["id"] and patch["family"] == "classifier"
    full = requests.get(live_server.url + patch["url"].lstrip("/"), timeout=10)
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == patch["sha256"]
    fp = requests.get(live_server.url + "fingerprint/classifier_1.0.0", timeout=10).json()
    assert fp["version"] == "1.0.0" and len(fp["short_id"]) == 16 and len(fp["sampled_sha256"]) == 64
    assert requests.get(live_server.url + "fingerprint/classifier", timeout=10).json()["version"] == "1.2.0"
    assert requests.get(live_server.url + "fingerprint/classifier@1.1.0", timeout=10).json()["version"] == "1.1.0"
    missing = requests.get(live_server.url + "patch/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == missing.json()["detail"]


def test_check_update_lorien_fields(live_server: LiveServer) -> None:
    manifest = _manifest(live_server)
    old, latest = manifest["versions"][0], manifest["versions"][-1]
    answer = requests.post(
        live_server.url + "check-update", json={"short_id": old["fingerprint"]["short_id"]}, timeout=10
    ).json()
    assert answer["patch_url"] == "/patch/classifier_1.0.0_to_1.2.0" == "/patch/" + answer["patch_id"]
    assert (answer["family"], answer["full_url"], answer["full_size"]) == (
        "classifier",
        "/" + latest["blob"],
        latest["size"],
    )
    assert (answer["expected_hash"], answer["expected_md5"]) == (latest["sha256"], latest["md5"])
    wrong = requests.post(
        live_server.url + "check-update",
        json={"short_id": old["fingerprint"]["short_id"], "sha256": latest["sha256"]},
        timeout=10,
    )
    assert wrong.status_code == 200 and wrong.json()["current_version"] == "unknown"  # every field sent must agree


def test_check_update_body_limit_and_unknown_route(live_server: LiveServer) -> None:
    large = requests.post(live_server.url + "check-update", data=b" " * (65 * 1024), timeout=10)
    assert large.status_code == 413 and b"exceeds max_body" in large.content  # waitress's own, before the body
    unknown = requests.post(live_server.url + "nope", timeout=10)
    assert unknown.status_code == 405 and unknown.headers["Content-Type"] == "application/json"
    assert unknown.json()["error"] == unknown.json()["detail"]


def test_create_patch_requires_admin_token_and_creates(live_server: LiveServer) -> None:
    url = live_server.url + "create-patch?source_version=1.0.0&target_version=1.1.0"
    assert requests.post(url, timeout=10).status_code == 401
    assert requests.post(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    created = requests.post(url, headers={"X-Admin-Token": "s3cret"}, timeout=60)
    assert created.status_code == 200 and created.json()["created"] is True, created.text
    assert created.json()["id"] == created.json()["patch_id"] == "classifier_1.0.0_to_1.1.0"
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
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "target_version"]
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
