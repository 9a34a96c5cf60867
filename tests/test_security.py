"""Signed (TUF) metadata, freshness and downgrade rules, end to end: real `lorien serve`, real `lorien device`.

Attacks played against a device that trusts the repository's initial TUF root: a manifest with one byte changed,
targets metadata signed by a key the root does not name, expired metadata (freeze), replayed older metadata
(rollback), a withdrawn-version downgrade, an unsigned TOPE package, and a path-traversal blob path. Plus key
rotation followed by running devices, `inspect --root`, keygen, watch renewing the timestamp, and the old detached
``.sig`` scheme that `lorien trust init --from-key` migrates from. (In-process TUF attacks: tests/test_tuf.py.)
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
from lorien.publisher.tuf_writer import Expiry
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

    def installed_root(self, home: Path) -> Path:
        """The repository's metadata/1.root.json, copied as a device's installation would."""
        home.mkdir(parents=True, exist_ok=True)
        root = home / "root.json"
        if not root.exists():
            shutil.copy(self.file("metadata/1.root.json"), root)
        return root

    def signed_copy(self, relative: str) -> Path:
        """The hash-prefixed file a TUF client reads for ``relative`` now (per the current targets metadata)."""
        targets = _current_targets(self.repo)
        sha = targets["signed"]["targets"][relative]["hashes"]["sha256"]
        directory, _, name = relative.rpartition("/")
        return self.repo / directory / f"{sha}.{name}"

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
    devices: list, site: Site, home: Path, version: str, *, signed: bool = True, extra: tuple[str, ...] = ()
) -> DeviceProcess:
    """A device on ``version``; ``signed``: it trusts the repository's first root (installed with the device)."""
    model = home / "app" / "model.tflite"
    model.parent.mkdir(parents=True)
    shutil.copy(site.all / f"{version}.tflite", model)
    flags = ["--trusted-root", str(site.installed_root(home))] if signed else []
    device = DeviceProcess(home, site.server.url, model, *flags, *extra, family=FAMILY)
    devices.append(device)
    return device


def _current_targets(repo: Path) -> dict:
    timestamp = json.loads((repo / "metadata" / "timestamp.json").read_bytes())
    snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = json.loads((repo / "metadata" / f"{snapshot_version}.snapshot.json").read_bytes())
    targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
    return json.loads((repo / "metadata" / f"{targets_version}.targets.json").read_bytes())


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
        assert not site.file(document + ".sig").exists()  # the old scheme is gone: TUF signs
        assert site.signed_copy(document).is_file()
    for role in ("1.root.json", "root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"):
        assert site.file(f"metadata/{role}").is_file(), role
    first = parse_manifest(site.file(MANIFEST).read_bytes())
    site.publish(keys["old"][0])  # nothing changed, expiry still 7 days away: nothing rewritten
    assert parse_manifest(site.file(MANIFEST).read_bytes()) == first
    assert not site.file("metadata/2.targets.json").exists()
    site.publish(keys["old"][0], expires_days=1)  # a shorter validity than what is published: renewed now
    renewed = parse_manifest(site.file(MANIFEST).read_bytes())
    assert renewed.sequence == first.sequence + 1 and renewed.expires < first.expires
    assert renewed.same_content(first) and site.file("metadata/2.targets.json").exists()

    root = site.file("metadata/1.root.json")
    ok = run_lorien("inspect", site.repo, "--verify", "--root", root)
    assert ok.returncode == 0 and "TUF metadata ok: root v1, targets v2" in ok.stdout, ok.stdout + ok.stderr
    assert "signed target: tuf targets v2" in ok.stdout and "timestamp" in ok.stdout
    foreign = Site(tmp_path / "f")
    foreign.add("1.0.0")
    foreign.publish(keys["evil"][0])
    wrong = run_lorien("inspect", site.repo, "--root", foreign.file("metadata/1.root.json"))
    assert wrong.returncode == 1 and "not signed by enough of the keys" in wrong.stdout, wrong.stdout
    copy = site.signed_copy(MANIFEST)
    raw = copy.read_bytes()
    copy.write_bytes(raw.replace(b'"latest": "1.1.0"', b'"latest": "1.0.0"'))
    tampered = run_lorien("inspect", site.repo, "--root", root)
    assert tampered.returncode == 1 and "does not match what the signed metadata says" in tampered.stdout
    copy.write_bytes(raw)

    unsigned = run_lorien("publish", "--models", site.models, "--repo", site.repo)
    assert unsigned.returncode == 2 and "repository is signed" in unsigned.stderr
    assert site.file(MANIFEST).read_bytes() == raw  # nothing written

    # someone with write access to the served directory edits a manifest: the publisher must not bless it
    edited = json.loads(raw)
    edited["allow_downgrade"] = True
    site.file(MANIFEST).write_bytes(json.dumps(edited).encode())
    blessed = run_lorien("publish", "--models", site.models, "--repo", site.repo, "--sign-key", keys["old"][0])
    assert blessed.returncode == 2 and "not what the publisher signed" in blessed.stderr, blessed.stderr
    site.file(MANIFEST).write_bytes(raw)
    other_key = run_lorien("publish", "--models", site.models, "--repo", site.repo, "--sign-key", keys["new"][0])
    assert (
        other_key.returncode == 1
        and "none of the --sign-key keys is one the repository's root names" in other_key.stderr
    ), other_key.stderr
    again = run_lorien("publish", "--models", site.models, "--repo", site.repo, "--sign-key", keys["old"][0])
    assert again.returncode == 0, again.stderr


def test_watch_renews_the_timestamp_and_manifests_before_they_expire(tmp_path: Path, keys) -> None:
    site = Site(tmp_path / "s")
    site.add("1.0.0")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "lorien.cli", "watch", "--models", str(site.models), "--repo", str(site.repo),
            "--sign-key", str(keys["old"][0]), "--expires-days", "0.0001",  # 8.6 s: renewed after ~4.3 s
            "--expiry", "timestamp=0.0001",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        seen = set()
        while time.monotonic() < deadline and len(seen) < 2:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith(f"renewed family={FAMILY}"):
                seen.add("manifest")
            if line.startswith("renewed TUF metadata") and "timestamp" in line:
                seen.add("timestamp")
        assert seen == {"manifest", "timestamp"}, "watch did not renew:\n" + "".join(lines)
        manifest = parse_manifest(site.file(MANIFEST).read_bytes())
        assert manifest.sequence >= 2 and manifest.expires_at() > datetime.now(UTC)
        timestamp = json.loads(site.file("metadata/timestamp.json").read_bytes())["signed"]
        assert timestamp["version"] >= 2 and timestamp["expires"] > f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
        verified = run_lorien("inspect", site.repo, "--root", site.file("metadata/1.root.json"))
        assert verified.returncode == 0, verified.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


# --------------------------------------------------------------------------- device side, real processes


def test_device_refuses_tampered_foreign_and_replayed_metadata(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    serve_signed(site, keys)
    device = start_device(devices, site, tmp_path / "d", "1.0.0")
    model = device.model
    answer = check(device)
    assert answer["code"] == 200 and answer["data"]["latest"] == "1.1.0", answer
    trust = device.status()["trust"]
    assert trust["accepted_manifest"]["sequence"] == 1
    assert trust["accepted_manifest"]["signed_by"] == "tuf targets v1 (root v1)"
    assert trust["tuf"]["root_version"] == 1 and trust["tuf"]["roles"][0]["role"] == "root"

    def refused(expected: str) -> None:
        answer = check(device)
        assert answer["code"] == 422 and expected in answer["msg"], answer
        assert expected in device.status()["trust"]["last_refusal"]["message"]
        assert sha256(model) == site.sha("1.0.0")  # nothing touched

    copy = site.signed_copy(MANIFEST)
    good_manifest = copy.read_bytes()
    copy.write_bytes(good_manifest.replace(b'"latest": "1.1.0"', b'"latest": "1.0.0"'))  # one byte
    refused("does not match what the signed metadata says")
    copy.write_bytes(good_manifest)

    # targets metadata re-signed by a key the root does not name (a stolen server, not a stolen key)
    metadata = site.repo / "metadata"
    saved = {path.name: path.read_bytes() for path in metadata.iterdir()}
    evil = Site(tmp_path / "evil")
    evil.repo = tmp_path / "evil-repo"
    shutil.copytree(site.repo, evil.repo, ignore=shutil.ignore_patterns("metadata", ".*"))
    evil.add("1.0.0")
    evil.publish(keys["evil"][0])
    for path in metadata.iterdir():
        path.unlink()
    for path in (evil.repo / "metadata").iterdir():
        if path.name != "1.root.json" and path.name != "root.json":
            (metadata / path.name).write_bytes(path.read_bytes())
    (metadata / "1.root.json").write_bytes(saved["1.root.json"])
    refused("not signed by enough of the keys the trusted root names")
    for path in metadata.iterdir():
        path.unlink()
    for name, data in saved.items():
        (metadata / name).write_bytes(data)

    site.add("1.2.0")
    site.publish(keys["old"][0])
    assert check(device)["data"]["latest"] == "1.2.0"
    assert device.status()["trust"]["highest_sequence"] == 2 and device.status()["trust"]["last_refusal"] is None
    current_timestamp = (metadata / "timestamp.json").read_bytes()

    (metadata / "timestamp.json").write_bytes(saved["timestamp.json"])  # a validly signed, older state replayed
    refused("older metadata than this device already trusts")
    (metadata / "timestamp.json").write_bytes(current_timestamp)

    status = update(device)
    assert status["last_result"]["ok"], status
    assert sha256(model) == site.sha("1.2.0")
    # the refusals survive a restart: the trusted metadata is persisted in the state directory
    device.stop()
    (metadata / "timestamp.json").write_bytes(saved["timestamp.json"])
    restarted = DeviceProcess(
        tmp_path / "d", site.server.url, model, "--trusted-root", str(site.installed_root(tmp_path / "d")),
        family=FAMILY,
    )  # fmt: skip
    devices.append(restarted)
    answer = check(restarted)
    assert answer["code"] == 422 and "older metadata" in answer["msg"]


def test_device_refuses_expired_metadata_until_it_is_renewed(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish(keys["old"][0], expiry=Expiry.parse(["timestamp=" + str(2 / 86400)]))  # expires 2 s from now
    site.serve()
    device = start_device(devices, site, tmp_path / "d", "1.0.0")
    expires = json.loads(site.file("metadata/timestamp.json").read_bytes())["signed"]["expires"]
    expires_at = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 1.2)
    answer = device.api("POST", "update-latest").json()
    status = device.wait_until_done()
    assert answer["code"] == 200 and not status["last_result"]["ok"]
    assert "expired" in status["last_result"]["message"] and sha256(device.model) == site.sha("1.0.0")
    site.publish(keys["old"][0])  # the publisher (or its watcher) renews: the device moves on
    status = update(device)
    assert status["last_result"]["ok"] and sha256(device.model) == site.sha("1.1.0")


def test_running_devices_follow_timestamp_and_root_key_rotation_without_a_config_change(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    old, new = keys["old"], keys["new"]
    site.add("1.0.0")
    site.add("1.1.0")
    site.publish(old[0])
    site.serve()
    device = start_device(devices, site, tmp_path / "d", "1.0.0")
    assert check(device)["code"] == 200
    keyid = json.loads(site.file("metadata/1.root.json").read_bytes())["signed"]["roles"]["timestamp"]["keyids"][0]

    # 1. the timestamp key is rotated (old root key signs root v2); publish signs with the new timestamp key
    rotated = run_lorien(
        "trust", "rotate", "--repo", site.repo, "timestamp", "--old", keyid[:12], "--new", new[1],
        "--sign-key", old[0], "--sign-key", new[0],
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    site.add("1.2.0")
    site.publish(old[0], new[0])
    assert update(device)["installed_version"] == "1.2.0"
    assert device.status()["trust"]["tuf"]["root_version"] == 2

    # 2. metadata signed only by the removed timestamp key is refused
    stale_bytes = site.file("metadata/timestamp.json").read_bytes()
    from lorien.publisher.tuf_writer import serialize
    from lorien.repo.tufmeta import parse_metadata, signer

    forged = parse_metadata(stale_bytes, "timestamp")
    forged.signed.version += 1
    forged.signatures.clear()
    forged.sign(signer(load_signing_key(old[0])))
    site.file("metadata/timestamp.json").write_bytes(serialize(forged))
    answer = check(device)
    assert answer["code"] == 422 and "not signed by enough" in answer["msg"], answer
    site.file("metadata/timestamp.json").write_bytes(stale_bytes)
    site.publish(old[0], new[0])  # the genuine publisher moves on past the forged version
    assert check(device)["code"] == 200

    # 3. the root key itself moves to the new key, signed offline by both (stage, sign, commit)
    staged = run_lorien(
        "trust", "rotate", "--repo", site.repo, "root", "--old", keyid[:12], "--new", new[1], "--sign-key", old[0]
    )
    assert staged.returncode == 1 and "staged at" in staged.stdout, staged.stdout + staged.stderr
    staged_file = site.repo / ".trust" / "3.root.json"
    assert run_lorien("trust", "sign", staged_file, "--sign-key", new[0]).returncode == 0
    committed = run_lorien(
        "trust", "commit", "--repo", site.repo, staged_file, "--sign-key", old[0], "--sign-key", new[0]
    )
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert check(device)["code"] == 200
    assert device.status()["trust"]["tuf"]["root_version"] == 3
    assert json.loads(site.file("metadata/root.json").read_bytes())["signed"]["roles"]["root"]["keyids"] != [keyid]


def test_no_automatic_downgrade_unless_the_signed_manifest_allows_it(
    site: Site, keys, tmp_path: Path, devices: list
) -> None:
    serve_signed(site, keys, "1.0.0", "1.1.0", "1.2.0")
    device = start_device(devices, site, tmp_path / "d", "1.1.0")
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
    device = start_device(devices, site, tmp_path / "d", "1.0.0")
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
    device = start_device(devices, site, tmp_path / "d", "1.1.0")
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
    device = start_device(devices, site, tmp_path / "d", "1.0.0", signed=False)  # --insecure-allow-unsigned
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
    assert site.signed_copy(MANIFEST).read_bytes() == raw  # a signed target
    verified = run_lorien("inspect", site.repo, "--verify", "--root", site.file("metadata/1.root.json"))
    assert verified.returncode == 0, verified.stdout


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


def test_a_signed_target_deleted_or_changed_on_the_server_is_refused_by_the_next_publish(
    tmp_path: Path, keys
) -> None:
    site = Site(tmp_path / "s")
    site.add("1.0.0")
    site.publish(keys["old"][0])
    signing = (load_signing_key(keys["old"][0]),)
    manifest = site.file(MANIFEST)
    genuine = manifest.read_bytes()
    manifest.write_bytes(json.dumps({**json.loads(genuine), "allow_downgrade": True}).encode())
    report = publish(site.models, site.repo, options=PublishOptions(sign_keys=signing))
    assert "not what the publisher signed" in " ".join(report.all_problems())
    manifest.write_bytes(genuine)
    report = publish(site.models, site.repo, options=PublishOptions(sign_keys=signing))
    assert report.ok, report.all_problems()


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
    device = start_device(devices, site, tmp_path / "d", "1.0.0")
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
    device = start_device(devices, site, tmp_path / "d", "1.0.0", signed=False)  # insecure (harness default)
    genuine = site.file(MANIFEST).read_bytes()
    document = json.loads(genuine)
    document["sequence"] = 1 << 62  # an on-path attacker pins the record while the device trusts no key
    site.file(MANIFEST).write_bytes(json.dumps(document).encode())
    assert check(device)["code"] == 200
    device.stop()
    site.file(MANIFEST).write_bytes(genuine)
    site.publish(keys["old"][0])  # the repository gets signed, the device gets its root
    signed = DeviceProcess(
        tmp_path / "d", site.server.url, device.model, "--trusted-root", str(site.installed_root(tmp_path / "d")),
        family=FAMILY,
    )  # fmt: skip
    devices.append(signed)
    answer = check(signed)
    assert answer["code"] == 200, answer
    assert signed.status()["trust"]["accepted_manifest"]["signed_by"].startswith("tuf targets")
