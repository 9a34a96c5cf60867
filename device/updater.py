"""The update pipeline: check → plan → download → verify → apply → deploy (backup, replace, health, rollback).

One operation runs at a time in a background thread; the HTTP API only starts operations and reads progress.
Every stage transition is persisted in ``state.json`` *before* the work it announces, so :meth:`Updater.heal`
can resume after a crash or power cut:

- ``downloading``: ``.part`` files resume (HTTP Range + If-Range); finished blobs are re-verified, not refetched.
- ``applying``: patches are re-applied from the verified blobs (intermediate files are re-verified by SHA-256).
- ``deploying``: the model path's SHA-256 says where the crash happened — still the old model → deploy again;
  already the new model → start the service and run the health check; anything else → restore the backup.
- ``rolling_back``: restore the backup again.

The model path only ever changes by ``os.replace`` of a complete, verified file, so it always holds a complete
old or new model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorien.device import service
from lorien.device.config import DeviceConfig
from lorien.device.plan import Plan, Step, cheapest_plan, identify
from lorien.device.report import Callbacks
from lorien.device.state import (
    APPLYING,
    BUSY_STAGES,
    CHECKING,
    DEPLOYING,
    DOWNLOADING,
    FAILED,
    IDLE,
    ROLLING_BACK,
    StateStore,
)
from lorien.repo.atomic import atomic_writer, fsync_dir
from lorien.repo.download import Downloader, DownloadPolicy, DownloadRequest, Progress
from lorien.repo.engine import apply_patch, require_engine
from lorien.repo.errors import (
    Busy,
    FreshnessError,
    IntegrityError,
    LorienError,
    ManifestError,
    SignatureError,
    UpdateFailed,
)
from lorien.repo.fetch import HttpFetcher
from lorien.repo.hashing import digest_file, iter_file, sha256_file
from lorien.repo.layout import manifest_path
from lorien.repo.manifest import Manifest, parse_manifest, utc_now
from lorien.repo.testhooks import crash_point
from lorien.repo.trust import TrustPolicy, check_freshness, read_verified
from lorien.repo.versions import is_newer

log = logging.getLogger(__name__)

SPACE_MARGIN = 1 << 20
MAX_HEALTH_ATTEMPTS = 2  # a health check interrupted by a crash is retried once, then the update is rolled back
KNOWN_VERSIONS = 50  # sha256 → version of models installed here, so a rollback knows which version it restores


class Updater:
    def __init__(
        self,
        config: DeviceConfig,
        callbacks: Callbacks | None = None,
        downloader_factory: Callable[[Callable[[Progress], None]], Downloader] | None = None,
    ) -> None:
        self.config = config
        self.state = StateStore(config.state_file)
        self.callbacks = callbacks or Callbacks(None)
        self.fetcher = HttpFetcher(config.repo_url, limits=config.limits)
        self.trust = TrustPolicy(config.trusted_keys, config.insecure_allow_unsigned, config.limits)
        self._downloader_factory = downloader_factory or (
            lambda progress: Downloader(policy=DownloadPolicy(limits=config.limits), on_progress=progress)
        )
        self._run_lock = threading.Lock()
        self._digest_cache: tuple[tuple[int, int, int], str] | None = None
        self.last_refusal: dict[str, str] | None = None  # the last manifest refused, for /status
        self._trust_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.progress: dict[str, Any] = {
            "stage": self.state.get("stage"),
            "progress": 0,
            "message": "",
            "error": None,
        }

    # ------------------------------------------------------------------ operation control

    @property
    def busy(self) -> bool:
        return self._run_lock.locked()

    def start(self, kind: str, work: Callable[[], None]) -> None:
        """Run ``work`` in the background, or raise Busy."""
        if not self._run_lock.acquire(blocking=False):
            raise Busy(f"another operation is running ({self.state.get('stage')}); try again when it finishes")

        def run() -> None:
            try:
                work()
            except LorienError as error:
                self._fail(str(error))
            except Exception as error:
                log.exception("operation %s crashed", kind)
                self._fail(f"internal error: {error}")
            finally:
                self._run_lock.release()

        self._thread = threading.Thread(target=run, name=kind, daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _stage(self, stage: str, message: str, percent: float = 0.0) -> None:
        self.state.update(stage=stage)
        self._report(stage, message, percent)

    def _report(self, stage: str, message: str, percent: float, error: str | None = None) -> None:
        self.progress = {"stage": stage, "progress": round(percent, 1), "message": message, "error": error}
        log.info("%s: %s", stage, message)
        self.callbacks.send({"family": self.config.family, **self.progress})

    def _fail(self, message: str) -> None:
        """End the operation as failed; mid-deploy, first put the old model (and its service) back."""
        op = self.state.get("op") or {}
        if self.state.get("stage") == DEPLOYING and op.get("phase") in ("replaced", "health"):
            try:
                self._roll_back(f"deploy failed: {message}")
                return
            except Exception as error:
                message = f"{message}; rollback failed too: {error}"
        elif self.state.get("stage") == DEPLOYING and op.get("phase") in ("stopping", "backed_up"):
            try:  # the model was not replaced: restart the service that was stopped for it
                service.start_service(self.config)
            except LorienError as error:
                message = f"{message}; restarting the service failed too: {error}"
        self.state.finish(False, message, op.get("target"), stage=FAILED)
        self._report(FAILED, "update failed", 0.0, error=message)

    # ------------------------------------------------------------------ check and plan

    def read_manifest(self) -> Manifest:
        """Fetch, verify (signature → parse → family → freshness) and remember the family's manifest.

        The highest sequence accepted is persisted before the manifest is used, so a restart cannot be talked
        into an older one. A refusal is also kept for ``/status`` (``trust.last_refusal``) until a manifest is
        accepted again."""
        try:
            with self._trust_lock:  # check and record as one step: a concurrent check cannot lower the record
                manifest = self._read_verified_manifest()
        except (ManifestError, SignatureError, FreshnessError) as error:
            self.last_refusal = {"message": str(error), "at": utc_now()}
            raise
        self.last_refusal = None
        return manifest

    def _read_verified_manifest(self) -> Manifest:
        path = manifest_path(self.config.family)
        where = f"{self.config.repo_url}{path}"
        document = read_verified(self.fetcher, path, self.trust)
        manifest = parse_manifest(document.data, where, self.config.limits)
        if manifest.family != self.config.family:
            raise ManifestError(
                f"{where}: is for family {manifest.family!r}, this device runs {self.config.family!r}"
            )
        accepted = self._accepted_manifest()
        check_freshness(manifest, accepted.get("sequence", 0), where)
        digest = hashlib.sha256(document.data).hexdigest()
        if manifest.sequence == accepted.get("sequence") and digest != accepted.get("sha256"):
            raise FreshnessError(
                f"{where}: sequence {manifest.sequence} was already accepted with different content "
                "(a forked or replayed manifest); the publisher must publish a higher sequence"
            )
        record = {
            "repo_url": self.config.repo_url,
            "family": self.config.family,
            "sequence": manifest.sequence,
            "sha256": digest,
            "expires": manifest.expires,
            "signed_by": document.keyid,
            "at": utc_now(),
        }
        records = {**(self.state.get("accepted_manifests") or {}), self._trust_key(): record}
        self.state.update(highest_sequence=manifest.sequence, accepted_manifest=record, accepted_manifests=records)
        return manifest

    def _trust_key(self) -> str:
        return f"{self.config.repo_url}#{self.config.family}"

    def _accepted_manifest(self) -> dict[str, Any]:
        """What this device accepted last from the configured repository and family ({} if none). One record
        per repository + family, so moving a device away and back keeps its protection. In signed mode, a
        record of an unsigned manifest (accepted while insecure) does not count: anyone could have pinned it."""
        accepted = (self.state.get("accepted_manifests") or {}).get(self._trust_key()) or {}
        if self.trust.trusted_keys and not self.trust.allow_unsigned and accepted.get("signed_by") is None:
            return {}
        return accepted

    def check(self) -> Plan:
        manifest = self.read_manifest()
        plan = cheapest_plan(
            manifest, identify(self.config.model_path, manifest), max_chain=self.config.limits.max_chain_length
        )
        self._refuse_downgrade(manifest, plan)
        return plan

    def _installed_version(self) -> str | None:
        """The version recorded at the last successful install, if the model file still has that content."""
        installed = self.state.get("installed") or {}
        if installed.get("version") and installed.get("sha256") == self._model_sha256():
            return installed["version"]
        return None

    def _refuse_downgrade(self, manifest: Manifest, plan: Plan) -> None:
        """Never move to an older version automatically, unless the signed manifest says the publisher wants
        that (``allow_downgrade``); an operator can always POST /api/v1.0/rollback."""
        installed = plan.installed.version or self._installed_version()
        if plan.up_to_date or installed is None or manifest.allow_downgrade:
            return
        if is_newer(installed, plan.latest):
            raise FreshnessError(
                f"installed version {installed} is newer than the manifest's latest {plan.latest}; not downgrading "
                "automatically (the publisher can set allow_downgrade, an operator can POST /api/v1.0/rollback)"
            )

    # ------------------------------------------------------------------ manifest-driven update

    def update_latest(self, retry_rejected: bool = True) -> None:
        """Update to the manifest's latest. ``retry_rejected=False`` (periodic checks) skips a target that was
        already deployed here and rolled back, instead of stopping the service for it on every interval."""
        self.start("update-latest", lambda: self._update_latest(retry_rejected))

    def _update_latest(self, retry_rejected: bool = True) -> None:
        self._stage(CHECKING, "reading the manifest")
        plan = self.check()
        if plan.up_to_date:
            self.state.finish(True, f"already up to date ({plan.latest})", plan.latest)
            self._report(IDLE, f"already up to date ({plan.latest})", 100.0)
            return
        rejected = (self.state.get("rejected_targets") or {}).get(plan.steps[-1].target_sha256)
        if rejected and not retry_rejected:
            message = (
                f"latest {plan.latest} was rolled back here at {rejected['at']} ({rejected['reason']}); not "
                "deploying it again automatically: POST /api/v1.0/update-latest retries it"
            )
            self.state.update(stage=IDLE)
            self._report(IDLE, message, 100.0)
            return
        for step in plan.steps:
            if step.kind == "patch":
                require_engine(step.engine or "", f"patch {step.id}")
        self.state.update(
            op={
                "kind": "update-latest",
                "target": plan.latest,
                "target_sha256": plan.steps[-1].target_sha256,
                "steps": [step.to_dict() for step in plan.steps],
                "previous": plan.installed.to_dict(),
            }
        )
        how = " → ".join(f"{s.source}→{s.target}" if s.kind == "patch" else f"full {s.target}" for s in plan.steps)
        log.info("plan: %s, %d bytes instead of %d", how, plan.download_bytes, plan.full_size)
        self._continue_update()

    def _continue_update(self) -> None:
        op = self.state.get("op")
        steps = [Step.from_dict(step) for step in op["steps"]]
        self._stage(DOWNLOADING, f"downloading {len(steps)} file(s)")
        blobs = [self._download_step(index, step, steps) for index, step in enumerate(steps)]
        crash_point("after-download")
        self._stage(APPLYING, "applying")
        candidate = self._apply_steps(steps, blobs)
        self.state.update_op(candidate=str(candidate))
        self._deploy(candidate, op["target"], op["target_sha256"])

    def _blob_file(self, step: Step) -> Path:
        return self.config.tmp_dir / f"{step.sha256}.blob"

    def _download_step(self, index: int, step: Step, steps: list[Step]) -> Path:
        final = self._blob_file(step)
        if final.exists():
            digests = digest_file(final)
            if (digests.size, digests.md5, digests.sha256) == (step.size, step.md5, step.sha256):
                return final
            final.unlink()
        done_before = sum(s.size for s in steps[:index])
        total = sum(s.size for s in steps)
        crashed = False

        def on_progress(progress: Progress) -> None:
            nonlocal crashed
            done = done_before + progress.done
            eta = f", ETA {progress.eta:.0f} s" if progress.eta is not None else ""
            self.progress = {
                "stage": DOWNLOADING,
                "progress": round(100 * done / total, 1),
                "error": None,
                "message": f"{step.kind} {step.target}: {progress.done}/{progress.total} bytes "
                f"({progress.rate / 1e6:.2f} MB/s{eta})",
            }
            if not crashed and progress.done >= progress.total // 2:
                crashed = True
                crash_point("mid-download")

        downloader = self._downloader_factory(on_progress)
        part = final.with_suffix(".part")
        downloader.fetch(DownloadRequest(self.fetcher.url(step.blob), part, step.size, step.md5, step.sha256))
        os.replace(part, final)
        return final

    def _apply_steps(self, steps: list[Step], blobs: list[Path]) -> Path:
        if steps[0].kind == "full":
            return blobs[0]
        current = self.config.model_path
        for index, (step, blob) in enumerate(zip(steps, blobs, strict=True)):
            output = self.config.tmp_dir / f"{step.target_sha256}.model"
            if not (output.exists() and sha256_file(output) == step.target_sha256):
                self._report(APPLYING, f"applying patch {step.source} → {step.target}", 100 * index / len(steps))
                result = apply_patch(current, blob, output, limits=self.config.limits)
                if result.target_sha256 != step.target_sha256:
                    output.unlink(missing_ok=True)
                    raise IntegrityError(
                        f"patch {step.id} produced sha256 {result.target_sha256}, the manifest "
                        f"promises {step.target_sha256}"
                    )
            crash_point("mid-apply")
            current = output
        return current

    # ------------------------------------------------------------------ deploy, health, rollback

    def _deploy(self, candidate: Path, version: str | None, target_sha256: str) -> None:
        config = self.config
        self._stage(DEPLOYING, f"deploying {version}")
        size = candidate.stat().st_size
        current_size = config.model_path.stat().st_size if config.model_path.exists() else 0
        self._require_space(config.model_path.parent, size, "the model directory")
        self._require_space(config.backup_dir, current_size, "the backup directory")
        previous_sha = sha256_file(config.model_path) if config.model_path.exists() else None
        self.state.update_op(
            phase="stopping",
            previous_sha256=previous_sha,
            candidate=str(candidate),
            target=version,
            target_sha256=target_sha256,
        )
        log.info("service: %s", service.stop_service(config))
        backup = None
        if config.model_path.exists():
            counter = max((_backup_order(path)[1] for path in self._backups()), default=0) + 1
            backup = (
                config.backup_dir / f"{counter:08d}-{time.strftime('%Y%m%dT%H%M%S')}-{previous_sha[:16]}.model"
            )
            _copy_atomically(config.model_path, backup)
        self.state.update_op(phase="backed_up", backup=str(backup) if backup else None)
        crash_point("after-backup")
        _replace(candidate, config.model_path)
        self.state.update_op(phase="replaced")
        crash_point("after-replace")
        self._start_and_check(version)

    def _start_and_check(self, version: str | None) -> None:
        config = self.config
        log.info("service: %s", service.start_service(config))
        attempts = (self.state.get("op") or {}).get("health_attempts", 0) + 1
        self.state.update_op(phase="health", health_attempts=attempts)
        self._report(DEPLOYING, "running the health check", 90.0)
        crash_point("health-check")
        healthy, why = service.health_check(config)
        if healthy:
            self._prune_backups()
            digest = sha256_file(config.model_path)
            installed = {"version": version, "sha256": digest}
            known = dict(self.state.get("known_versions") or {})
            if version is not None:
                known.pop(digest, None)
                known[digest] = version
            known = dict(list(known.items())[-KNOWN_VERSIONS:])
            rejected = dict(self.state.get("rejected_targets") or {})
            rejected.pop(digest, None)  # it works now (e.g. a fixed health check): periodic checks may take it
            self.state.update(installed=installed, known_versions=known, rejected_targets=rejected)
            self._clean_tmp()
            self.state.finish(True, f"installed {version}: {why}", version)
            self._report(IDLE, f"installed {version}", 100.0)
            return
        log.error("health check failed after deploying %s: %s; rolling back", version, why)
        self._roll_back(f"health check failed: {why}")

    def _roll_back(self, reason: str) -> None:
        op = self.state.get("op") or {}
        backup = op.get("backup")
        self.state.update(stage=ROLLING_BACK)
        self._report(ROLLING_BACK, f"restoring the previous model ({reason})", 95.0)
        service.stop_service(self.config)
        if backup and Path(backup).exists():
            staged = self.config.tmp_dir / "rollback.model"
            _copy_atomically(Path(backup), staged)
            _replace(staged, self.config.model_path)
        else:
            log.error("no backup to restore; the new model stays in place")
        log.info("service: %s", service.start_service(self.config))
        if op.get("target_sha256"):  # remembered so periodic checks do not deploy it again and again
            rejected = dict(self.state.get("rejected_targets") or {})
            rejected[op["target_sha256"]] = {"version": op.get("target"), "reason": reason, "at": utc_now()}
            self.state.update(rejected_targets=dict(list(rejected.items())[-KNOWN_VERSIONS:]))
        self.state.finish(False, f"rolled back: {reason}", op.get("target"), stage=FAILED)
        self._report(FAILED, "rolled back to the previous model", 100.0, error=reason)

    def _require_space(self, directory: Path, needed: int, what: str) -> None:
        free = shutil.disk_usage(directory).free
        if free < needed + SPACE_MARGIN:
            raise UpdateFailed(
                f"not enough free space in {what} ({directory}): {free} bytes free, {needed + SPACE_MARGIN} needed"
            )

    def _backups(self) -> list[Path]:
        """Backups oldest first, by the counter in their names (not by clock: device clocks jump)."""
        return sorted(self.config.backup_dir.glob("*.model"), key=_backup_order)

    def _prune_backups(self) -> None:
        backups = self._backups()
        for old in backups[: max(0, len(backups) - self.config.keep_backups)]:
            old.unlink(missing_ok=True)

    def _clean_tmp(self) -> None:
        for leftover in self.config.tmp_dir.iterdir():
            if leftover.is_file() and not leftover.name.startswith("package-"):
                leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ TOPE-compatible download / update

    def download_package(self, version: str, url: str, name: str, size: int, md5: str) -> None:
        package = {
            "version": version,
            "url": url,
            "name": name,
            "size": size,
            "md5": md5.lower(),
            "done": False,
            "path": str(self.config.tmp_dir / f"package-{name}"),
        }

        def work() -> None:
            self.state.update(package=package, op={"kind": "download", "target": version})
            self._stage(DOWNLOADING, f"downloading package {name} ({size} bytes)")
            path = Path(package["path"])
            part = path.with_name(path.name + ".part")

            def on_progress(progress: Progress) -> None:
                self.progress = {
                    "stage": DOWNLOADING,
                    "progress": round(progress.percent, 1),
                    "error": None,
                    "message": f"Downloading package... {progress.done / 1e6:.1f} MB / "
                    f"{progress.total / 1e6:.1f} MB",
                }

            self._downloader_factory(on_progress).fetch(DownloadRequest(url, part, size, md5))
            os.replace(part, path)
            self.state.update(package={**package, "done": True})
            self.state.finish(True, f"package {name} for {version} downloaded and MD5-verified", version)
            self._report(IDLE, f"package {name} downloaded", 100.0)

        self.start("download", work)

    def install_package(self, version: str) -> None:
        package = self.state.get("package")
        if not package or not package.get("done") or package.get("version") != version:
            have = f"version {package['version']}" if package and package.get("done") else "nothing"
            raise UpdateFailed(
                f"no downloaded package for version {version!r} (downloaded: {have}); "
                "POST /api/v1.0/download first"
            )
        path = Path(package["path"])

        def work() -> None:
            digests = digest_file(path)
            if (digests.size, digests.md5) != (package["size"], package["md5"]):
                raise IntegrityError(f"package {path.name} changed on disk since it was verified")
            recorded = version
            if self.trust.trusted_keys and not self.trust.allow_unsigned:
                listed = {entry.sha256: entry.version for entry in self.read_manifest().versions}
                recorded = listed.get(digests.sha256, version)  # the signed name, not the client's label
                if digests.sha256 not in listed:
                    raise SignatureError(
                        f"package {path.name} (sha256 {digests.sha256[:16]}…) is not a version in the signed "
                        f"manifest of {self.config.family}; this device only installs what the publisher signed "
                        "(publish the model, or set insecure_allow_unsigned = true)"
                    )
            staged = self.config.tmp_dir / f"{digests.sha256}.model"
            _copy_atomically(path, staged)
            self.state.update(op={"kind": "install", "target": recorded, "target_sha256": digests.sha256})
            self._deploy(staged, recorded, digests.sha256)

        self.start("install", work)

    def rollback(self) -> None:
        backups = self._backups()
        if not backups:
            raise UpdateFailed("no backup to roll back to")
        source = backups[-1]

        def work() -> None:
            staged = self.config.tmp_dir / "manual-rollback.model"
            _copy_atomically(source, staged)
            sha = sha256_file(staged)
            version = (self.state.get("known_versions") or {}).get(sha)  # None: installed before lorien knew it
            self.state.update(op={"kind": "rollback", "target": version, "target_sha256": sha})
            self._deploy(staged, version, sha)  # the current model becomes the newest backup

        self.start("rollback", work)

    # ------------------------------------------------------------------ self-healing

    def heal(self) -> str:
        """Finish or undo whatever a crash interrupted. Returns what was done (for the log)."""
        snapshot = self.state.snapshot()
        stage, op = snapshot["stage"], snapshot["op"]
        if stage not in BUSY_STAGES or not op:
            if stage in BUSY_STAGES:
                self.state.update(stage=IDLE)
            return "nothing to heal"
        kind = op.get("kind")
        if stage == ROLLING_BACK:
            self.start("heal", lambda: self._roll_back("interrupted rollback resumed after restart"))
            return "resuming an interrupted rollback"
        if stage == DEPLOYING and op.get("phase"):
            current = sha256_file(self.config.model_path) if self.config.model_path.exists() else None
            if current == op.get("target_sha256") and op.get("phase") in ("replaced", "health"):
                if op.get("health_attempts", 0) >= MAX_HEALTH_ATTEMPTS:
                    # the device died during the health check more than once: the new model is the suspect
                    self.start("heal", lambda: self._roll_back("the device restarted during every health check"))
                    return "new model in place but every health check was interrupted: rolling back"
                self.start("heal", lambda: self._start_and_check(op.get("target")))
                return "new model in place: starting the service and re-running the health check"
            candidate = Path(op.get("candidate", ""))
            if current == op.get("previous_sha256") and candidate.is_file():
                self.start("heal", lambda: self._deploy(candidate, op.get("target"), op["target_sha256"]))
                return "old model still in place: deploying again"
            self.start("heal", lambda: self._roll_back("deploy interrupted in an unknown state"))
            return "unknown model state after a crash: restoring the backup"
        if kind == "update-latest" and stage in (DOWNLOADING, APPLYING, DEPLOYING):
            self.start("heal", self._continue_update)
            return f"resuming the interrupted update to {op.get('target')} ({stage})"
        if kind == "download" and stage == DOWNLOADING:
            package = snapshot["package"]
            self.state.update(stage=IDLE, op=None)
            self.download_package(
                package["version"], package["url"], package["name"], package["size"], package["md5"]
            )
            return "resuming the interrupted package download"
        self.state.finish(
            False, f"operation {kind} interrupted by a restart in stage {stage}", op.get("target"), stage=FAILED
        )
        return f"gave up on the interrupted {kind} ({stage}); the model path was not touched"

    # ------------------------------------------------------------------ status

    def _model_sha256(self) -> str | None:
        """SHA-256 of the model file, re-hashed only when its inode, size or mtime changed (``/status`` is polled;
        hashing a large model on every request would make polling cost a full read each time)."""
        try:
            stat = self.config.model_path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._digest_cache is None or self._digest_cache[0] != key:
            self._digest_cache = (key, sha256_file(self.config.model_path))
        return self._digest_cache[1]

    def status(self) -> dict[str, Any]:
        snapshot = self.state.snapshot()
        return {
            "family": self.config.family,
            "model_path": str(self.config.model_path),
            "installed_version": self._installed_version(),
            "installed_sha256": self._model_sha256(),
            "stage": snapshot["stage"],
            "busy": self.busy,
            "last_result": snapshot["last_result"],
            "history": snapshot["history"],
            "backups": [p.name for p in self._backups()],
            "trust": {
                "trusted_keys": [key.keyid for key in self.config.trusted_keys],
                "insecure_allow_unsigned": self.config.insecure_allow_unsigned,
                "highest_sequence": snapshot["highest_sequence"],
                "accepted_manifest": snapshot["accepted_manifest"],
                "last_refusal": self.last_refusal,
            },
        }


def _backup_order(path: Path) -> tuple[int, int, str]:
    """Sort key: numbered backups (``00000012-…``) by number, after any older clock-named ones."""
    match = re.match(r"(\d{8})-", path.name)
    return (1, int(match.group(1)), path.name) if match else (0, 0, path.name)


def _copy_atomically(source: Path, destination: Path) -> None:
    with atomic_writer(destination) as sink:
        for chunk in iter_file(source):
            sink.write(chunk)


def _replace(candidate: Path, model_path: Path) -> None:
    """Put ``candidate`` at ``model_path`` by one rename in the model's directory (copying it there first when
    the two are on different file systems), then fsync the directory. The candidate's data is fsynced first:
    downloads are only flushed, and a rename of unsynced data can surface as a truncated file after power loss."""
    with open(candidate, "rb") as handle:
        os.fsync(handle.fileno())
    try:
        os.replace(candidate, model_path)
    except OSError as error:
        if error.errno != 18:  # EXDEV
            raise
        staged = model_path.with_name(f".{model_path.name}.incoming")
        _copy_atomically(candidate, staged)
        os.replace(staged, model_path)
        candidate.unlink(missing_ok=True)
    fsync_dir(model_path.parent)
