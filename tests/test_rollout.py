"""Channels and staged rollouts without processes: the manifest field (strict parse, canonical bytes, schema),
the device's pure decision (device/rollout.py, incl. statistical checks of the buckets), the publisher's
channels.toml and merge rules, the ``lorien rollout`` edits and command, and the device's identity."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from lorien.device.config import load_config
from lorien.device.rollout import bucket, decide
from lorien.device.startup import device_identity
from lorien.publisher.channels import halt, merge_channels, read_channels_file, resume, roll_back, set_rollout
from lorien.publisher.publish import publish
from lorien.repo.channels import Channel, Rollout, RolloutStep
from lorien.repo.errors import BadInputError, ManifestError
from lorien.repo.fetch import DirectoryFetcher
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import Manifest, parse_manifest, parse_timestamp
from lorien.repo.trust import TrustPolicy, read_trusted
from tests.support.processes import run_lorien

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "repo/schemas/manifest.schema.json").read_text())
NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def manifest(published: Path) -> Manifest:
    return parse_manifest((published / "classifier" / "manifest.json").read_bytes())


def with_channels(manifest: Manifest, **channels: Channel) -> Manifest:
    return replace(manifest, channels=channels)


# ------------------------------------------------------------------------------------------------ manifest field


def test_channels_round_trip_byte_identical_and_validate_against_the_schema(manifest: Manifest) -> None:
    rollout = Rollout(12.5, "2026-12-01T00:00:00Z", (RolloutStep("2026-12-03T00:00:00Z", 50),), halted=True)
    changed = with_channels(
        manifest,
        stable=Channel("1.1.0", "1.0.0", rollout, ("1.2.0",)),
        beta=Channel("1.2.0"),
    )
    raw = changed.to_bytes()
    assert parse_manifest(raw) == changed and parse_manifest(raw).to_bytes() == raw
    jsonschema.validate(json.loads(raw), SCHEMA)
    assert b"channels" not in manifest.to_bytes()  # optional: a family without channels is unchanged


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(Stable={"target": "1.0.0"}), "channel name 'Stable'"),
        (lambda c: c["stable"].update(target="9.9"), "version '9.9' is not one of the listed"),
        (lambda c: c["stable"].update(previous="../x"), "previous"),
        (lambda c: c["stable"].update(rollout={"percent": 101}), "from 0 to 100"),
        (lambda c: c["stable"].update(rollout={"percent": True}), "from 0 to 100"),
        (lambda c: c["stable"].update(rollout={"percent": 1.001}), "more than two decimals"),
        (lambda c: c["stable"].update(rollout={"percent": 1, "start": "yesterday"}), "start"),
        (lambda c: c["stable"].update(rollout={"percent": 1, "extra": 1}), "unknown field 'extra'"),
        (lambda c: c["stable"].update(colour="red"), "unknown field 'colour'"),
        (lambda c: c["stable"].update(rolled_back=["9.9"]), "version '9.9' is not one of the listed"),
        (lambda c: c["stable"].update(rolled_back=[1]), r"rolled_back\[0\]"),
        (
            lambda c: c["stable"].update(
                rollout={"percent": 1, "steps": [{"at": f"2026-12-0{i}T00:00:00Z", "percent": i} for i in (3, 2)]}
            ),
            "time order",
        ),
        (
            lambda c: c["stable"].update(rollout={"percent": 1, "steps": [{"at": "2026-12-01T00:00:00Z"}] * 33}),
            "limit",
        ),
        (lambda c: c.update({f"c{i}": {"target": "1.0.0"} for i in range(17)}), "limit of 16"),
    ],
)
def test_malformed_channels_are_refused_naming_the_field(manifest: Manifest, change, message: str) -> None:
    document = json.loads(with_channels(manifest, stable=Channel("1.1.0")).to_bytes())
    change(document["channels"])
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(document).encode())


# ------------------------------------------------------------------------------------------------ decision


def test_bucket_is_stable_per_device_and_target_and_spread_uniformly() -> None:
    assert bucket("dev-1", "cls", "1.3.0") == bucket("dev-1", "cls", "1.3.0")
    places = [bucket(f"device-{i}", "cls", "1.3.0") for i in range(20_000)]
    assert all(0 <= place < 100 for place in places)
    # chi-square over 10 equal bins: 9 degrees of freedom, the 99.9th percentile is 27.88
    counts = [0] * 10
    for place in places:
        counts[int(place // 10)] += 1
    expected = len(places) / 10
    assert sum((count - expected) ** 2 / expected for count in counts) < 27.88
    # another target picks other early devices: the 10 % of one target and of the next barely overlap
    early = {i for i, place in enumerate(places) if place < 10}
    other = {i for i in range(20_000) if bucket(f"device-{i}", "cls", "1.4.0") < 10}
    assert abs(len(early & other) - 200) < 6 * math.sqrt(200)  # independent: 1 % of the fleet, ± 6 σ


@pytest.mark.parametrize("percent", [1, 10, 50])
def test_share_of_devices_in_the_rollout_matches_the_percentage_within_binomial_error(
    manifest: Manifest, percent: int
) -> None:
    staged = with_channels(manifest, stable=Channel("1.2.0", "1.1.0", Rollout(percent)))
    n = 5000
    inside = sum(decide(staged, device_id=f"d{i}", installed="1.1.0", now=NOW).target == "1.2.0" for i in range(n))
    p = percent / 100
    assert abs(inside - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_growing_percentage_keeps_every_device_that_was_in(manifest: Manifest) -> None:
    ids = [f"d{i}" for i in range(2000)]

    def inside(percent: float) -> set[str]:
        staged = with_channels(manifest, stable=Channel("1.2.0", "1.1.0", Rollout(percent)))
        return {i for i in ids if decide(staged, device_id=i, installed="1.1.0", now=NOW).state == "in"}

    one, ten, all_ = inside(1), inside(10), inside(100)
    assert one <= ten <= all_ and len(all_) == len(ids) and len(one) < len(ten)


def test_outside_devices_move_to_previous_and_never_go_back_from_the_target(manifest: Manifest) -> None:
    staged = with_channels(manifest, stable=Channel("1.2.0", "1.1.0", Rollout(0)))
    assert decide(staged, device_id="a", installed="1.0.0", now=NOW).target == "1.1.0"
    stay = decide(staged, device_id="a", installed="1.2.0", now=NOW)  # joined before; not withdrawn
    assert stay.target is None and stay.state == "out" and not stay.downgrade
    no_previous = with_channels(manifest, stable=Channel("1.2.0", None, Rollout(0)))
    assert decide(no_previous, device_id="a", installed="1.0.0", now=NOW).target is None


def test_start_time_and_steps_raise_the_share_unless_halted() -> None:
    steps = (RolloutStep("2026-12-02T00:00:00Z", 10), RolloutStep("2026-12-03T00:00:00Z", 100))
    rollout = Rollout(1, "2026-12-01T00:00:00Z", steps)
    assert rollout.percent_at(NOW - timedelta(days=2)) == 0  # not started
    assert rollout.percent_at(NOW - timedelta(days=1)) == 1
    assert rollout.percent_at(NOW) == 10
    assert rollout.percent_at(NOW + timedelta(days=1)) == 100
    assert replace(rollout, halted=True).percent_at(NOW + timedelta(days=1)) == 1


def test_rolled_back_version_authorises_the_downgrade_and_nothing_else(manifest: Manifest) -> None:
    rolled = with_channels(manifest, stable=Channel("1.1.0", rolled_back=("1.2.0",)))
    decision = decide(rolled, device_id="a", installed="1.2.0", now=NOW)
    assert decision.target == "1.1.0" and decision.downgrade
    plain = with_channels(manifest, stable=Channel("1.1.0"))
    assert decide(plain, device_id="a", installed="1.2.0", now=NOW).target is None  # stays, no downgrade
    flagged = replace(plain, allow_downgrade=True)  # the publisher's --allow-downgrade keeps its meaning
    assert decide(flagged, device_id="a", installed="1.2.0", now=NOW).target == "1.1.0"


def test_channels_pin_and_hold(manifest: Manifest) -> None:
    channels = with_channels(manifest, stable=Channel("1.1.0"), beta=Channel("1.2.0"))
    assert decide(channels, device_id="a", channel="beta", installed="1.0.0", now=NOW).target == "1.2.0"
    assert decide(channels, device_id="a", installed="1.0.0", now=NOW).target == "1.1.0"
    assert decide(channels, device_id="a", channel="nightly", installed="1.0.0", now=NOW).target is None
    assert decide(manifest, device_id="a", channel="beta", installed="1.0.0", now=NOW).target == "1.2.0"  # none
    pinned = decide(channels, device_id="a", channel="beta", installed="1.2.0", now=NOW, pin="1.0.0")
    assert pinned.target == "1.0.0" and pinned.downgrade and pinned.state == "pinned"
    assert decide(channels, device_id="a", installed="1.0.0", now=NOW, pin="7.0").target is None
    held = decide(channels, device_id="a", installed="1.0.0", now=NOW, hold=True)
    assert held.target == "1.1.0" and not held.install and held.state == "held"


# ------------------------------------------------------------------------------------------------ publisher


def test_channels_toml_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "channels.toml"
    path.write_text(
        '[stable]\ntarget = "1.1.0"\n[beta]\ntarget = "1.2.0"\n'
        'rollout = { percent = 5, start = 2026-12-01T02:00:00Z, steps = [{ at = "2026-12-02T02:00:00Z", percent = 50 }] }\n'
    )
    channels = read_channels_file(path)
    assert channels is not None and channels["stable"] == Channel("1.1.0")
    assert channels["beta"].rollout == Rollout(
        5, "2026-12-01T02:00:00Z", (RolloutStep("2026-12-02T02:00:00Z", 50),)
    )
    assert read_channels_file(tmp_path / "absent.toml") is None
    for text, message in (
        ('[Beta]\ntarget = "1"', "channel name"),
        ("[beta]\ntarget = 1", "version names"),
        ('[beta]\ntarget = "1"\ncolour = "red"', "unknown key 'colour'"),
        ('[beta]\ntarget = "1"\nrollout = { percent = 200 }', "from 0 to 100"),
        ('[beta]\ntarget = "1"\nrollout = { percent = 5, start = 2026-12-01T02:00:00 }', "time zone"),
        ("[beta", "not valid TOML"),
    ):
        path.write_text(text)
        with pytest.raises(BadInputError, match=message):
            read_channels_file(path)


def test_merge_keeps_a_running_rollout_and_records_the_previous_target(manifest: Manifest) -> None:
    versions = {"1.0.0", "1.1.0", "1.2.0"}
    base = replace(manifest, latest="1.1.0")
    merged, _ = merge_channels({"stable": Channel("1.2.0", rollout=Rollout(5))}, base, versions, "x")
    assert merged == {"stable": Channel("1.2.0", "1.1.0", Rollout(5))}  # previous: what devices followed
    halted = with_channels(base, stable=halt(merged["stable"], NOW))
    again, _ = merge_channels({"stable": Channel("1.2.0", rollout=Rollout(5))}, halted, versions, "x")
    assert again["stable"].rollout.halted  # `lorien rollout` owns a running rollout
    rolled = with_channels(base, stable=roll_back(halted.channels["stable"]))
    kept, notes = merge_channels({"stable": Channel("1.2.0")}, rolled, versions, "x")
    assert kept["stable"].target == "1.1.0" and "rolled back" in notes[0]
    with pytest.raises(BadInputError, match=r"'9\.9', which is not in the models directory"):
        merge_channels({"stable": Channel("9.9")}, base, versions, "x")


def test_a_partial_rollout_never_becomes_the_next_targets_fallback(manifest: Manifest) -> None:
    versions = {"1.0.0", "1.1.0", "1.2.0"}
    partial = Channel("1.1.0", "1.0.0", Rollout(10, halted=True))
    base = with_channels(manifest, stable=partial)
    merged, _ = merge_channels({"stable": Channel("1.2.0", rollout=Rollout(1))}, base, versions, "x")
    assert merged["stable"].previous == "1.0.0"  # 90 % never took 1.1.0: they stay on 1.0.0
    assert set_rollout(partial, target="1.2.0", percent=1, now=NOW).previous == "1.0.0"
    complete = Channel("1.1.0", "1.0.0", Rollout(10, steps=(RolloutStep("2026-12-01T00:00:00Z", 100),)))
    assert set_rollout(complete, target="1.2.0", now=NOW).previous == "1.1.0"


def test_rollout_edits() -> None:
    channel = Channel("1.2.0", "1.1.0", Rollout(10, steps=(RolloutStep("2026-12-01T00:00:00Z", 50),)))
    halted = halt(channel, NOW)
    assert halted.rollout.halted and halted.rollout.percent == 50  # frozen where it had got to
    assert not resume(halted).rollout.halted
    assert set_rollout(channel, percent=100, steps=()).rollout is None  # complete
    moved = set_rollout(channel, target="1.3.0")
    assert moved.target == "1.3.0" and moved.previous == "1.1.0" and moved.rollout is None  # 1.2.0 was partial
    back = roll_back(halted)
    assert back == Channel("1.1.0", None, None, ("1.2.0",))
    assert set_rollout(back, target="1.2.0").rolled_back == ()  # taken up again on purpose
    with pytest.raises(BadInputError, match="no previous target"):
        roll_back(back)


def test_publish_writes_channels_and_patches_towards_every_target(models_dir: Path, tmp_path: Path) -> None:
    (models_dir / "classifier" / "channels.toml").write_text(
        '[stable]\ntarget = "1.1.0"\n[beta]\ntarget = "1.2.0"\nrollout = { percent = 10 }\n'
    )
    repo = tmp_path / "repo"
    report = publish(models_dir, repo)
    assert report.ok, report.all_problems()
    manifest = parse_manifest((repo / "classifier" / "manifest.json").read_bytes())
    assert manifest.latest == "1.1.0"  # clients without channels follow stable
    assert manifest.channels == {"stable": Channel("1.1.0"), "beta": Channel("1.2.0", rollout=Rollout(10))}
    assert {(p.source, p.target) for p in manifest.patches} >= {("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")}
    jsonschema.validate(json.loads((repo / "classifier" / "manifest.json").read_text()), SCHEMA)
    page = (repo / "classifier" / "index.html").read_text()
    assert '<table class="channels">' in page and "10 %" in page and "all devices" in page
    shown = run_lorien("inspect", repo)
    assert "channel beta: 1.2.0 at 10 %" in shown.stdout and "channel stable: 1.1.0" in shown.stdout


def test_rollout_command_halts_and_rolls_back_through_the_signed_write_path(
    models_dir: Path, tmp_path: Path
) -> None:
    key = tmp_path / "publisher" / "lorien.key"
    assert run_lorien("keygen", "--out", tmp_path / "publisher").returncode == 0
    (models_dir / "classifier" / "channels.toml").write_text(
        '[stable]\ntarget = "1.2.0"\nprevious = "1.1.0"\nrollout = { percent = 10 }\n'
    )
    repo = tmp_path / "repo"
    published = run_lorien(
        "publish", "--models", models_dir, "--repo", repo, "--sign-key", key, "--expires-days", "30"
    )
    assert published.returncode == 0, published.stderr
    before = parse_manifest((repo / "classifier" / "manifest.json").read_bytes())
    unsigned = run_lorien("rollout", "halt", "classifier", "stable", "--repo", repo)
    assert unsigned.returncode == 2 and "--sign-key" in unsigned.stderr  # the normal path's signing rule
    done = run_lorien("rollout", "halt", "classifier", "stable", "--repo", repo, "--sign-key", key, "--roll-back")
    assert done.returncode == 0, done.stderr
    after = parse_manifest((repo / "classifier" / "manifest.json").read_bytes())
    assert after.sequence == before.sequence + 1
    validity = parse_timestamp(after.expires) - parse_timestamp(after.generated_at)
    assert validity == timedelta(days=30)  # as publish wrote it, not a default of the rollout command
    assert after.channels["stable"] == Channel("1.1.0", None, None, ("1.2.0",))
    assert after.latest == "1.1.0" and after.patch("1.2.0", "1.1.0") is not None  # the way back is a patch
    policy = TrustPolicy((repo / "metadata" / "1.root.json").read_bytes())  # a device's TUF view of it
    signed = read_trusted(DirectoryFetcher(repo), "classifier/manifest.json", policy, tmp_path / "tuf")
    assert signed.client is not None and parse_manifest(signed.data) == after
    verify = run_lorien("inspect", repo, "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    status = run_lorien("rollout", "status", "classifier", "stable", "--repo", repo, "--json")
    assert json.loads(status.stdout)["rolled_back"] == ["1.2.0"]
    missing = run_lorien(
        "rollout", "set", "classifier", "nightly", "--repo", repo, "--sign-key", key, "--percent", "5"
    )
    assert missing.returncode == 2 and "channel 'nightly' is not published" in missing.stderr
    with repository_lock(repo):  # as a running `lorien watch` holds it
        busy = run_lorien("rollout", "resume", "classifier", "stable", "--repo", repo, "--sign-key", key)
    assert busy.returncode == 3 and "lorien watch" in busy.stderr
    # a later publish keeps the roll-back although channels.toml still names 1.2.0
    assert run_lorien("publish", "--models", models_dir, "--repo", repo, "--sign-key", key, "-q").returncode == 0
    assert (
        parse_manifest((repo / "classifier" / "manifest.json").read_bytes()).channels["stable"].target == "1.1.0"
    )


# ------------------------------------------------------------------------------------------------ identity


def test_device_identity_is_generated_once_and_configurable(tmp_path: Path) -> None:
    base = {
        "repo_url": "http://x/",
        "family": "cls",
        "model_path": str(tmp_path / "m"),
        "state_dir": str(tmp_path / "s"),
    }
    config = load_config(None, {**base, "insecure_allow_unsigned": True})
    first = device_identity(config)
    assert first == device_identity(config) == (tmp_path / "s" / "device_id").read_text().strip()
    assert device_identity(replace(config, device_id="pump-7")) == "pump-7"
    for key, value, message in (
        ("channel", "Beta!", "channel"),
        ("device_id", "a b", "device_id"),
        ("pin", "../1", "pin"),
        ("hold", "yes", "hold"),
    ):
        with pytest.raises(BadInputError, match=message):
            load_config(None, {**base, "insecure_allow_unsigned": True, key: value})


def test_a_bad_channels_file_holds_back_its_family_with_a_clear_message(models_dir: Path, tmp_path: Path) -> None:
    (models_dir / "classifier" / "channels.toml").write_text('[stable]\ntarget = "9.9.9"\n')
    report = publish(models_dir, tmp_path / "repo")
    assert not report.ok
    (problem,) = report.all_problems()
    assert "channels.toml" in problem and "'9.9.9', which is not in the models directory" in problem
    assert not (tmp_path / "repo" / "classifier" / "manifest.json").exists()


def test_requests_for_a_watcher_without_one_time_out_and_malformed_ones_are_answered(tmp_path: Path) -> None:
    from lorien.publisher.rollout_requests import REQUESTS_DIR, RolloutRequest, serve_requests, submit
    from lorien.repo.errors import BusyError

    models = tmp_path / "models"
    models.mkdir()
    request = RolloutRequest("cls", "stable", "halt")
    with pytest.raises(BusyError, match="no `lorien watch`"):
        submit(models, request, timeout=0.3)
    assert not list((models / REQUESTS_DIR).iterdir())  # withdrawn
    assert RolloutRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    (models / REQUESTS_DIR / "1-bad.json").write_text("{not json")
    (models / REQUESTS_DIR / "2-evil.json").write_text(json.dumps({**request.to_dict(), "action": "delete"}))
    applied: list[RolloutRequest] = []
    assert serve_requests(models, lambda r: applied.append(r)) == 2 and not applied
    answers = {path.name: json.loads(path.read_text()) for path in (models / REQUESTS_DIR).glob("*.result.json")}
    assert answers["1-bad.result.json"] == {"ok": False, "error": "request is not JSON", "exit_code": 2}
    assert "expected one of halt, resume, set" in answers["2-evil.result.json"]["error"]
    with pytest.raises(BadInputError, match="nothing to set"):
        RolloutRequest("cls", "stable", "set").edit()
