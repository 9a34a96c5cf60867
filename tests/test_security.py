"""Signed metadata, freshness and downgrade rules, end to end: real `lorien serve`, real `lorien device`.

Attacks played against a device that trusts one publisher key: a manifest with one byte changed, a missing
signature, a signature by an untrusted key, an expired manifest, a replayed older manifest (lower sequence), a
forked manifest (same sequence, other bytes), a withdrawn-version downgrade, an unsigned TOPE package, and a
path-traversal blob path. Plus key rotation, `inspect --key`, keygen, and watch mode renewing expiry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lorien.modelgen import write_family
from lorien.publisher.publish import PublishOptions, publish
from lorien.repo.errors import FreshnessError, ManifestError, SignatureError
from lorien.repo.limits import Limits
from lorien.repo.manifest import parse_manifest
from lorien.repo.signing import (
    generate_keypair,
    load_signing_key,
    load_trusted_key,
    sign_document,
    verify_document,
)
from lorien.repo.trust import check_freshness
from tests.support.device_harness import DeviceProcess, sha256
from tests.support.processes import SMALL_LAYERS, LiveServer, run_lorien, start_server

pytestmark = pytest.mark.slow  # real `lorien serve`, `lorien device` and `lorien watch` processes

FAMILY = "cls"
MANIFEST = f"{FAMILY}/manifest.json"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Two publisher key pairs: 'old' and 'new' (for rotation), and one 'evil' the devices never trust."""
    return {name: generate_keypair(tmp_path / "keys", name)[:2] for name in ("old", "new", "evil")}


class Site:
    """A models dir with all three versions on the side, a repository, and `lorien serve` over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.all = root / "all" / FAMILY
        self.models = root / "models"
        self.repo = root / "repo"
        write_family(self.all, ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=SMALL_LAYERS, seed=21)
        (self.models / FAMILY).mkdir(parents=True)
        self.server: LiveServer | None = None

    def add(self, version: str) -> None:
        shutil.copy(self.all / f"{version}.tflite", self.models / FAMILY)

    def withdraw(self, version: str) -> None:
        (self.models / FAMILY / f"{version}.tflite").unlink()

    def publish(self, *key_files: Path, **options) -> None:
        signing = tuple(load_signing_key(path) for path in key_files)
        report = publish(self.models, self.repo, options=PublishOptions(sign_keys=signing, **options))
        assert report.ok, report.all_problems()

    def serve(self) -> str:
        self.server = start_server(self.repo)
        return self.server.url

    def file(self, relative: str) -> Path:
        return self.repo / relative

    def sha(self, version: str) -> str:
        return hashlib.sha256((self.all / f"{version}.tflite").read_bytes()).hexdigest()

    def close(self) -> None:
        if self.server is not None:
            self.server.process.terminate()
            self.server.process.wait(10)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path / "site")
    yield made
    made.close()


def start_device(
    devices: list, site: Site, home: Path, version: str, *trusted: Path, extra: tuple[str, ...] = ()
) -> DeviceProcess:
    model = home / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    shutil.copy(site.all / f"{version}.tflite", model)
    flags = [arg for key in trusted for arg in ("--trusted-key", str(key))]
    device = DeviceProcess(home, site.server.url, model, *flags, *extra, family=FAMILY)
    devices.append(device)
    return device


def serve_signed(site: Site, keys, *versions: str) -> None:
    """Publish ``versions`` (default 1.0.0 and 1.1.0) signed with the 'old' key, and serve the repository."""
    for version in versions or ("1.0.0", "1.1.0"):
        site.add(version)
    site.publish(keys["old"][0])
    site.serve()


def check(device: DeviceProcess) -> dict:
    return device.api("POST", "check").json()


def update(device: DeviceProcess) -> dict:
    assert device.api("POST", "update-latest").json()["code"] == 200
    return device.wait_until_done()


# --------------------------------------------------------------------------- keys and signatures (units)


def test_keygen_writes_a_private_key_only_its_owner_can_read_and_never_overwrites(tmp_path: Path) -> None:
    result = run_lorien("keygen", "--out", tmp_path / "k")
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "k" / "lorien.key", tmp_path / "k" / "lorien.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(private).keyid == load_trusted_key(public).keyid in result.stdout
    again = run_lorien("keygen", "--out", tmp_path / "k")
    assert again.returncode == 2 and "already exists" in again.stderr
    (tmp_path / "file").write_text("x")
    unwritable = run_lorien("keygen", "--out", tmp_path / "file" / "k")
    assert unwritable.returncode == 2 and "cannot write the key pair" in unwritable.stderr
    not_a_key = tmp_path / "k" / "junk.pub"
    not_a_key.write_text("hello")
    with pytest.raises(Exception, match="not a PEM public key"):
        load_trusted_key(not_a_key)


def test_a_signature_refuses_any_changed_byte_an_untrusted_key_and_another_document(keys) -> None:
    old = load_signing_key(keys["old"][0])
    trusted = [load_trusted_key(keys["old"][1])]
    data = json.dumps({"family": FAMILY, "latest": "1.2.0", "pad": "x" * 200}).encode()
    signature = sign_document(data, MANIFEST, [old])
    assert verify_document(data, MANIFEST, signature, trusted) == old.keyid
    for position in (0, len(data) // 2, len(data) - 1):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(SignatureError, match="signature is for other bytes"):
            verify_document(bytes(tampered), MANIFEST, signature, trusted)
    # an attacker who also fixes the recorded digest still fails on the signature itself
    forged = json.loads(signature)
    tampered = data.replace(b"1.2.0", b"1.0.0")
    forged["sha256"] = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(SignatureError, match="does not match the document"):
        verify_document(tampered, MANIFEST, json.dumps(forged).encode(), trusted)
    evil = sign_document(data, MANIFEST, [load_signing_key(keys["evil"][0])])
    with pytest.raises(SignatureError, match="none of which is trusted"):
        verify_document(data, MANIFEST, evil, trusted)
    with pytest.raises(SignatureError, match=r"not 'other/manifest\.json'"):
        verify_document(data, "other/manifest.json", signature, trusted)
    for garbage in (b"", b"{}", b"[1]", b'{"schema": 1, "signatures": [{"algorithm": "rsa"}]}', b"\xff" * 10):
        with pytest.raises(SignatureError):
            verify_document(data, MANIFEST, garbage, trusted)


def test_rotation_any_trusted_key_may_sign_and_both_may_sign_during_the_change(keys) -> None:
    old, new = load_signing_key(keys["old"][0]), load_signing_key(keys["new"][0])
    data = b'{"any": "bytes"}'
    by_new = sign_document(data, MANIFEST, [new])
    by_both = sign_document(data, MANIFEST, [old, new])
    old_pub, new_pub = load_trusted_key(keys["old"][1]), load_trusted_key(keys["new"][1])
    assert verify_document(data, MANIFEST, by_new, [old_pub, new_pub]) == new.keyid
    with pytest.raises(SignatureError, match="none of which is trusted"):
        verify_document(data, MANIFEST, by_new, [old_pub])
    assert verify_document(data, MANIFEST, by_both, [old_pub]) == old.keyid
    assert verify_document(data, MANIFEST, by_both, [new_pub]) == new.keyid


def test_freshness_refuses_expired_and_older_manifests(tmp_path: Path, keys) -> None:
    site = Site(tmp_path / "s")
    site.add("1.0.0")
    site.publish(keys["old"][0], expires_days=1)
    manifest = parse_manifest(site.file(MANIFEST).read_bytes())
    expires = manifest.expires_at()
    assert expires is not None and timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    check_freshness(manifest, manifest.sequence, "m")
    with pytest.raises(FreshnessError, match="expired at"):
        check_freshness(manifest, 0, "m", now=expires + timedelta(seconds=1))
    with pytest.raises(FreshnessError, match=f"sequence {manifest.sequence} is lower than 9"):
        check_freshness(manifest, 9, "m")
    with pytest.raises(ManifestError, match="outside"):
        parse_manifest(site.file(MANIFEST).read_bytes(), limits=Limits(max_blob_bytes=1000))


# --------------------------------------------------------------------------- publisher side


def test_publish_signs_renews_expiry_at_half_life_and_inspect_checks_signatures(tmp_path: Path, keys) -> None:
    site = Site(tmp_path / "s")
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish(keys["old"][0])
    for document in (MANIFEST, "index.json"):
        assert site.file(document + ".sig").is_file()
    first = parse_manifest(site.file(MANIFEST).read_bytes())
    site.publish(keys["old"][0])  # nothing changed, expiry still 7 days away: nothing rewritten
    assert parse_manifest(site.file(MANIFEST).read_bytes()) == first
    site.publish(keys["old"][0], expires_days=1)  # a shorter validity than what is published: renewed now
    renewed = parse_manifest(site.file(MANIFEST).read_bytes())
    assert renewed.sequence == first.sequence + 1 and renewed.expires < first.expires
    assert renewed.same_content(first)

    public = keys["old"][1]
    ok = run_lorien("inspect", site.repo, "--verify", "--key", public)
    assert ok.returncode == 0 and "signature ok" in ok.stdout, ok.stdout + ok.stderr
    wrong = run_lorien("inspect", site.repo, "--key", keys["evil"][1])
    assert wrong.returncode == 1 and "none of which is trusted" in wrong.stdout
    raw = site.file(MANIFEST).read_bytes()
    signature_before = site.file(MANIFEST + ".sig").read_bytes()
    site.file(MANIFEST).write_bytes(raw.replace(b'"latest": "1.1.0"', b'"latest": "1.0.0"'))
    tampered = run_lorien("inspect", site.repo, "--key", public)
    assert tampered.returncode == 1 and "signature is for other bytes" in tampered.stdout
    site.file(MANIFEST).write_bytes(raw)

    unsigned = run_lorien("publish", "--models", site.models, "--repo", site.repo)
    assert unsigned.returncode == 2 and "repository is signed" in unsigned.stderr
    assert site.file(MANIFEST).read_bytes() == raw  # nothing written

    # someone with write access to the served directory edits a manifest: the publisher must not bless it
    edited = json.loads(raw)
    edited["allow_downgrade"] = True
    site.file(MANIFEST).write_bytes(json.dumps(edited).encode())
    blessed = run_lorien("publish", "--models", site.models, "--repo", site.repo, "--sign-key", keys["old"][0])
    assert blessed.returncode == 2 and "not signed by the given --sign-key" in blessed.stderr, blessed.stderr
    assert site.file(MANIFEST + ".sig").read_bytes() == signature_before
    site.file(MANIFEST).write_bytes(raw)
    other_key = run_lorien("publish", "--models", site.models, "--repo", site.repo, "--sign-key", keys["new"][0])
    assert other_key.returncode == 2 and "publish once with both the old and the new" in other_key.stderr
    both = run_lorien(
        "publish",
        "--models",
        site.models,
        "--repo",
        site.repo,
        "--sign-key",
        keys["old"][0],
        "--sign-key",
        keys["new"][0],
    )
    assert both.returncode == 0, both.stderr


def test_watch_renews_manifests_before_they_expire(tmp_path: Path, keys) -> None:
    site = Site(tmp_path / "s")
    site.add("1.0.0")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "lorien.cli", "watch", "--models", str(site.models), "--repo", str(site.repo),
            "--sign-key", str(keys["old"][0]), "--expires-days", "0.0001",  # 8.6 s: renewed after ~4.3 s
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith(f"renewed family={FAMILY}"):
                break
        else:
            raise AssertionError("watch never renewed the manifest:\n" + "".join(lines))
        raw = site.file(MANIFEST).read_bytes()
        manifest = parse_manifest(raw)
        assert manifest.sequence >= 2 and manifest.expires_at() > datetime.now(UTC)
        signature = site.file(MANIFEST + ".sig").read_bytes()
        verify_document(raw, MANIFEST, signature, [load_trusted_key(keys["old"][1])])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


# --------------------------------------------------------------------------- device side, real processes


def test_device_refuses_tampered_unsigned_foreign_replayed_and_forked_manifests(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    serve_signed(site, keys)
    device = start_device(devices, site, tmp_path / "d", "1.0.0", keys["old"][1])
    model = device.model
    answer = check(device)
    assert answer["code"] == 200 and answer["data"]["latest"] == "1.1.0", answer
    trust = device.status()["trust"]["accepted_manifest"]
    assert trust["sequence"] == 1 and trust["signed_by"] == load_trusted_key(keys["old"][1]).keyid

    manifest, signature = site.file(MANIFEST), site.file(MANIFEST + ".sig")
    good_manifest, good_signature = manifest.read_bytes(), signature.read_bytes()

    def refused(expected: str) -> None:
        answer = check(device)
        assert answer["code"] == 422 and expected in answer["msg"], answer
        assert expected in device.status()["trust"]["last_refusal"]["message"]
        assert sha256(model) == site.sha("1.0.0")  # nothing touched

    manifest.write_bytes(good_manifest.replace(b'"latest": "1.1.0"', b'"latest": "1.0.0"'))  # one byte
    refused("signature is for other bytes")
    manifest.write_bytes(good_manifest)
    signature.unlink()
    refused("no signature")
    signature.write_bytes(sign_document(good_manifest, MANIFEST, [load_signing_key(keys["evil"][0])]))
    refused("none of which is trusted")
    signature.write_bytes(good_signature)

    site.add("1.2.0")
    site.publish(keys["old"][0])
    assert check(device)["data"]["latest"] == "1.2.0"
    assert device.status()["trust"]["highest_sequence"] == 2 and device.status()["trust"]["last_refusal"] is None
    current_manifest, current_signature = manifest.read_bytes(), signature.read_bytes()

    manifest.write_bytes(good_manifest)  # a validly signed, older manifest replayed by a mirror or attacker
    signature.write_bytes(good_signature)
    refused("sequence 1 is lower than 2")
    forked = json.dumps({**json.loads(current_manifest), "generated_at": "2000-01-01T00:00:00Z"}).encode()
    manifest.write_bytes(forked)
    signature.write_bytes(sign_document(forked, MANIFEST, [load_signing_key(keys["old"][0])]))
    refused("already accepted with different content")
    manifest.write_bytes(current_manifest)
    signature.write_bytes(current_signature)

    status = update(device)
    assert status["last_result"]["ok"], status
    assert sha256(model) == site.sha("1.2.0")
    # the refusals survive a restart: the highest accepted sequence is persisted
    device.stop()
    manifest.write_bytes(good_manifest)
    signature.write_bytes(good_signature)
    restarted = DeviceProcess(
        tmp_path / "d", site.server.url, model, "--trusted-key", str(keys["old"][1]), family=FAMILY
    )
    devices.append(restarted)
    answer = check(restarted)
    assert answer["code"] == 422 and "lower than 2" in answer["msg"]


def test_device_refuses_an_expired_manifest_until_it_is_renewed(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish(keys["old"][0], expires_days=1.5 / 86400)  # expires 1.5 s from now
    site.serve()
    device = start_device(devices, site, tmp_path / "d", "1.0.0", keys["old"][1])
    expires = parse_manifest(site.file(MANIFEST).read_bytes()).expires_at()
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    answer = device.api("POST", "update-latest").json()
    status = device.wait_until_done()
    assert answer["code"] == 200 and not status["last_result"]["ok"]
    assert "expired at" in status["last_result"]["message"] and sha256(device.model) == site.sha("1.0.0")
    site.publish(keys["old"][0])  # the publisher (or its watcher) renews: the device moves on
    status = update(device)
    assert status["last_result"]["ok"] and sha256(device.model) == site.sha("1.1.0")


def test_key_rotation_devices_trusting_old_and_new_keep_updating(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish(keys["old"][0], keys["new"][0])  # step 1: sign with both while devices learn the new key
    site.serve()
    only_old = start_device(devices, site, tmp_path / "a", "1.0.0", keys["old"][1])
    both = start_device(devices, site, tmp_path / "b", "1.0.0", keys["old"][1], keys["new"][1])
    assert check(only_old)["code"] == 200 and check(both)["code"] == 200
    site.add("1.2.0")
    site.publish(keys["new"][0])  # step 2: the old key is retired
    assert update(both)["last_result"]["ok"] and sha256(both.model) == site.sha("1.2.0")
    answer = check(only_old)
    assert answer["code"] == 422 and "none of which is trusted" in answer["msg"]
    assert both.status()["trust"]["accepted_manifest"]["signed_by"] == load_trusted_key(keys["new"][1]).keyid


def test_no_automatic_downgrade_unless_the_signed_manifest_allows_it(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    serve_signed(site, keys, "1.0.0", "1.1.0", "1.2.0")
    device = start_device(devices, site, tmp_path / "d", "1.1.0", keys["old"][1])
    assert update(device)["installed_version"] == "1.2.0"
    site.withdraw("1.2.0")  # the publisher withdraws 1.2.0: latest is 1.1.0 again
    site.publish(keys["old"][0])
    status = update(device)
    assert (
        not status["last_result"]["ok"]
        and "newer than the manifest's latest 1.1.0" in status["last_result"]["message"]
    )
    assert sha256(device.model) == site.sha("1.2.0")
    site.publish(keys["old"][0], allow_downgrade=True)  # a signed publisher decision
    status = update(device)
    assert status["last_result"]["ok"] and sha256(device.model) == site.sha("1.1.0")
    site.publish(keys["old"][0])  # sticky: a later publish without the flag keeps it
    assert parse_manifest(site.file(MANIFEST).read_bytes()).allow_downgrade


def test_tope_update_installs_only_signed_versions_in_signed_mode(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish(keys["old"][0])
    stranger = site.repo / "stranger.tflite"  # served by the same server, but no manifest lists it
    stranger.write_bytes(b"TFL3" + os.urandom(100_000))
    site.serve()
    device = start_device(devices, site, tmp_path / "d", "1.0.0", keys["old"][1])
    listed = parse_manifest(site.file(MANIFEST).read_bytes()).version("1.1.0")
    for version, path, size, md5, ok in (
        ("9.9.9", "stranger.tflite", 100_004, hashlib.md5(stranger.read_bytes()).hexdigest(), False),
        ("1.1.0", listed.blob, listed.size, listed.md5, True),
    ):
        body = {
            "version": version,
            "package_url": site.server.url + path,
            "package_name": f"pkg-{version}",
            "package_size": size,
            "package_md5": md5,
        }
        assert device.api("POST", "download", json=body).json()["code"] == 200
        assert device.wait_until_done()["last_result"]["ok"]
        assert device.api("POST", "update", json={"version": version}).json()["code"] == 200
        result = device.wait_until_done()["last_result"]
        assert result["ok"] is ok, result
        if not ok:
            assert "not a version in the signed manifest" in result["message"]
            assert sha256(device.model) == site.sha("1.0.0")
    assert sha256(device.model) == site.sha("1.1.0")


def test_tope_update_obeys_the_downgrade_rule_unless_the_operator_forces_it(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    serve_signed(site, keys)
    device = start_device(devices, site, tmp_path / "d", "1.1.0", keys["old"][1])
    older = parse_manifest(site.file(MANIFEST).read_bytes()).version("1.0.0")
    for label, force in (("1.0.0", None), ("9.9.9", None), ("1.0.0", True)):  # a lying label is the signed name
        body = {
            "version": label,
            "package_url": site.server.url + older.blob,
            "package_name": "pkg.tflite",
            "package_size": older.size,
            "package_md5": older.md5,
        }
        assert device.api("POST", "download", json=body).json()["code"] == 200
        assert device.wait_until_done()["last_result"]["ok"]
        request = {"version": label} if force is None else {"version": label, "force": force}
        assert device.api("POST", "update", json=request).json()["code"] == 200
        result = device.wait_until_done()["last_result"]
        assert list((device.state_dir / "tmp").iterdir()) == []  # the package goes, installed or refused
        if not force:
            assert (
                not result["ok"]
                and "installed version 1.1.0 is newer than package version 1.0.0" in (result["message"])
            ), result
            assert sha256(device.model) == site.sha("1.1.0")
    assert result["ok"] and sha256(device.model) == site.sha("1.0.0")
    assert device.status()["installed_version"] == "1.0.0"


def test_path_traversal_in_a_manifest_is_refused_even_unsigned(site: Site, tmp_path: Path, devices: list) -> None:
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish()
    site.serve()
    device = start_device(devices, site, tmp_path / "d", "1.0.0")  # harness: --insecure-allow-unsigned
    good = site.file(MANIFEST).read_bytes()
    document = json.loads(good)
    for hostile in ("blobs/../../etc/passwd", "/etc/passwd", "blobs/sha256/%2e%2e/x", "http://evil.example/x"):
        document["versions"][1]["blob"] = hostile + document["versions"][1]["sha256"]
        site.file(MANIFEST).write_bytes(json.dumps(document).encode())
        answer = check(device)
        assert answer["code"] == 422 and "blob" in answer["msg"], (hostile, answer)
    document = json.loads(good)  # oversized declared size: over limits.max_blob_bytes (1 TiB)
    document["versions"][1]["size"] = document["versions"][1]["fingerprint"]["file_size"] = 2 << 40
    site.file(MANIFEST).write_bytes(json.dumps(document).encode())
    answer = check(device)
    assert answer["code"] == 422 and "size: 2199023255552 is outside" in answer["msg"], answer
    site.file(MANIFEST).write_bytes(good)
    assert check(device)["code"] == 200


def test_create_patch_on_a_signed_repository_needs_the_key_and_re_signs(tmp_path: Path, keys) -> None:
    import requests

    site = Site(tmp_path / "s")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        site.add(version)
    site.publish(keys["old"][0], keep=1)  # only 1.1.0→1.2.0 exists
    before = site.file(MANIFEST).read_bytes()
    url = "create-patch?source_version=1.0.0&target_version=1.1.0"
    for extra, status in (
        (("--admin-token", "t0ken"), 500),  # Mallorn's server answers a failed create-patch with 500 too
        (("--admin-token", "t0ken", "--sign-key", str(keys["old"][0])), 200),
    ):
        server = start_server(site.repo, *extra)
        try:
            answer = requests.post(server.url + url, headers={"Authorization": "Bearer t0ken"}, timeout=60)
        finally:
            server.process.terminate()
            server.process.wait(10)
        assert answer.status_code == status, answer.text
        if status == 500:
            assert "repository is signed" in answer.json()["detail"]
            assert site.file(MANIFEST).read_bytes() == before
    raw = site.file(MANIFEST).read_bytes()
    assert parse_manifest(raw).patch("1.0.0", "1.1.0") is not None
    verify_document(raw, MANIFEST, site.file(MANIFEST + ".sig").read_bytes(), [load_trusted_key(keys["old"][1])])


def test_min_sequence_lifts_a_rebuilt_repository_above_what_devices_accepted(tmp_path: Path, keys) -> None:
    from lorien.repo.errors import BadInputError

    site = Site(tmp_path / "s")
    site.add("1.0.0")
    write_family(site.models / "orphan", ["1"], layer_sizes=SMALL_LAYERS, seed=2)
    site.publish(keys["old"][0])
    shutil.rmtree(site.models / "orphan")  # its manifest stays, no model directory any more
    assert parse_manifest(site.file(MANIFEST).read_bytes()).sequence == 1
    site.publish(keys["old"][0], min_sequence=500)  # unchanged content, but below the floor: rewritten
    for document in (MANIFEST, "orphan/manifest.json"):
        assert parse_manifest(site.file(document).read_bytes()).sequence == 500, document
    site.publish(keys["old"][0], min_sequence=500)
    assert parse_manifest(site.file(MANIFEST).read_bytes()).sequence == 500
    with pytest.raises(BadInputError, match="--min-sequence must be from 0 to"):
        site.publish(keys["old"][0], min_sequence=1 << 62)


def test_a_rewritten_signature_is_reported_as_a_change_and_a_deleted_one_is_refused(tmp_path: Path, keys) -> None:
    site = Site(tmp_path / "s")
    site.add("1.0.0")
    site.publish(keys["old"][0])
    both = (load_signing_key(keys["old"][0]), load_signing_key(keys["new"][0]))
    report = publish(site.models, site.repo, options=PublishOptions(sign_keys=both))  # rotation step: same bytes
    assert report.families[0].manifest_written  # the new .sig is a change: watch's --after-publish copies it
    signature = site.file(MANIFEST + ".sig")
    signature.unlink()  # deleted by someone else (lorien's own interrupted writes leave a marker)
    report = publish(site.models, site.repo, options=PublishOptions(sign_keys=both))
    assert "it has no signature" in " ".join(report.all_problems()) and not signature.exists()


def test_a_device_can_tighten_the_patch_container_limits(tmp_path: Path) -> None:
    from lorien.repo.engine import apply_patch, create_patch
    from lorien.repo.errors import PatchError

    site = Site(tmp_path / "s")
    old, new, patch = site.all / "1.0.0.tflite", site.all / "1.1.0.tflite", tmp_path / "p.patch"
    create_patch(old, new, patch)
    apply_patch(old, patch, tmp_path / "ok.tflite", limits=Limits())
    with pytest.raises(PatchError):
        apply_patch(old, patch, tmp_path / "out.tflite", limits=Limits(max_payload=64, max_segment=64))
    assert not (tmp_path / "out.tflite").exists()


def test_a_manual_rollback_records_its_version_so_later_checks_never_downgrade(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    serve_signed(site, keys)
    device = start_device(devices, site, tmp_path / "d", "1.0.0", keys["old"][1])
    assert update(device)["installed_version"] == "1.1.0"
    site.add("1.2.0")
    site.publish(keys["old"][0])
    assert update(device)["installed_version"] == "1.2.0"  # two backups, possibly made in the same second
    assert device.api("POST", "rollback").json()["code"] == 200
    status = device.wait_until_done()
    assert status["installed_version"] == "1.1.0" and sha256(device.model) == site.sha("1.1.0"), status
    site.withdraw("1.1.0")
    site.withdraw("1.2.0")
    site.publish(keys["old"][0])  # latest is 1.0.0 now, and 1.1.0 is no longer in the manifest
    status = update(device)
    assert (
        not status["last_result"]["ok"] and "installed version 1.1.0 is newer" in status["last_result"]["message"]
    )
    assert sha256(device.model) == site.sha("1.1.0")


def test_a_sequence_pinned_while_insecure_does_not_block_the_signed_repository(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish()
    site.serve()
    device = start_device(devices, site, tmp_path / "d", "1.0.0")  # insecure (harness default)
    genuine = site.file(MANIFEST).read_bytes()
    document = json.loads(genuine)
    document["sequence"] = 1 << 62  # an on-path attacker pins the record while the device trusts no key
    site.file(MANIFEST).write_bytes(json.dumps(document).encode())
    assert check(device)["code"] == 200
    device.stop()
    site.file(MANIFEST).write_bytes(genuine)
    site.publish(keys["old"][0])  # the repository gets signed, the device gets the key
    signed = DeviceProcess(
        tmp_path / "d", site.server.url, device.model, "--trusted-key", str(keys["old"][1]), family=FAMILY
    )
    devices.append(signed)
    answer = check(signed)
    assert answer["code"] == 200, answer
    assert signed.status()["trust"]["accepted_manifest"]["signed_by"] == load_trusted_key(keys["old"][1]).keyid
