"""Bundle families on the device: ``model_path`` is a symbolic link to ``<model_path>.versions/<version>-<digest>/``
and the application reads its files through it; a new version is assembled beside the others and the link is
switched by one atomic rename, so the application always sees one complete version, never a mix.

Data flow of one bundle update (``Updater`` calls these when ``config.bundle`` is set)::

    manifest (bundle versions, file_patches) + the linked directory
      ─▶ identify_bundle: the linked directory's files hashed → bundle digest → version
      ─▶ bundle_plan: per target file the cheapest of: keep (a file with that SHA-256 is installed: 0 bytes),
         the file's patch from the installed version, or the full file — one Step per file (``Step.path``)
      ─▶ steps.download_steps (the same resumable, verified downloads as a single file)
      ─▶ assemble: <versions>/.staging-<digest>/ built file by file (kept files hard-linked or copied, patches
         applied to the installed file, full files copied), every file's size and SHA-256 checked, the bundle
         digest checked, fsynced, renamed to <versions>/<version>-<digest16>/ (the candidate)
      ─▶ BundleDeployer.deploy: free space was checked for the whole bundle before assembling; stop the
         service ─▶ phase backed_up (the backup *is* the previous version directory, nothing is copied)
         ─▶ a new link ``.<name>.incoming`` → candidate, ``os.replace`` onto ``model_path``, fsync the directory
         ─▶ phase replaced ─▶ start, health check ─▶ keep, or switch the link back (rollback)

Version directories are never modified once renamed into place, so they double as backups: ``keep_backups``
counts the previous version directories kept besides the linked one (newest by the time they were last
linked). A crash at any point leaves the link on the old or the new directory; ``Updater.heal`` decides by the
link's target (``on_disk``) with the same HEAL_TABLE as a single file.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from lorien.device import service
from lorien.device.deploy import SPACE_MARGIN, Deployer
from lorien.device.installed import InstalledModel
from lorien.device.plan import Installed, Plan, Step, applicable
from lorien.device.report import Reporter
from lorien.device.state import Kind, OnDisk, Operation, Phase, Stage
from lorien.repo.atomic import fsync_dir
from lorien.repo.bundle import BundleFile, bundle_digest, describe_directory
from lorien.repo.engine import apply_patch, available_engines
from lorien.repo.errors import BadInputError, IntegrityError, UpdateFailed
from lorien.repo.hashing import digest_file
from lorien.repo.limits import Limits
from lorien.repo.manifest import Manifest
from lorien.repo.testhooks import crash_point

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


# ------------------------------------------------------------------------------------------------ layout


def versions_dir(model_path: Path) -> Path:
    """Where a bundle family's version directories live: beside the link, on the same file system."""
    return model_path.with_name(f"{model_path.name}.versions")


def version_dir_name(version: str, digest: str) -> str:
    return f"{version}-{digest[:16]}"


def linked_dir(model_path: Path) -> Path | None:
    """The version directory ``model_path`` links to, or None (no link yet, or a dangling one)."""
    if not model_path.is_symlink():
        return None
    target = model_path.parent / os.readlink(model_path)
    return target if target.is_dir() else None


def check_link(model_path: Path) -> None:
    """A bundle family's ``model_path`` must be a link to a directory, or not exist yet."""
    if model_path.exists() and not model_path.is_symlink():
        kind = "a directory" if model_path.is_dir() else "a file"
        raise BadInputError(
            f"model_path {model_path} is {kind}; for a bundle family (bundle = true) it must be a symbolic link "
            "that lorien manages (move the files into a version and let the first update create the link)"
        )


def switch_link(model_path: Path, directory: Path) -> None:
    """Point ``model_path`` at ``directory`` by renaming a new link over it (atomic), then fsync the directory."""
    incoming = model_path.with_name(f".{model_path.name}.incoming")
    incoming.unlink(missing_ok=True)
    os.symlink(os.path.relpath(directory, model_path.parent), incoming)
    os.replace(incoming, model_path)
    fsync_dir(model_path.parent)
    os.utime(directory)  # "last linked": the order in which old versions are pruned


# ------------------------------------------------------------------------------------------------ identity


def _described(directory: Path, limits: Limits) -> list[BundleFile] | None:
    try:
        return describe_directory(directory, limits)
    except BadInputError:
        return None


class BundleInstalled(InstalledModel):
    """The installed bundle's digest (in place of a file's SHA-256), cached per linked directory: a version
    directory never changes once it is linked."""

    def __init__(self, model_path: Path, state, limits: Limits) -> None:
        super().__init__(model_path, state)
        self._limits = limits
        self._digests: dict[Path, str | None] = {}

    def sha256(self) -> str | None:
        directory = linked_dir(self._model_path)
        if directory is None:
            return None
        if directory not in self._digests:
            files = _described(directory, self._limits)
            self._digests[directory] = bundle_digest(files) if files else None
        return self._digests[directory]

    def version_of(self, sha256: str | None, manifest: Manifest | None) -> str | None:
        found = super().version_of(sha256, None)
        if found or manifest is None or sha256 is None:
            return found
        listed = [e.version for e in manifest.versions if e.bundle is not None and e.bundle.digest == sha256]
        return listed[0] if listed else None


def identify_bundle(model_path: Path, manifest: Manifest, limits: Limits) -> tuple[Installed, list[BundleFile]]:
    """The installed bundle (version by digest; ``sha256`` holds the digest) and its files."""
    directory = linked_dir(model_path)
    files = _described(directory, limits) if directory is not None else None
    if not files:
        return Installed(None, None, 0, None), []
    digest = bundle_digest(files)
    size = sum(f.size for f in files)
    for entry in manifest.versions:
        if entry.bundle is not None and entry.bundle.digest == digest:
            return Installed(entry.version, digest, size, None), files
    return Installed(None, digest, size, None), files


# ------------------------------------------------------------------------------------------------ planning


def bundle_plan(
    manifest: Manifest, installed: Installed, files: list[BundleFile], target: str | None = None
) -> Plan:
    """One step per file of the bundle ``target`` (default: latest; a rollout decides it): keep, patch (from
    the installed version, an engine and container version this device has) or full, whichever downloads fewest bytes."""
    goal = manifest.version(target or manifest.latest)
    if goal.bundle is None:
        raise UpdateFailed(
            f"version {goal.version} of {manifest.family} is a single file, but this device is configured for a "
            "bundle family (bundle = true); fix the device configuration or publish a version directory"
        )
    if installed.sha256 == goal.bundle.digest:
        return Plan(installed, goal.version, (), goal.bundle.total_size)
    have = {f.sha256: f.path for f in files}
    engines = set(available_engines())
    patches = {
        p.path: p
        for p in manifest.file_patches
        if p.source == installed.version and p.target == goal.version and applicable(p, engines)
    }
    steps = []
    for entry in goal.bundle.files:
        patch = patches.get(entry.path)
        how: dict[str, Any]
        if entry.sha256 in have:
            how = {"kind": "keep", "blob": "", "size": 0, "md5": entry.md5, "sha256": entry.sha256}
            how["source_path"] = have[entry.sha256]
        elif patch is not None and patch.size < entry.size and patch.source_sha256 in have:
            how = {
                "kind": "patch",
                "blob": patch.blob,
                "size": patch.size,
                "md5": patch.md5,
                "sha256": patch.sha256,
            }
            how.update(source=patch.source, source_sha256=patch.source_sha256, engine=patch.engine, id=patch.id)
            how["source_path"] = have[patch.source_sha256]
        else:
            how = {
                "kind": "full",
                "blob": entry.blob,
                "size": entry.size,
                "md5": entry.md5,
                "sha256": entry.sha256,
            }
        steps.append(Step(target=goal.version, target_sha256=entry.sha256, path=entry.path, **how))
    return Plan(installed, goal.version, tuple(steps), goal.bundle.total_size)


def assembly_bytes(steps: list[Step]) -> int:
    """Bytes the new version directory needs on disk (kept files are hard links when the file system allows)."""
    return sum(0 if step.kind == "keep" else _target_size(step) for step in steps)


def _target_size(step: Step) -> int:
    return step.size if step.kind == "full" else 0  # a patch's result size is checked by apply_patch itself


# ------------------------------------------------------------------------------------------------ assembly


def assemble(
    steps: list[Step],
    blobs: dict[str, Path],
    current: Path | None,
    version: str,
    digest: str,
    model_path: Path,
    limits: Limits,
    reporter: Reporter,
) -> Path:
    """The verified directory of bundle ``version`` with ``digest`` (reused when it is already there and whole);
    everything it needs is in ``steps`` and ``blobs``, so a resumed update needs no manifest."""
    root = versions_dir(model_path)
    root.mkdir(exist_ok=True)
    final = root / version_dir_name(version, digest)
    if final.is_dir():
        files = _described(final, limits)
        if files and bundle_digest(files) == digest:
            return final
        shutil.rmtree(final)  # not what its name says (e.g. touched by hand): assembled again
    staging = root / f"{STAGING_PREFIX}{digest[:16]}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for index, step in enumerate(steps):
            assert step.path is not None
            reporter.report(
                Stage.APPLYING, f"assembling {version}: {step.kind} {step.path}", 100 * index / len(steps)
            )
            target = staging / step.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if step.kind == "keep":
                assert current is not None and step.source_path is not None
                _link_or_copy(current / step.source_path, target)
            elif step.kind == "patch":
                assert current is not None and step.source_path is not None
                apply_patch(current / step.source_path, blobs[step.sha256], target, limits=limits)
            else:
                _copy(blobs[step.sha256], target)
            digests = digest_file(target)
            if digests.sha256 != step.target_sha256:
                raise IntegrityError(
                    f"{step.path} of {version} has sha256 {digests.sha256}, the manifest promises "
                    f"{step.target_sha256}"
                )
            crash_point("mid-assemble")
        files = describe_directory(staging, limits)
        if bundle_digest(files) != digest:
            raise IntegrityError(f"the assembled {version} is not the bundle the manifest lists")
        for directory, _dirs, _files in os.walk(staging):
            fsync_dir(Path(directory))
        os.replace(staging, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        _copy(source, target)


def _copy(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "xb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())


# ------------------------------------------------------------------------------------------------ deploying


class BundleDeployer(Deployer):
    """:class:`Deployer` for a link to version directories: the backup is the previous directory, deploying and
    rolling back are link switches, pruning removes old directories."""

    def __init__(self, config, state, reporter: Reporter, installed: BundleInstalled) -> None:
        super().__init__(config, state, reporter)
        self._installed_bundle = installed

    def require_space(self, needed: int) -> None:
        root = versions_dir(self.config.model_path)
        free = shutil.disk_usage(root if root.exists() else self.config.model_path.parent).free
        if free < needed + SPACE_MARGIN:
            raise UpdateFailed(
                f"not enough free space for the bundle ({root}): {free} bytes free, {needed + SPACE_MARGIN} needed"
            )

    def deploy(self, candidate: Path, version: str | None, target_sha256: str) -> None:
        config = self.config
        self._reporter.enter(Stage.DEPLOYING, f"deploying {version}")
        check_link(config.model_path)
        if not candidate.is_dir():
            raise UpdateFailed(f"the assembled version directory {candidate} is missing")
        current = linked_dir(config.model_path)
        self._state.update_op(
            phase=Phase.STOPPING,
            previous_sha256=self._installed_bundle.sha256(),
            candidate=str(candidate),
            target=version,
            target_sha256=target_sha256,
        )
        if (stopped := service.stop_service(config)) != service.NO_SERVICE:
            log.info("service: %s", stopped)
        self._state.update_op(phase=Phase.BACKED_UP, backup=str(current) if current is not None else None)
        crash_point("after-backup")
        switch_link(config.model_path, candidate)
        self._state.update_op(phase=Phase.REPLACED)
        crash_point("after-replace")
        self.start_and_check(version)

    def _restore(self, backup: Path) -> None:
        switch_link(self.config.model_path, backup)

    def roll_back(self, reason: str) -> None:
        """Switch the link back; the version that failed is removed (unless it was itself an older version an
        operator rolled back to), so that a later ``POST /rollback`` never links it."""
        operation = self._state.operation()
        super().roll_back(reason)
        if operation is None or operation.kind == Kind.ROLLBACK or not operation.candidate:
            return
        failed, linked = Path(operation.candidate), linked_dir(self.config.model_path)
        if failed.is_dir() and (linked is None or linked.resolve() != failed.resolve()):
            shutil.rmtree(failed, ignore_errors=True)

    def on_disk(self, operation: Operation) -> OnDisk:
        current = linked_dir(self.config.model_path)
        current = current.resolve() if current is not None else None
        new = operation.candidate is not None and current == Path(operation.candidate).resolve()
        old = (operation.backup is not None and current == Path(operation.backup).resolve()) or (
            operation.backup is None and current is None
        )
        return OnDisk.SAME if new and old else OnDisk.NEW if new else OnDisk.OLD if old else OnDisk.OTHER

    def backups(self) -> list[Path]:
        """Previous version directories, oldest first (by when they were last linked)."""
        root = versions_dir(self.config.model_path)
        if not root.is_dir():
            return []
        current = linked_dir(self.config.model_path)
        current = current.resolve() if current is not None else None
        found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() != current]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def prune_backups(self) -> None:
        for directory in self.backups()[: -self.config.keep_backups or None]:
            shutil.rmtree(directory, ignore_errors=True)
        root = versions_dir(self.config.model_path)
        for leftover in root.glob(f"{STAGING_PREFIX}*") if root.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)

    def installed_digest(self) -> str | None:
        return self._installed_bundle.sha256()
