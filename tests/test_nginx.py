"""The generated nginx configuration, served by real nginx: headers, ranges, refusals, and real devices."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.tcp_proxy import CuttingProxy
from lorien.modelgen import DEFAULT_LAYERS, write_family
from lorien.publisher.publish import publish
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.nginx_server import Nginx
from tests.support.processes import run_lorien

pytestmark = pytest.mark.slow  # real nginx and `lorien device` processes


@pytest.fixture
def nginx(published: Path, tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(published, tmp_path / "nginx")
    yield server
    server.stop()


def _manifest(repo: Path, family: str = "classifier") -> dict:
    return json.loads((repo / family / "manifest.json").read_text())


def test_ranges_validators_and_cache_headers(nginx: Nginx, published: Path) -> None:
    patch = _manifest(published)["patches"][0]
    data = (published / patch["blob"]).read_bytes()
    part = requests.get(nginx.url + patch["blob"], headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert part.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert part.headers["Content-Type"] == "application/octet-stream"
    for refused, status in (
        (requests.get(nginx.url + patch["blob"], headers={"Range": f"bytes={len(data)}-"}, timeout=10), 416),
        (requests.get(nginx.url + "blobs/sha256/00/" + "0" * 64 + ".patch", timeout=10), 404),
    ):  # an answer about this request, not the blob: never kept for a year
        directives = [directive.strip() for directive in refused.headers["Cache-Control"].split(",")]
        assert refused.status_code == status and "no-store" in directives, refused.headers
    stale = requests.get(
        nginx.url + patch["blob"], headers={"Range": "bytes=100-199", "If-Range": '"other"'}, timeout=10
    )
    assert stale.status_code == 200 and stale.content == data  # changed validator → whole file
    whole = requests.get(nginx.url + patch["blob"], headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert "Content-Encoding" not in whole.headers and whole.content == data  # never gzip a model or patch
    assert whole.headers["ETag"] and whole.headers["Last-Modified"]

    first = requests.get(nginx.url + "classifier/manifest.json", timeout=10)
    assert first.headers["Cache-Control"] == "no-cache" and first.headers["Content-Type"] == "application/json"
    again = requests.get(
        nginx.url + "classifier/manifest.json", headers={"If-None-Match": first.headers["ETag"]}, timeout=10
    )
    assert again.status_code == 304
    zipped = requests.get(
        nginx.url + "classifier/manifest.json", headers={"Accept-Encoding": "gzip"}, timeout=10, stream=True
    )
    assert zipped.headers["Content-Encoding"] == "gzip" and zipped.headers["Cache-Control"] == "no-cache"
    assert json.loads(gzip.decompress(zipped.raw.read()))["family"] == "classifier"
    index = requests.get(nginx.url + "index.json", timeout=10)
    assert index.headers["Cache-Control"] == "no-cache" and index.json()["families"][0]["name"] == "classifier"
    for page in ("", "index.html", "classifier/", "classifier/index.html"):
        answer = requests.get(nginx.url + page, timeout=10)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html"), page
        assert answer.headers["Cache-Control"] == "no-cache", page
    log = nginx.access_log()
    assert any('" 206 100 range="bytes=100-199"' in line for line in log), log[-3:]


def test_nothing_outside_the_repository_and_no_listings(nginx: Nginx, published: Path) -> None:
    (published / "blobs" / "escape").symlink_to("/etc/passwd")
    for path in ("etc/passwd", ".lock", "blobs/", "blobs/escape", "classifier/.staging/x", "nothing.json"):
        answer = requests.get(nginx.url + path, timeout=10)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "root:" not in answer.text
        assert answer.headers["Cache-Control"] in ("no-store", "no-cache"), (path, answer.headers)  # never kept
    raw = socket.create_connection(("127.0.0.1", nginx.port))
    raw.sendall(b"GET /../../etc/passwd HTTP/1.0\r\n\r\n")
    answer = raw.recv(4096).decode(errors="replace")
    raw.close()
    assert answer.startswith("HTTP/1.1 400") and "root:" not in answer


def test_nginx_config_rejects_bad_input(tmp_path: Path, published: Path) -> None:
    cases = [
        ("--listen", "127.0.0.1:99999", "not HOST:PORT"),
        ("--repo", str(tmp_path / "absent"), "not a directory"),
        ("--prefix", str(tmp_path / "with space"), "characters nginx would misread"),
    ]
    for option, value, message in cases:
        args = {
            "--repo": str(published),
            "--listen": "127.0.0.1:8080",
            "--prefix": str(tmp_path / "p"),
            option: value,
        }
        result = run_lorien("nginx-config", *[x for pair in args.items() for x in pair])
        assert result.returncode == 2 and message in result.stderr, (option, result.stderr)


# --------------------------------------------------------------------------- real devices against real nginx


@pytest.fixture
def big_family(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    all_versions = write_family(
        tmp_path / "all" / "cls", ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=DEFAULT_LAYERS, seed=31
    )
    models = tmp_path / "models" / "cls"
    models.mkdir(parents=True)
    for path in all_versions[:2]:
        shutil.copy(path, models)
    assert publish(tmp_path / "models", tmp_path / "repo").ok
    return tmp_path / "models", tmp_path / "repo", all_versions


def test_devices_update_through_nginx_with_a_cut_connection_and_a_new_publish(
    big_family: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    models, repo, all_versions = big_family
    server = Nginx(repo, tmp_path / "nginx")
    proxy = CuttingProxy(server.port, cut_after=700_000, cuts=1)
    devices: list[DeviceProcess] = []
    try:
        # a device with an unknown model takes the full 2 MB file; the proxy cuts it once mid-download
        unknown = tmp_path / "a" / "model.tflite"
        unknown.parent.mkdir()
        unknown.write_bytes(b"TFL3 not published" * 1000)
        devices.append(DeviceProcess(tmp_path / "a", proxy.url, unknown))
        assert devices[-1].api("POST", "update-latest").status_code == 200
        assert devices[-1].wait_until_done()["last_result"]["ok"]
        assert sha256(unknown) == hashlib.sha256(all_versions[1].read_bytes()).hexdigest()
        assert proxy.cut_connections == 1
        assert any(" 206 " in line and 'range="bytes=' in line for line in server.access_log())

        # a device on 1.0.0 checks, the publisher adds 1.2.0, the next check sees it (manifests are no-cache)
        installed = tmp_path / "b" / "model.tflite"
        installed.parent.mkdir()
        shutil.copy(all_versions[0], installed)
        patch_proxy = CuttingProxy(server.port, cut_after=100_000, cuts=1)  # the ~150 KB patch is cut once
        devices.append(DeviceProcess(tmp_path / "b", patch_proxy.url, installed))
        first = devices[-1].api("POST", "check").json()["data"]
        assert first["latest"] == "1.1.0"
        shutil.copy(all_versions[2], models / "cls")
        assert publish(models, repo).ok
        second = devices[-1].api("POST", "check").json()["data"]
        assert second["latest"] == "1.2.0" and [s["kind"] for s in second["steps"]] == ["patch"]
        devices[-1].api("POST", "update-latest")
        assert devices[-1].wait_until_done()["last_result"]["ok"]
        assert sha256(installed) == hashlib.sha256(all_versions[2].read_bytes()).hexdigest()
        assert patch_proxy.cut_connections == 1
        patch_requests = [line for line in server.access_log() if ".patch " in line]
        assert len(patch_requests) == 2 and 'range="-"' in patch_requests[0], patch_requests
        resumed_at = re.search(r'range="bytes=(\d+)-"', patch_requests[1])
        assert " 206 " in patch_requests[1] and resumed_at, patch_requests
        assert 0 < int(resumed_at.group(1)) <= 100_000  # continued from what arrived before the cut

        # the devices named themselves in every request: the access log alone counts the fleet
        for device in devices:
            device.api("POST", "check")  # the next request names the version now installed
        report = run_lorien("fleet-report", tmp_path / "nginx" / "logs" / "access.log", "--json")
        (row,) = json.loads(report.stdout)["rows"]
        assert (row["family"], row["channel"], row["devices"]) == ("cls", "stable", 2), row
        assert row["versions"] == {"1.1.0": 1, "1.2.0": 1}
        assert (row["patch_downloads"], row["full_downloads"], row["redownloading"]) == (1, 1, [])
    finally:
        for device in devices:
            device.stop()
        proxy.close()
        server.stop()


def test_a_plain_python_tuf_client_reads_the_repository_through_nginx_and_follows_a_rotation(
    models_dir: Path, tmp_path: Path
) -> None:
    """python-tuf's own ngclient (its default urllib3 fetcher, nothing from lorien) against real nginx: refresh,
    a family manifest and a patch as targets; then the timestamp and root keys rotate and it follows."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.ngclient import Updater

    from lorien.repo.signing import generate_keypair

    key = generate_keypair(tmp_path / "keys", "publisher")[0]
    new_private, new_public, _ = generate_keypair(tmp_path / "keys", "new")
    repo = tmp_path / "repo"
    assert run_lorien("publish", "--models", models_dir, "--repo", repo, "--sign-key", key).returncode == 0
    server = Nginx(repo, tmp_path / "nginx")
    try:
        bootstrap = (repo / "metadata" / "1.root.json").read_bytes()
        immutable = "public, max-age=31536000, immutable"
        for path, cache in (
            ("metadata/1.snapshot.json", immutable),
            ("metadata/2.root.json", None),  # no such root yet: 404 (the end of a client's root walk)
            ("metadata/timestamp.json", "no-cache"),
            ("metadata/root.json", "no-cache"),
            ("classifier/manifest.json", "no-cache"),
        ):
            answer = requests.get(server.url + path, timeout=10)
            assert answer.status_code == (404 if cache is None else 200), path
            # a 404 that ends a client's root walk must not be cached: the next rotation would stay unseen
            assert answer.headers["Cache-Control"] == (cache or "no-store"), (path, answer.headers)
        sha = hashlib.sha256((repo / "classifier" / "manifest.json").read_bytes()).hexdigest()
        prefixed = requests.get(f"{server.url}classifier/{sha}.manifest.json", timeout=10)
        assert prefixed.status_code == 200 and prefixed.headers["Cache-Control"] == immutable

        def client(name: str) -> Updater:
            return Updater(
                str(tmp_path / name), f"{server.url}metadata/", str(tmp_path / f"{name}-targets"), server.url,
                bootstrap=bootstrap,
            )  # fmt: skip

        first = client("client")
        first.refresh()
        manifest_path = first.download_target(first.get_targetinfo("classifier/manifest.json"))
        manifest = json.loads(Path(manifest_path).read_bytes())
        patch = manifest["patches"][0]
        info = first.get_targetinfo(patch["blob"])
        assert info is not None and info.length == patch["size"] and info.hashes["sha256"] == patch["sha256"]
        assert hashlib.sha256(Path(first.download_target(info)).read_bytes()).hexdigest() == patch["sha256"]
        fetched = [line for line in server.access_log() if "GET /" in line]
        assert any("/metadata/1.snapshot.json" in line for line in fetched)
        assert any(f"{patch['sha256']}.{patch['sha256']}" in line for line in fetched)  # hash-prefixed name

        timestamp_key = json.loads(bootstrap)["signed"]["roles"]["timestamp"]["keyids"][0]
        rotated = run_lorien(
            "trust", "rotate", "--repo", repo, "timestamp", "--old", timestamp_key[:16], "--new", new_public,
            "--sign-key", key, "--sign-key", new_private,
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        second = client("client")  # the same local metadata: it trusts root v1 and walks to v2
        second.refresh()
        assert second.get_targetinfo("classifier/manifest.json") is not None

        # a timestamp signed only by the removed key is refused
        stale = (repo / "metadata" / "timestamp.json").read_bytes()
        document = json.loads(stale)
        from lorien.publisher.tuf_writer import serialize
        from lorien.repo.signing import load_signing_key
        from lorien.repo.tufmeta import parse_metadata, signer

        forged = parse_metadata(stale, "timestamp")
        forged.signed.version = document["signed"]["version"] + 1
        forged.signatures.clear()
        forged.sign(signer(load_signing_key(key)))
        (repo / "metadata" / "timestamp.json").write_bytes(serialize(forged))
        with pytest.raises(UnsignedMetadataError):
            client("client").refresh()
    finally:
        server.stop()
