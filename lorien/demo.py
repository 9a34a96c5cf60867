"""``lorien demo``: the whole product on embedded defaults, in a temporary directory, in a few seconds.

1. generate a TFLite model family with three fine-tuned versions (``lorien.modelgen``);
2. make an ed25519 key pair and ``publish`` the family into a static repository, signed with it (every
   manifest and ``index.json`` gets a ``.sig``; manifests expire in 7 days);
3. serve the repository with ``lorien serve``'s app on a free loopback port (waitress, in a thread);
4. run the real device updater (``device/``: Bottle API on waitress, in a thread), trusting only that public
   key, for a device holding version 1 and drive it over its HTTP API — with the token the device generated into
   its state directory (``state_dir/api_token``), as any local client does: ``POST /api/v1.0/check`` (signature →
   expiry and sequence → fingerprint → installed version →
   cheapest plan), ``POST /api/v1.0/update-latest`` (resumable download → MD5 + SHA-256 → apply → atomic deploy
   with backup and health check), ``GET /api/v1.0/status`` until done;
5. print what it cost: full model bytes vs downloaded bytes.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import requests
import waitress

from lorien.device.api import make_app as make_device_app
from lorien.device.config import check_environment, load_config
from lorien.device.startup import api_token
from lorien.device.updater import Updater
from lorien.modelgen import write_family
from lorien.publisher.publish import PublishOptions, publish
from lorien.publisher.serve import make_app
from lorien.repo.errors import LorienError
from lorien.repo.fingerprint import fingerprint
from lorien.repo.inspect import human_size
from lorien.repo.signing import generate_keypair, load_signing_key

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

    private_key, _public_key, keyid = generate_keypair(workdir / "keys")
    _step(
        f"made signing key {keyid[:16]}… ({private_key.name} stays with the publisher; devices get the repository's "
        "TUF root.json)"
    )
    report = publish(models, repo, options=PublishOptions(sign_keys=(load_signing_key(private_key),)))
    if not report.ok:
        raise LorienError("; ".join(report.all_problems()))
    made = sum(len(f.patches_created) for f in report.families)
    _step(
        f"published to {repo}: {len(VERSIONS)} versions, {made} patches; signed TUF metadata in {repo}/metadata/ "
        "(root, targets, snapshot, timestamp)"
    )

    server = waitress.create_server(make_app(repo), host="127.0.0.1", port=0, threads=4)
    base_url = f"http://127.0.0.1:{server.effective_port}/"
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _step(f"serving the repository at {base_url} (open {base_url}index.html in a browser)")
        return _device_update(base_url, paths[0], device, repo / "metadata" / "1.root.json", started)
    finally:
        server.close()
        thread.join(timeout=5)


def _device_update(base_url: str, installed_source: Path, device: Path, trusted_root: Path, started: float) -> int:
    """Run the real device updater (its Bottle API on waitress, in a thread) and drive it over HTTP."""
    device.mkdir(parents=True)
    installed = device / "model.tflite"
    shutil.copyfile(installed_source, installed)
    local = fingerprint(installed)
    _step(f"device holds a model with short_id {local.short_id} ({local.format}, {human_size(local.file_size)})")
    config = load_config(
        None,
        {
            "repo_url": base_url,
            "family": FAMILY,
            "model_path": str(installed),
            "state_dir": str(device / "state"),
            "port": 0,
            "trusted_root": str(trusted_root),
        },
    )
    check_environment(config)
    updater = Updater(config)
    token, where = api_token(config)
    api = waitress.create_server(make_device_app(updater, token), host="127.0.0.1", port=0, threads=2)
    api_url = f"http://127.0.0.1:{api.effective_port}/api/v1.0/"
    # a daemon thread: it ends with the demo (closing a waitress server from another thread races its loop)
    threading.Thread(target=api.run, daemon=True).start()
    _step(f"device updater API at {api_url}; {where}")
    headers = {"Authorization": f"Bearer {token}"}
    plan = _call("POST", api_url + "check", headers)
    steps = ", ".join(
        f"patch {s['source']}→{s['target']} ({human_size(s['size'])}, engine {s['engine']})"
        if s["kind"] == "patch"
        else f"full {s['target']}"
        for s in plan["steps"]
    )
    trust = _call("GET", api_url + "status")["trust"]["accepted_manifest"]
    _step(
        f"check: manifest verified ({trust['signed_by']}), sequence {trust['sequence']}, expires "
        f"{trust['expires']}; installed {plan['installed']['version']}, latest {plan['latest']}; plan: {steps}"
    )
    _call("POST", api_url + "update-latest", headers)
    while True:
        status = _call("GET", api_url + "status")
        if not status["busy"] and status["stage"] in ("idle", "failed"):
            break
        time.sleep(0.05)
    result = status["last_result"]
    if not result["ok"]:
        raise LorienError(f"device update failed: {result['message']}")
    _step(
        f"update-latest: {result['message']}; model is now {status['installed_version']}, SHA-256 "
        f"{status['installed_sha256'][:16]}… verified; backup kept: {', '.join(status['backups'])}"
    )
    transferred, full = plan["download_bytes"], plan["full_size"]
    print(
        f"\nsummary: full model {full} bytes, downloaded {transferred} bytes "
        f"({100 * transferred / full:.1f}% of full, {100 * (1 - transferred / full):.1f}% saved), "
        f"total time {time.perf_counter() - started:.1f}s"
    )
    return 0


def _call(method: str, url: str, headers: dict[str, str] | None = None) -> dict:
    answer = requests.request(method, url, headers=headers, timeout=60).json()
    if answer["code"] != 200:
        raise LorienError(f"device API {url}: {answer['msg']}")
    return answer["data"]
