"""The update pipeline: check → plan → download → apply → deploy, plus TOPE packages, manual rollback and healing.

One operation runs at a time in a background thread and one ``check`` at a time (``operations.Slots``); the
HTTP API only starts operations and reads :meth:`Updater.status_view` / :meth:`Updater.status`. When an
operation ends, whatever the outcome, ``tmp/`` keeps only a downloaded TOPE package not yet installed and
``.part`` files (a retry of the same update resumes them; a new target's operation drops the others). The
installed version has one rule (``installed``). Data flows through the modules like this::

    TUF refresh + manifest target (repo.trust.read_trusted) ─▶ trusted.verify_manifest (no I/O) ─▶ persist the
      record ─▶ plan.cheapest_plan ─▶ each step's blob is a signed TUF target of that size and SHA-256
      ─▶ steps.download_steps (resumable; size + MD5 + SHA-256)
      ─▶ steps.apply_steps (patches in tmp/, each result's SHA-256 checked) ─▶ deploy.Deployer.deploy

Every stage transition is persisted in ``state.json`` *before* the work it announces (``state`` has the
diagram), so :meth:`Updater.heal` can finish or undo after a crash or power cut, by ``state.HEAL_TABLE``:
``.part`` files resume (HTTP Range + If-Range), finished blobs are re-verified rather than refetched, patches
are re-applied from verified blobs, and a deploy is finished or rolled back by what the model path holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from lorien.device.bundles import (
    BundleDeployer,
    BundleInstalled,
    assemble,
    bundle_plan,
    check_link,
    identify_bundle,
    linked_dir,
)
from lorien.device.config import DeviceConfig
from lorien.device.deploy import Deployer
from lorien.device.installed import InstalledModel
from lorien.device.metrics import DeviceMetrics
from lorien.device.operations import Slots
from lorien.device.packages import TopePackages
from lorien.device.plan import Plan, Step, cheapest_plan, full_step, identify
from lorien.device.report import Callbacks, Reporter
from lorien.device.rollout import Decision, decide
from lorien.device.startup import device_identity
from lorien.device.state import Heal, Kind, OnDisk, Operation, Situation, Stage, StateStore, heal_action
from lorien.device.steps import apply_steps, download_steps
from lorien.device.trusted import AcceptedManifest, verify_manifest
from lorien.device.windows import Window
from lorien.repo.bundle import bundle_digest, describe_directory
from lorien.repo.download import Downloader, DownloadPolicy, Progress
from lorien.repo.engine import container, require_engine
from lorien.repo.errors import (
    FreshnessError,
    IntegrityError,
    LorienError,
    ManifestError,
    NetworkError,
    PatchError,
    SignatureError,
    UpdateFailed,
)
from lorien.repo.fetch import HttpFetcher
from lorien.repo.hashing import sha256_file
from lorien.repo.layout import manifest_path
from lorien.repo.manifest import Manifest, utc_now
from lorien.repo.testhooks import crash_point
from lorien.repo.transport import HttpTransport, Transport
from lorien.repo.trust import TrustPolicy, read_trusted
from lorien.repo.tufclient import TufClient
from lorien.repo.tufmeta import HASH
from lorien.repo.versions import is_newer

log = logging.getLogger(__name__)
LORIEN_VERSION = package_version("lorien")

MAX_HEALTH_ATTEMPTS = 2  # a health check interrupted by a crash is retried once, then the update is rolled back


def _step_text(step: Step) -> str:
    where = f" {step.path}" if step.path else ""
    if step.kind == "patch":
        return f"{step.source}→{step.target}{where}"
    return f"{step.kind} {step.target}{where}"


@dataclass(frozen=True)
class StatusView:
    """What the API may know at a glance: the stage, whether an operation runs, and ``/progress``."""

    stage: Stage
    busy: bool
    progress: dict[str, Any]  # TOPE's {stage, progress (integer percent), message, error} + lorien's keys


class Updater(TopePackages):
    def __init__(
        self,
        config: DeviceConfig,
        callbacks: Callbacks | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``transport``: how repository files are fetched (default: HTTP with the config's limits; tests pass
        ``tests/support/simulator.RepositorySimulator``)."""
        self.config = config
        self._state = StateStore(config.state_file)
        self.device_id = device_identity(config)
        if transport is not None:
            transport.identity = self.identity_header
        self._transport = transport
        self.fetcher = HttpFetcher(config.repo_url, limits=config.limits, transport=transport or self._http())
        self._trust = TrustPolicy(config.trusted_root_bytes, config.insecure_allow_unsigned, config.limits)
        self._installed = (
            BundleInstalled(config.model_path, self._state, config.limits)
            if config.bundle
            else InstalledModel(config.model_path, self._state)
        )
        self.metrics = DeviceMetrics(
            config.family, self._state, self._installed, lambda: self._manifest, config.channel
        )
        self._reporter = Reporter(
            config.family, self._state, callbacks or Callbacks(None), self.metrics.stage_changed, self.identity
        )
        self._deployer = (
            BundleDeployer(config, self._state, self._reporter, self._installed)
            if isinstance(self._installed, BundleInstalled)
            else Deployer(config, self._state, self._reporter)
        )
        self._slots = Slots(self._fail, self._tidy)
        self._manifest: Manifest | None = None  # the last manifest accepted (names the installed model)
        self._last_refusal: dict[str, str] | None = None  # the last manifest refused, for /status
        self._tuf_state: dict[str, Any] | None = None  # the TUF roles of the last verified check, for /status
        self._trust_lock = threading.Lock()
        self._window_override = threading.Event()  # an operator's "now": windows do not apply to this update
        self._waiting_for: str | None = None  # "deploy" while an applied update waits for its window

    def _downloader(self, on_progress: Callable[[Progress], None]) -> Downloader:
        policy = DownloadPolicy(
            retry=self.config.retry.policy, limits=self.config.limits, max_rate=self.config.max_download_rate
        )
        on_progress = self.metrics.counting_retries(on_progress)  # GET /metrics counts the waits for a retry
        return Downloader(policy=policy, on_progress=on_progress, transport=self._transport or self._http())

    def _http(self) -> HttpTransport:
        """A transport of its own (documents and blobs are fetched from different threads) whose requests name
        lorien, the family, channel, installed version and rollout state in their User-Agent."""
        transport = HttpTransport(self.config.limits)
        transport.identity = self.identity_header
        return transport

    # ------------------------------------------------------------------ operation control

    def _start(self, kind: str, work: Callable[[], None], announce: tuple[Stage, str] | None = None) -> None:
        """Run ``work`` in the background, or raise Busy. ``announce``: the stage entered before the request is
        answered, so that a client polling ``/progress`` right after never sees the previous operation's end."""
        self._slots.start(
            kind,
            work,
            lambda: f"another operation is running ({self._state.stage()}); try again when it finishes",
            before=(lambda: self._reporter.enter(*announce)) if announce is not None else None,
        )

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the operation in progress (if any) to end."""
        self._slots.wait(timeout)

    def _tidy(self) -> None:
        """After every operation: ``tmp/`` keeps only ``.part`` files and a downloaded package not yet installed."""
        package = self._state.get("package")
        ready = {Path(package["path"]).name} if package and package.get("done") else set()
        self._deployer.clear_tmp(lambda name: name in ready or name.endswith(".part"))

    def _drop_other_parts(self, keep: set[str]) -> None:
        """Before downloading a new target: partial downloads of any other target go."""
        self._deployer.clear_tmp(lambda name: name in keep or not name.endswith(".part"))

    def _fail(self, message: str) -> None:
        """End the operation as failed; mid-deploy, first put the old model (and its service) back."""
        operation = self._state.operation()
        failure = self._deployer.abort(message)
        if failure is None:
            return  # rolled back, which ended the operation
        self._state.finish(False, failure, operation.target if operation else None, stage=Stage.FAILED)
        self._reporter.report(Stage.FAILED, "update failed", 0.0, error=failure)

    # ------------------------------------------------------------------ check and plan

    def _read_manifest(self) -> Manifest:
        return self._read_verified_manifest()[0]

    def _read_verified_manifest(self) -> tuple[Manifest, TufClient | None]:
        """Fetch and verify (``trusted.verify_manifest``) the family's manifest, and remember it.

        The highest sequence accepted is persisted before the manifest is used, so a restart cannot be talked
        into an older one. A refusal is also kept for ``/status`` (``trust.last_refusal``) until a manifest is
        accepted again."""
        key = f"{self.config.repo_url}#{self.config.family}"  # one record per repository + family
        try:
            with self._trust_lock:  # check and record as one step: a concurrent check cannot lower the record
                stored = (self._state.get("accepted_manifests") or {}).get(key)
                document = read_trusted(
                    self.fetcher, manifest_path(self.config.family), self._trust, self.config.tuf_dir
                )
                verified = verify_manifest(
                    document,
                    repo_url=self.config.repo_url,
                    family=self.config.family,
                    accepted=AcceptedManifest.from_dict(stored) if stored else None,
                    policy=self._trust,
                    now=datetime.now(UTC),
                )
                record = verified.record.to_dict()
                records = {**(self._state.get("accepted_manifests") or {}), key: record}
                sequence = verified.manifest.sequence
                self._state.update(highest_sequence=sequence, accepted_manifest=record, accepted_manifests=records)
        except (ManifestError, SignatureError, FreshnessError) as error:
            self._last_refusal = {"message": str(error), "at": utc_now()}
            raise
        self._last_refusal = None
        self._manifest = verified.manifest
        if document.client is not None:
            self._tuf_state = document.client.state().to_dict()
        return verified.manifest, document.client

    def check(self) -> Plan:
        """The verified manifest's latest version and the cheapest way to it from the installed model (one check
        at a time: this fetches the manifest in the caller's thread).

        Raises:
            Busy: another check is running.
            SignatureError, ManifestError, FreshnessError: the manifest is refused (``trusted``), or it would
                install an older version than the installed one without ``allow_downgrade``.
            NetworkError: the repository is unreachable or sends too much.
        """
        with self._slots.check():
            return self._check()

    def _check(self) -> Plan:
        self.metrics.checked()
        manifest, client = self._read_verified_manifest()
        if self.config.bundle:
            check_link(self.config.model_path)
            found, files = identify_bundle(self.config.model_path, manifest, self.config.limits)
        else:
            found, files = identify(self.config.model_path, manifest), []
        installed = self._installed.remember(manifest)  # one rule: also a version this device recorded
        found = replace(found, version=installed)
        decision = self._decide(manifest, installed)
        if decision.target is None:  # stay: nothing to plan
            return Plan(found, installed or manifest.latest, (), found.size)
        if self.config.bundle:
            plan = bundle_plan(manifest, found, files, target=decision.target)
        else:
            plan = cheapest_plan(
                manifest, found, target=decision.target, max_chain=self.config.limits.max_chain_length
            )
        if client is not None:
            for step in plan.steps:
                if step.kind != "keep":  # a kept file is not downloaded
                    _check_signed_blob(client, step.blob, step.size, step.sha256)
        if not plan.up_to_date and not decision.downgrade:
            self._refuse_downgrade(installed, plan.latest, manifest.allow_downgrade, "the manifest's latest")
        return plan

    def _decide(self, manifest: Manifest, installed: str | None) -> Decision:
        """The rollout decision (``device.rollout``) for this manifest, kept for ``/status`` and the User-Agent."""
        decision = decide(
            manifest,
            device_id=self.device_id,
            channel=self.config.channel,
            installed=installed,
            now=datetime.now(UTC),
            **self._control(),
        )
        if decision.to_dict() != self._state.get("rollout"):
            self._state.update(rollout=decision.to_dict())
        if decision.target is not None and decision.target != installed:
            log.info("rollout: %s", decision.reason)
        return decision

    def _control(self) -> dict[str, Any]:
        """The pin and hold in force: the operator's run-time ones (state.json), once set, over the config's."""
        control = self._state.get("control") or {}
        return {
            "pin": control.get("pin", self.config.pin),
            "hold": bool(control.get("hold", self.config.hold)),
        }

    def rollout_view(self) -> dict[str, Any]:
        """``{"rollout": …}`` for ``/check``: the last decision (why this target, bucket, share)."""
        return {"rollout": self._state.get("rollout")}

    def set_control(self, **changes: Any) -> dict[str, Any]:
        """Set the run-time ``pin`` (a version, or None to unpin) and/or ``hold``; persisted atomically in
        state.json, applied by the next check. Returns the pin and hold now in force."""
        self._state.update(control={**(self._state.get("control") or {}), **changes})
        log.info("operator control: %s", changes)
        return self._control()

    def identity(self) -> dict[str, Any]:
        """What every request and report says about this device: family, channel, installed version, rollout."""
        decision = self._state.get("rollout") or {}
        installed = self._installed.version(self._manifest)  # re-hashed only when the file changed
        state = decision.get("state") or "unknown"
        if decision.get("bucket") is not None:
            state += f":{decision['bucket']:.2f}/{decision.get('percent') or 0:g}"
        return {
            "device_id": self.device_id,
            "family": self.config.family,
            "channel": self.config.channel,
            "installed": installed or "none",
            "rollout": state,
        }

    def identity_header(self) -> str:
        """The User-Agent: ``lorien/0.1.0 (device=…; family=…; channel=…; installed=…; rollout=in:12.34/25)``."""
        fields = "; ".join(f"{key.removesuffix('_id')}={value}" for key, value in self.identity().items())
        return f"lorien/{LORIEN_VERSION} ({fields})"

    @staticmethod
    def _refuse_downgrade(installed: str | None, target: str, allowed: bool, what: str) -> None:
        """Never move to an older version unless asked: the signed manifest's ``allow_downgrade`` (publisher), or
        ``force`` on a TOPE ``/update`` (operator); an operator can always POST /api/v1.0/rollback."""
        if installed is not None and not allowed and is_newer(installed, target):
            raise FreshnessError(
                f"installed version {installed} is newer than {what} {target}; not downgrading (the publisher "
                'can set allow_downgrade; an operator can POST /api/v1.0/rollback, or /update with "force": true)'
            )

    # ------------------------------------------------------------------ manifest-driven update

    def update_latest(self, retry_rejected: bool = True, now: bool = False) -> None:
        """Update to the manifest's latest in the background. ``retry_rejected=False`` (periodic checks) skips a
        target that was already deployed here and rolled back, instead of stopping the service for it on every
        interval. Outside ``download_window`` the update waits for a later check; outside ``deploy_window`` an
        applied update waits for it; ``now`` (an operator's request) ignores both windows, and also releases an
        update already waiting for its deploy window.

        Raises:
            Busy: another operation is running.
        """
        if now and self._waiting_for is not None:
            self._window_override.set()  # releases the operation waiting for its deploy window
            return

        def work() -> None:
            if now:
                self._window_override.set()
            else:
                self._window_override.clear()
            self._update_latest(retry_rejected)

        self._start(Kind.UPDATE_LATEST, work)

    def _window(self, which: str) -> Window | None:
        text = self.config.download_window if which == "download" else self.config.deploy_window
        return Window.parse(text) if text else None

    def _outside(self, which: str) -> str | None:
        """The /progress message when now is outside the ``which`` window (and no override), else None."""
        window, moment = self._window(which), datetime.now().astimezone()
        if window is None or window.contains(moment) or self._window_override.is_set():
            return None
        return window.waiting_message(which, moment)

    def _wait_for_deploy_window(self, target: str) -> None:
        """Hold a downloaded, applied update until the deploy window opens (or an operator says now)."""
        while (message := self._outside("deploy")) is not None:
            if self._waiting_for is None:
                self._waiting_for = "deploy"
                self._reporter.report(Stage.APPLYING, f"{target} ready; {message}", 100.0)
            self._window_override.wait(30)
        self._waiting_for = None

    def _update_latest(self, retry_rejected: bool) -> None:
        started = utc_now()
        self._reporter.enter(Stage.CHECKING, "reading the manifest")
        plan = self._check()
        operation = Operation(
            Kind.UPDATE_LATEST,
            target=plan.latest,
            steps=plan.steps,
            previous=plan.installed.to_dict(),
            started_at=started,
            from_version=plan.installed.version,
            download_bytes=plan.download_bytes,
            full_size=plan.full_size,
        )
        if plan.up_to_date:
            self._state.finish(True, f"already up to date ({plan.latest})", plan.latest, record=operation)
            self._reporter.report(Stage.IDLE, f"already up to date ({plan.latest})", 100.0)
            return
        decision = Decision(**self._state.get("rollout")) if self._state.get("rollout") else None
        if decision is not None and not decision.install:
            self._state.update(stage=Stage.IDLE)
            self._reporter.report(Stage.IDLE, f"{decision.reason}; not installing", 100.0)
            return
        target_sha256 = plan.steps[-1].target_sha256
        if self.config.bundle:  # a bundle is identified by its digest
            target_sha256 = self._manifest.version(plan.latest).bundle.digest  # type: ignore[union-attr]
        rejected = (self._state.get("rejected_targets") or {}).get(target_sha256)
        if rejected and not retry_rejected:
            message = (
                f"latest {plan.latest} was rolled back here at {rejected['at']} ({rejected['reason']}); not "
                "deploying it again automatically: POST /api/v1.0/update-latest retries it"
            )
            self._state.update(stage=Stage.IDLE)
            self._reporter.report(Stage.IDLE, message, 100.0)
            return
        if (message := self._outside("download")) is not None:
            self._state.update(stage=Stage.IDLE)
            self._reporter.report(
                Stage.IDLE,
                f'{plan.latest} planned; {message} (POST /update-latest {{"now": true}} overrides)',
                0.0,
            )
            return
        for step in plan.steps:
            if step.kind in ("patch", "compressed"):
                require_engine(step.engine or "", f"patch {step.id}" if step.kind == "patch" else step.kind)
        self._state.begin(replace(operation, target_sha256=target_sha256))
        self._drop_other_parts({f"{step.sha256}.part" for step in plan.steps})
        how = " → ".join(_step_text(s) for s in plan.steps)
        log.info(
            "plan: %s, %s",
            how,
            f"{plan.download_bytes} bytes instead of {plan.full_size}"
            if plan.download_bytes < plan.full_size
            else f"full download, {plan.download_bytes} bytes",
        )
        self._continue_update()

    def _continue_update(self) -> None:
        operation = self._state.operation()
        assert operation is not None and operation.steps and operation.target_sha256
        if self.config.bundle:
            self._continue_bundle_update(operation)
            return
        steps = list(operation.steps)
        try:
            candidate = self._candidate(steps)
        except (IntegrityError, PatchError, NetworkError) as error:
            raw = self._raw_fallback(steps, error)
            if raw is None:
                raise
            steps = [raw]
            self._state.update_op(steps=(raw,), download_bytes=raw.size)
            candidate = self._candidate(steps)
        self._state.update_op(candidate=str(candidate))
        self.metrics.downloaded(sum(step.size for step in steps), candidate.stat().st_size)
        self._wait_for_deploy_window(operation.target or "the update")
        self._deployer.deploy(candidate, operation.target, operation.target_sha256)

    def _candidate(self, steps: list[Step]) -> Path:
        """Download every step and apply them: the verified file to deploy."""
        self._reporter.enter(Stage.DOWNLOADING, f"downloading {len(steps)} file(s)")
        tmp_dir = self.config.tmp_dir
        blobs = download_steps(steps, tmp_dir, self.fetcher.url, self._downloader, self._reporter)
        crash_point("after-download")
        self._reporter.enter(Stage.APPLYING, "applying")
        return apply_steps(steps, blobs, self.config.model_path, tmp_dir, self.config.limits, self._reporter)

    def _raw_fallback(self, steps: list[Step], error: LorienError) -> Step | None:
        """The raw full model instead of a compressed one that failed: its blob did not verify (after the
        downloader's own second try) or decode, or the server answered it with a client error (e.g. 404). Not
        for an outage that used up the retry budget: the raw blob is on the same server. None: no fallback."""
        if len(steps) != 1 or steps[0].kind != "compressed":
            return None
        if isinstance(error, NetworkError) and ": HTTP 4" not in str(error):
            return None
        step = steps[0]
        manifest, client = self._read_verified_manifest()  # afresh: the raw blob must be a signed target too
        try:
            entry = manifest.version(step.target)
        except KeyError:
            return None
        if entry.sha256 != step.target_sha256:
            return None
        if client is not None:
            _check_signed_blob(client, entry.blob, entry.size, entry.sha256)
        log.warning("compressed %s failed (%s); downloading the raw model instead", step.target, error)
        self._reporter.report(
            Stage.DOWNLOADING, f"compressed {step.target} failed ({error}); taking the raw model", 0
        )
        for path in (self.config.tmp_dir / f"{step.sha256}.blob", self.config.tmp_dir / f"{step.sha256}.part"):
            path.unlink(missing_ok=True)
        return full_step(entry)

    def _continue_bundle_update(self, operation: Operation) -> None:
        """Download the files that are not kept, assemble the version directory, switch the link."""
        assert isinstance(self._deployer, BundleDeployer) and operation.target and operation.target_sha256
        steps = list(operation.steps or ())
        self._deployer.require_space((operation.full_size or 0) + sum(step.size for step in steps))
        fetched = [step for step in steps if step.kind != "keep"]
        self._reporter.enter(Stage.DOWNLOADING, f"downloading {len(fetched)} of {len(steps)} file(s)")
        tmp_dir = self.config.tmp_dir
        blobs = download_steps(fetched, tmp_dir, self.fetcher.url, self._downloader, self._reporter)
        crash_point("after-download")
        self._reporter.enter(Stage.APPLYING, "assembling the new version")
        candidate = assemble(
            steps,
            {step.sha256: blob for step, blob in zip(fetched, blobs, strict=True)},
            linked_dir(self.config.model_path),
            operation.target,
            operation.target_sha256,
            self.config.model_path,
            self.config.limits,
            self._reporter,
        )
        self._state.update_op(candidate=str(candidate))
        self.metrics.downloaded(sum(step.size for step in steps), operation.full_size or 0)
        self._deployer.deploy(candidate, operation.target, operation.target_sha256)

    def rollback(self) -> None:
        """Deploy the newest backup in the background (the current model becomes a backup).

        Raises:
            UpdateFailed: there is no backup.
            Busy: another operation is running.
        """
        backups = self._deployer.backups()
        if not backups:
            raise UpdateFailed("no backup to roll back to")
        source = backups[-1]
        if isinstance(self._deployer, BundleDeployer):
            self._start(Kind.ROLLBACK, lambda: self._roll_back_bundle(source))
            return

        def work() -> None:
            started, installed = utc_now(), self._installed.version(self._manifest)
            staged = self._deployer.stage_copy(source, "manual-rollback.model")
            sha = sha256_file(staged)
            version = self._installed.version_of(sha, self._manifest)  # None: unknown here and to the manifest
            self._state.begin(Operation(Kind.ROLLBACK, version, sha, started_at=started, from_version=installed))
            self._deployer.deploy(staged, version, sha)  # the current model becomes the newest backup

        self._start(Kind.ROLLBACK, work)

    def _roll_back_bundle(self, directory: Path) -> None:
        """Link the newest previous version directory again (the linked one becomes a backup)."""
        started, installed = utc_now(), self._installed.version(self._manifest)
        digest = bundle_digest(describe_directory(directory, self.config.limits))
        version = self._installed.version_of(digest, self._manifest)
        self._state.begin(Operation(Kind.ROLLBACK, version, digest, started_at=started, from_version=installed))
        self._deployer.deploy(directory, version, digest)

    # ------------------------------------------------------------------ self-healing

    def heal(self) -> str:
        """Finish or undo whatever a crash interrupted, by ``state.HEAL_TABLE``. Returns what was done (for the
        log)."""
        stage, operation = self._state.stage(), self._state.operation()
        action = heal_action(self._situation(stage, operation))
        if action is Heal.NOTHING or action is Heal.RESET:
            if action is Heal.RESET:
                self._state.update(stage=Stage.IDLE)
                self._reporter.resync()
            return "nothing to heal"
        assert operation is not None
        target = operation.target
        if action is Heal.RESTART_DOWNLOAD:
            package = self._state.get("package")
            self._state.update(stage=Stage.IDLE, op=None)
            self.download_package(
                package["version"], package["url"], package["name"], package["size"], package["md5"]
            )
            return "resuming the interrupted package download"
        if action is Heal.GIVE_UP:
            kind = operation.kind
            self._state.finish(
                False, f"operation {kind} interrupted by a restart in stage {stage}", target, Stage.FAILED
            )
            self._reporter.resync()
            return f"gave up on the interrupted {kind} ({stage}); the model path was not touched"
        if action is Heal.RESUME_UPDATE:
            work, done = self._continue_update, f"resuming the interrupted update to {target} ({stage})"
        else:
            work, done = self._deployer.resumption(action, operation)
        self._start("heal", work)
        return done

    def _situation(self, stage: Stage, operation: Operation | None) -> Situation:
        """What ``heal`` decides on; the model is hashed only for a deploy that had begun (it had a phase)."""
        on_disk = OnDisk.UNCHECKED
        if operation is not None and stage == Stage.DEPLOYING and operation.phase is not None:
            on_disk = self._deployer.on_disk(operation)
        return Situation(
            stage=stage,
            kind=operation.kind if operation else None,
            phase=operation.phase if operation else None,
            on_disk=on_disk,
            candidate=bool(operation and operation.candidate and Path(operation.candidate).exists()),
            health_retries_left=(operation.health_attempts if operation else 0) < MAX_HEALTH_ATTEMPTS,
        )

    # ------------------------------------------------------------------ status

    def _bundle_status(self) -> dict[str, Any]:
        """A bundle device's ``/status`` part: the linked version directory and its files (sizes; no hashing)."""
        directory = linked_dir(self.config.model_path)
        if directory is None:
            return {"linked": None, "files": []}
        files = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
            files.append({"path": path.relative_to(directory).as_posix(), "size": path.stat().st_size})
        return {"linked": directory.name, "files": files, "total_size": sum(f["size"] for f in files)}

    def status_view(self) -> StatusView:
        """The stage, whether an operation is running, and the ``/progress`` document; cheap (nothing hashed)."""
        return StatusView(self._state.stage(), self._slots.busy, self._reporter.tope_progress())

    def status(self) -> dict[str, Any]:
        """The ``GET /status`` document: installed version and SHA-256, stage, results, backups, trust state."""
        snapshot = self._state.snapshot()
        return {
            "family": self.config.family,
            "model_path": str(self.config.model_path),
            "installed_version": self._installed.version(self._manifest),
            "installed_sha256": self._installed.sha256(),
            "stage": snapshot["stage"],
            "busy": self._slots.busy,
            "last_result": snapshot["last_result"],
            "history": snapshot["history"],
            "backups": [p.name for p in self._deployer.backups()],
            "patch_formats": {
                "lorien": list(container.READABLE_VERSIONS)
            },  # what a publisher may send (--max-patch-format)
            **({"bundle": self._bundle_status()} if self.config.bundle else {}),
            "rollout": {**self.identity(), **self._control(), "decision": snapshot.get("rollout")},
            "trust": {
                "trusted_root": str(self.config.trusted_root) if self.config.trusted_root else None,
                "tuf": self._tuf_state,
                "insecure_allow_unsigned": self.config.insecure_allow_unsigned,
                "highest_sequence": snapshot["highest_sequence"],
                "accepted_manifest": snapshot["accepted_manifest"],
                "last_refusal": self._last_refusal,
            },
        }


def _check_signed_blob(client: TufClient, path: str, size: int, sha256: str) -> None:
    """A blob the plan downloads must be a signed TUF target of exactly the size and SHA-256 the manifest gives."""
    try:
        info = client.target(path)
    except ManifestError as error:
        raise SignatureError(str(error)) from None
    if info.length != size or info.hashes.get(HASH) != sha256:
        raise SignatureError(
            f"{path}: the manifest says {size} bytes, sha256 {sha256[:16]}…, the signed targets metadata "
            f"{info.length} bytes, sha256 {info.hashes.get(HASH, '?')[:16]}… (a mixed or tampered repository)"
        )
