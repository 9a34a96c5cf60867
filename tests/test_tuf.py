"""TUF trust in-process: the publisher's metadata (python-tuf ``tuf.api.metadata``) read by the device's
``TufClient`` (``tuf.ngclient``) over the in-memory repository, and TUF's attack list played against the real
``Updater``: arbitrary installation, endless data, extraneous dependencies (blobs), fast-forward / rollback,
indefinite freeze, mix-and-match, a mirror serving a foreign repository, key compromise of an online role,
plus the offline-targets workflow and the migration from the old ``.sig`` scheme. Real processes and nginx:
tests/test_security.py and tests/test_nginx.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lorien.device.updater import Updater
from lorien.modelgen import write_family
from lorien.publisher.options import PublishOptions
from lorien.publisher.publish import publish
from lorien.publisher.trust_admin import RootChange, TrustAdmin, sign_file
from lorien.publisher.tuf_writer import Expiry, TufWriter
from lorien.repo.errors import BadInputError, FreshnessError, ManifestError, NetworkError, SignatureError
from lorien.repo.fetch import HttpFetcher
from lorien.repo.limits import DEFAULT_LIMITS
from lorien.repo.signing import SigningKey, generate_keypair, load_signing_key, load_trusted_key, sign_document
from lorien.repo.tufclient import TufClient
from lorien.repo.tufmeta import hash_prefixed
from tests.support.inprocess import inprocess_updater
from tests.support.processes import SMALL_LAYERS
from tests.support.simulator import Fault, RepositorySimulator

FAMILY = "cls"
MANIFEST = f"{FAMILY}/manifest.json"


def _key(tmp_path: Path, name: str) -> SigningKey:
    return load_signing_key(generate_keypair(tmp_path / "keys", name)[0])


class Publisher:
    """A models dir with versions on the side, a signed repository, and the in-memory server of it."""

    def __init__(self, root: Path, *keys: SigningKey) -> None:
        self.root = root
        self.keys = keys
        self.all = root / "all" / FAMILY
        self.models = root / "models"
        self.repo = root / "repo"
        write_family(self.all, ["1.0.0", "1.1.0", "1.2.0"], layer_sizes=SMALL_LAYERS, seed=5)
        (self.models / FAMILY).mkdir(parents=True)

    def publish(self, *versions: str, **options) -> None:
        for version in versions:
            shutil.copy(self.all / f"{version}.tflite", self.models / FAMILY)
        report = publish(self.models, self.repo, options=PublishOptions(sign_keys=self.keys, **options))
        assert report.ok, report.all_problems()

    def simulator(self) -> RepositorySimulator:
        return RepositorySimulator.from_directory(self.repo)

    def root_json(self) -> bytes:
        return (self.repo / "metadata" / "1.root.json").read_bytes()

    def sha(self, version: str) -> str:
        return hashlib.sha256((self.all / f"{version}.tflite").read_bytes()).hexdigest()


@pytest.fixture
def site(tmp_path: Path) -> Publisher:
    made = Publisher(tmp_path / "site", _key(tmp_path, "online"))
    made.publish("1.0.0", "1.1.0")
    return made


def _device(site: Publisher, tmp_path: Path, sim: RepositorySimulator, root: bytes | None = None) -> Updater:
    home = tmp_path / "device"
    model = home / "app" / "model.tflite"
    if not model.exists():
        model.parent.mkdir(parents=True)
        shutil.copy(site.all / "1.0.0.tflite", model)
    trusted = home / "root.json"
    if root is not None or not trusted.exists():
        trusted.write_bytes(root or site.root_json())
    return inprocess_updater(sim, FAMILY, model, home / "state", trusted_root=str(trusted))


def _client(site: Publisher, sim: RepositorySimulator, tmp_path: Path) -> TufClient:
    return TufClient(HttpFetcher(sim.BASE, transport=sim), site.root_json(), tmp_path / "tuf", DEFAULT_LIMITS)


def test_every_file_a_device_fetches_is_a_signed_target_under_its_hash_prefixed_name(
    site: Publisher, tmp_path
) -> None:
    sim = site.simulator()
    client = _client(site, sim, tmp_path)
    state = client.refresh()
    assert (state.root_version, state.targets_version) == (1, 1)
    manifest = json.loads(client.read_target(MANIFEST))
    assert manifest["latest"] == "1.1.0"
    for path in (
        ["index.json", MANIFEST]
        + [v["blob"] for v in manifest["versions"]]
        + [p["blob"] for p in manifest["patches"]]
    ):
        info = client.target(path)
        data = (site.repo / hash_prefixed(path, info.hashes["sha256"])).read_bytes()
        assert len(data) == info.length and hashlib.sha256(data).hexdigest() == info.hashes["sha256"]
    assert [r.role for r in state.roles] == ["root", "targets", "snapshot", "timestamp"]
    with pytest.raises(ManifestError, match="not a signed target"):
        client.target("other/manifest.json")


def test_a_device_updates_from_a_tuf_repository_and_records_what_vouched(site: Publisher, tmp_path) -> None:
    updater = _device(site, tmp_path, site.simulator())
    updater.update_latest()
    updater.wait(60)
    status = updater.status()
    assert status["last_result"]["ok"], status["last_result"]
    assert status["installed_sha256"] == site.sha("1.1.0")
    assert status["trust"]["accepted_manifest"]["signed_by"] == "tuf targets v1 (root v1)"
    assert status["trust"]["tuf"]["targets_version"] == 1


def test_arbitrary_installation_a_changed_manifest_or_blob_is_refused(site: Publisher, tmp_path) -> None:
    sim = site.simulator()
    updater = _device(site, tmp_path, sim)
    client = _client(site, sim, tmp_path)
    manifest_info = client.target(MANIFEST)
    copy = hash_prefixed(MANIFEST, manifest_info.hashes["sha256"])
    genuine = sim.files[copy]
    sim.add(copy, genuine.replace(b'"latest": "1.1.0"', b'"latest": "1.0.0"'))
    with pytest.raises(SignatureError, match="does not match what the signed metadata says"):
        updater.check()
    sim.add(copy, genuine)
    # a manifest that names a blob the signed targets do not vouch for (a server edit of the plain manifest is
    # never read: the device reads the hash-prefixed copy, so only a forged targets file could do this)
    plan = updater.check()
    assert plan.latest == "1.1.0" and plan.steps


def test_endless_data_metadata_larger_than_the_limits_is_cut_off(site: Publisher, tmp_path) -> None:
    sim = site.simulator()
    sim.inject("metadata/timestamp.json", Fault(extra=b" " * 100_000), forever=True)
    updater = _device(site, tmp_path, sim)
    with pytest.raises(NetworkError):
        updater.check()
    assert not any(seen.path.startswith("cls/") for seen in sim.requests)  # nothing past the timestamp


def test_a_foreign_repository_on_the_mirror_is_refused(site: Publisher, tmp_path: Path) -> None:
    other = Publisher(tmp_path / "other", _key(tmp_path, "foreign"))
    other.publish("1.0.0", "1.1.0", "1.2.0")
    updater = _device(site, tmp_path, other.simulator())  # trusts site's root, talks to other's server
    with pytest.raises(SignatureError, match="not signed by enough of the keys"):
        updater.check()


def test_rollback_and_freeze_older_or_expired_metadata_is_refused(site: Publisher, tmp_path: Path) -> None:
    old = site.simulator()
    site.publish("1.2.0")
    new = site.simulator()
    updater = _device(site, tmp_path, new)
    assert updater.check().latest == "1.2.0"
    replay = _device(site, tmp_path, old)  # same state directory: it remembers what it trusted
    with pytest.raises(FreshnessError, match="older metadata than this device already trusts"):
        replay.check()
    # freeze: the metadata the device trusts expires and nobody renews it
    frozen = Publisher(tmp_path / "frozen", _key(tmp_path, "frozen"))
    frozen.publish("1.0.0", "1.1.0", expiry=Expiry.parse(["timestamp=0.00002"]))  # 1.7 s
    sim = frozen.simulator()
    time.sleep(2.5)  # (python-tuf takes "now" when a client is made: one client per check)
    client = TufClient(
        HttpFetcher(sim.BASE, transport=sim), frozen.root_json(), tmp_path / "tuf-frozen", DEFAULT_LIMITS
    )
    with pytest.raises(FreshnessError, match="expired"):
        client.refresh()


def test_mix_and_match_a_snapshot_from_another_state_is_refused(site: Publisher, tmp_path: Path) -> None:
    first = site.simulator()
    site.publish("1.2.0")
    mixed = site.simulator()
    mixed.add("metadata/2.snapshot.json", first.files["metadata/1.snapshot.json"])  # old snapshot, new name
    updater = _device(site, tmp_path, mixed)
    with pytest.raises(SignatureError):
        updater.check()


def test_a_compromised_online_key_is_revoked_by_a_root_rotation(tmp_path: Path) -> None:
    root_key, online, stolen = _key(tmp_path, "root"), _key(tmp_path, "online"), _key(tmp_path, "stolen")
    site = Publisher(tmp_path / "site", root_key, online)
    site.publish("1.0.0")
    admin = TrustAdmin(site.repo, (root_key, online))
    # the root key keeps root only; the online key signs the rest (threshold 1 each)
    for role in ("targets", "snapshot", "timestamp"):
        admin.change(RootChange(remove=[(role, _tuf_id(root_key))]))
    admin = TrustAdmin(site.repo, (root_key, stolen))
    result = admin.change(RootChange(add=[("timestamp", stolen)], remove=[("timestamp", _tuf_id(online))]))
    assert result.installed and "needs 1 of the keys" in " ".join(result.warnings)  # targets/snapshot not here
    site.keys = (online, stolen)
    site.publish("1.1.0")
    updater = _device(site, tmp_path, site.simulator())
    plan = updater.check()
    assert plan.latest == "1.1.0" and updater.status()["trust"]["tuf"]["root_version"] == 5
    # timestamp signed by the revoked online key only: refused
    forged = TufWriter(site.repo, (online,))
    with pytest.raises(SignatureError, match="timestamp"):
        forged.publish([], force=True)


def _tuf_id(key: SigningKey) -> str:
    from lorien.repo.tufmeta import tuf_key

    return tuf_key(key).keyid


def test_targets_key_offline_publish_stages_and_commit_installs(tmp_path: Path) -> None:
    targets_key, online = _key(tmp_path, "targets"), _key(tmp_path, "online")
    site = Publisher(tmp_path / "site", targets_key, online)
    site.publish("1.0.0")
    admin = TrustAdmin(site.repo, (targets_key, online))
    for role in ("snapshot", "timestamp"):
        admin.change(RootChange(remove=[(role, _tuf_id(targets_key))]))
    admin.change(RootChange(remove=[("targets", _tuf_id(online))]))
    site.keys = (online,)  # the targets key goes offline
    with pytest.raises(SignatureError, match="staged unsigned"):
        site.publish("1.1.0")
    (staged,) = (site.repo / ".trust").glob("*.targets.json")
    device = _device(site, tmp_path, site.simulator())
    assert device.check().latest == "1.0.0"  # devices keep the previous signed state
    with pytest.raises(SignatureError, match="sign it with the targets key"):
        TrustAdmin(site.repo, (online,)).commit(staged)
    sign_file(staged, [targets_key])  # on the offline machine
    result = TrustAdmin(site.repo, (online,)).commit(staged)
    assert result.installed and result.online_roles_written == ["targets", "snapshot", "timestamp"]
    assert _device(site, tmp_path, site.simulator()).check().latest == "1.1.0"


def test_migration_from_the_old_sig_scheme_keeps_the_devices_sequence_floor(tmp_path: Path) -> None:
    key_path, public_path, _ = generate_keypair(tmp_path / "keys", "publisher")
    key = load_signing_key(key_path)
    site = Publisher(tmp_path / "site", key)
    for version in ("1.0.0", "1.1.0"):
        shutil.copy(site.all / f"{version}.tflite", site.models / FAMILY)
    # an old-scheme repository: unsigned publish, then the detached .sig files the old publisher wrote
    assert publish(site.models, site.repo, options=PublishOptions(min_sequence=7)).ok
    for document in ("index.json", MANIFEST):
        data = (site.repo / document).read_bytes()
        (site.repo / f"{document}.sig").write_bytes(sign_document(data, document, [key]))
    with pytest.raises(BadInputError, match="convert it to TUF once"):
        publish(site.models, site.repo, options=PublishOptions(sign_keys=(key,)))
    tampered = site.repo / MANIFEST
    genuine = tampered.read_bytes()
    tampered.write_bytes(genuine.replace(b'"sequence": 7', b'"sequence": 8'))
    with pytest.raises(SignatureError):
        TrustAdmin(site.repo, (key,)).init({}, {}, from_key=True)
    tampered.write_bytes(genuine)
    roles = {role: [key] for role in ("root", "targets", "snapshot", "timestamp")}
    result = TrustAdmin(site.repo, (key,)).init(roles, {}, from_key=True)
    assert result.installed and result.online_roles_written == ["targets", "snapshot", "timestamp"]
    # the device had accepted sequence 7 under the old scheme (state.json); it now gets root.json and switches
    sim = site.simulator()
    updater = _device(site, tmp_path, sim)
    record = {
        "repo_url": sim.BASE, "family": FAMILY, "sequence": 9, "sha256": "0" * 64, "expires": None,
        "signed_by": load_trusted_key(public_path).keyid, "at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    updater._state.update(accepted_manifests={f"{sim.BASE}#{FAMILY}": record}, highest_sequence=9)
    with pytest.raises(FreshnessError, match="lower than 9"):
        updater.check()  # the old scheme's floor still holds after the switch
    site.publish(
        "1.2.0"
    )  # a TUF publish moves on (sequence 8 < 9 still), so lift it as a rebuilt repository would
    site.publish(min_sequence=10)
    assert _device(site, tmp_path, site.simulator()).check().latest == "1.2.0"


def test_expiry_is_renewed_only_when_half_is_gone(site: Publisher) -> None:
    writer = TufWriter(site.repo, site.keys)
    assert writer.publish(_targets_now(writer)) == []  # nothing changed, nothing half expired
    later = datetime.now(UTC) + timedelta(hours=13)  # timestamp (1 day) is more than half gone
    assert writer.publish(_targets_now(writer), now=later) == ["timestamp"]
    much_later = datetime.now(UTC) + timedelta(days=4)
    assert writer.publish(_targets_now(writer), now=much_later) == ["snapshot", "timestamp"]


def _targets_now(writer: TufWriter):
    from lorien.publisher.tuf_writer import Target

    current = writer.read_current()
    assert current is not None
    return [
        Target(path, info.length, info.hashes["sha256"], source=writer.root / path)
        for path, info in current[2].signed.targets.items()
    ]


def test_legacy_signatures_keep_old_devices_verifying_during_the_migration(tmp_path: Path) -> None:
    from lorien.repo.signing import TrustedKey, verify_document

    key = _key(tmp_path, "publisher")
    site = Publisher(tmp_path / "site", key)
    site.publish("1.0.0", legacy_signatures=True)
    old_device_keys = (TrustedKey(key.private.public_key(), key.keyid, "test"),)
    for document in ("index.json", MANIFEST):
        data = (site.repo / document).read_bytes()
        signature = (site.repo / f"{document}.sig").read_bytes()
        assert verify_document(data, document, signature, old_device_keys) == key.keyid  # the old scheme verifies
    site.publish("1.1.0")  # the migration is over: the .sig files go (they would no longer match)
    assert not list(site.repo.rglob("*.sig"))
    assert _device(site, tmp_path, site.simulator()).check().latest == "1.1.0"


def test_gc_removes_superseded_metadata_and_copies_but_never_what_the_current_state_names(
    site: Publisher, tmp_path: Path
) -> None:
    from lorien.publisher.gc import collect_garbage

    site.publish("1.2.0")
    site.publish(expires_days=1)  # renewed manifest: a third targets version
    metadata = site.repo / "metadata"
    assert (metadata / "1.targets.json").exists() and (metadata / "3.targets.json").exists()
    waiting = collect_garbage(site.repo, grace=60)  # first sighting starts the clock
    assert "metadata/1.targets.json" in waiting.waiting and not waiting.removed
    report = collect_garbage(site.repo, grace=0)
    assert "metadata/1.targets.json" in report.removed and "metadata/1.snapshot.json" in report.removed
    assert not (metadata / "1.targets.json").exists() and (metadata / "3.targets.json").exists()
    assert (metadata / "1.root.json").exists()  # root versions stay for ever
    assert any(path.endswith(".manifest.json") for path in report.removed)  # superseded manifest copies
    assert not any(path.startswith("blobs/") for path in report.removed)  # every blob is still referenced
    client = _client(site, site.simulator(), tmp_path)
    manifest = json.loads(client.read_target(MANIFEST))
    for entry in manifest["versions"] + manifest["patches"]:
        info = client.target(entry["blob"])
        assert (site.repo / hash_prefixed(entry["blob"], info.hashes["sha256"])).exists()


@pytest.mark.slow
def test_trust_commands_set_up_roles_and_refuse_bad_input_with_one_line(tmp_path: Path) -> None:
    from tests.support.processes import run_lorien

    keys = {name: generate_keypair(tmp_path / "keys", name) for name in ("root", "targets", "online")}
    repo = tmp_path / "repo"
    site = Publisher(tmp_path / "site")
    shutil.copy(site.all / "1.0.0.tflite", site.models / FAMILY)

    bad = run_lorien("trust", "init", "--repo", repo, "--key", f"bogus={keys['root'][1]}")
    assert bad.returncode == 2 and "expected ROLE=FILE with ROLE one of root" in bad.stderr, bad.stderr
    missing = run_lorien("trust", "init", "--repo", repo, "--key", f"root={keys['root'][1]}")
    assert missing.returncode == 2 and "no key for the targets, snapshot, timestamp role(s)" in missing.stderr
    init = run_lorien(
        "trust", "init", "--repo", repo, "--key", f"root={keys['root'][1]}", "--key", f"targets={keys['targets'][1]}",
        "--key", f"snapshot={keys['online'][1]}", "--key", f"timestamp={keys['online'][1]}",
        "--sign-key", keys["root"][0],
    )  # fmt: skip
    assert init.returncode == 1 and "root version 1 installed" in init.stdout, init.stdout + init.stderr
    assert "Devices refuse the repository's metadata until it is re-signed" in init.stdout  # no online keys given
    again = run_lorien("trust", "init", "--repo", repo, "--from-key", keys["root"][0])
    assert again.returncode == 2 and "already a TUF repository" in again.stderr
    shown = run_lorien("trust", "show", "--repo", repo)
    assert shown.returncode == 0 and "targets    v-" in shown.stdout and "threshold 1 of 1" in shown.stdout
    only_key = run_lorien(
        "trust", "remove-key", "--repo", repo, "root", "", "--sign-key", keys["root"][0]
    )  # an empty prefix matches the one key: it would leave root with none
    assert only_key.returncode == 2 and "the root role would have no key left" in only_key.stderr, only_key.stderr
    threshold = run_lorien("trust", "set-threshold", "--repo", repo, "targets", "2", "--sign-key", keys["root"][0])
    assert threshold.returncode == 2 and "threshold 2 must be from 1 to its 1 key(s)" in threshold.stderr

    published = run_lorien(
        "publish", "--models", site.models, "--repo", repo, "--sign-key", keys["targets"][0],
        "--sign-key", keys["online"][0],
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    verified = run_lorien("inspect", repo, "--verify", "--root", repo / "metadata" / "1.root.json")
    assert verified.returncode == 0 and "TUF metadata ok: root v1, targets v1" in verified.stdout, verified.stdout
    shutil.copy(site.all / "1.1.0.tflite", site.models / FAMILY)
    offline = run_lorien("publish", "--models", site.models, "--repo", repo, "--sign-key", keys["online"][0])
    assert offline.returncode == 1 and "staged unsigned" in offline.stderr, offline.stderr


def test_a_signed_device_pointed_at_an_unsigned_repository_says_so(tmp_path: Path) -> None:
    site = Publisher(tmp_path / "site", _key(tmp_path, "k"))
    site.publish("1.0.0")
    unsigned = Publisher(tmp_path / "unsigned")
    shutil.copy(unsigned.all / "1.0.0.tflite", unsigned.models / FAMILY)
    assert publish(unsigned.models, unsigned.repo).ok
    updater = _device(site, tmp_path, unsigned.simulator())
    with pytest.raises(NetworkError, match="is it a signed repository"):
        updater.check()
