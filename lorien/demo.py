"""``lorien demo``: the whole product on embedded defaults, in a temporary directory, in a few seconds.

1. generate a TFLite model family with three fine-tuned versions (``lorien.modelgen``);
2. ``publish`` it into a static repository;
3. serve the repository with ``lorien serve``'s app on a free loopback port (waitress, in a thread);
4. act as a device holding version 1: fingerprint it, read ``index.json`` and the manifest over HTTP, find
   the installed version by (size, header_hash, tail_hash), pick the patch to the latest version;
5. download the patch with two HTTP Range requests, check its MD5 and SHA-256;
6. apply it and check the SHA-256 of the result against the manifest;
7. print what it cost: full model bytes vs patch bytes.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import waitress

from lorien.modelgen import write_family
from publisher.publish import publish
from publisher.serve import make_app
from repo.engine import apply_patch, require_engine
from repo.errors import IntegrityError, LorienError
from repo.fetch import HttpFetcher
from repo.fingerprint import fingerprint
from repo.hashing import digest_chunks, sha256_file
from repo.inspect import human_size
from repo.layout import INDEX_FILE
from repo.manifest import parse_index, parse_manifest

FAMILY = "demo-classifier"
VERSIONS = ["1.0.0", "1.1.0", "1.2.0"]


def _step(message: str) -> None:
    print(f"• {message}", flush=True)


def run_demo(keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="lorien-demo-"))
    try:
        return _run(workdir)
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path) -> int:
    started = time.perf_counter()
    models, repo, device = workdir / "models", workdir / "repo", workdir / "device"
    paths = write_family(models / FAMILY, VERSIONS)
    _step(
        f"generated {len(paths)} TFLite versions of '{FAMILY}' in {models} ({human_size(paths[-1].stat().st_size)} each)"
    )

    report = publish(models, repo)
    if not report.ok:
        raise LorienError("; ".join(report.all_problems()))
    made = sum(len(f.patches_created) for f in report.families)
    _step(f"published to {repo}: {len(VERSIONS)} versions, {made} patches")

    server = waitress.create_server(make_app(repo), host="127.0.0.1", port=0, threads=4)
    base_url = f"http://127.0.0.1:{server.effective_port}/"
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _step(f"serving the repository at {base_url} (open {base_url}index.html in a browser)")
        return _device_update(HttpFetcher(base_url), paths[0], device, started)
    finally:
        server.close()
        thread.join(timeout=5)


def _device_update(fetcher: HttpFetcher, installed_source: Path, device: Path, started: float) -> int:
    device.mkdir(parents=True)
    installed = device / "model.tflite"
    shutil.copyfile(installed_source, installed)
    local = fingerprint(installed)
    _step(f"device holds a model with short_id {local.short_id} ({local.format}, {human_size(local.file_size)})")

    index = parse_index(fetcher.read_document(INDEX_FILE))
    entry = index.family(FAMILY)
    manifest = parse_manifest(fetcher.read_document(entry.manifest), entry.manifest)
    current = next(v for v in manifest.versions if v.fingerprint.matches(local))
    if sha256_file(installed) != current.sha256:
        raise IntegrityError("installed model matches a fingerprint but not its SHA-256")
    latest = manifest.latest_entry()
    patch = manifest.patch(current.version, latest.version)
    if patch is None:
        raise LorienError(f"no patch {current.version} → {latest.version} in the manifest")
    _step(
        f"manifest (sequence {manifest.sequence}): installed {current.version}, latest {latest.version}, "
        f"patch {patch.id} is {human_size(patch.size)} (engine {patch.engine})"
    )

    require_engine(patch.engine, f"patch {patch.id}")
    middle = patch.size // 2
    first = fetcher.read_range(patch.blob, 0, middle - 1)
    second = fetcher.read_range(patch.blob, middle, patch.size - 1)
    digests = digest_chunks([first, second])
    if (digests.size, digests.md5, digests.sha256) != (patch.size, patch.md5, patch.sha256):
        raise IntegrityError(f"downloaded patch does not match the manifest (md5 {digests.md5})")
    patch_file = device / f"{patch.id}.patch"
    patch_file.write_bytes(first + second)
    _step(
        f"downloaded the patch in two Range requests ({len(first)} + {len(second)} bytes); MD5 and SHA-256 match"
    )

    updated = device / "model.new.tflite"
    result = apply_patch(installed, patch_file, updated)
    if result.target_sha256 != latest.sha256:
        raise IntegrityError("patched model does not match the manifest's SHA-256")
    updated.replace(installed)
    _step(f"applied: model is now {latest.version}, SHA-256 {latest.sha256[:16]}… verified")

    saving = 100 * (1 - patch.size / latest.size)
    print(
        f"\nsummary: full model {latest.size} bytes, patch {patch.size} bytes "
        f"({100 * patch.size / latest.size:.1f}% of full, {saving:.1f}% saved), "
        f"total time {time.perf_counter() - started:.1f}s"
    )
    return 0
