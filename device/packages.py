"""The TOPE half of the device updater: ``POST /api/v1.0/download`` downloads a package (resumable, size + MD5),
``POST /api/v1.0/update`` deploys it — in signed mode only a model the signed manifest lists, under the same
downgrade rule as ``update-latest``. On a bundle family (``bundle = true``) the package is a ``.zip`` whose files
are extracted safely (``repo.archive``: zip-slip, links, duplicates, zip bombs refused, nothing left behind) into
a new version directory and deployed as one bundle; in signed mode its bundle digest must be a signed version's.

:class:`TopePackages` is mixed into :class:`~lorien.device.updater.Updater` and uses its pipeline pieces (the
state store, the reporter, the downloader, the deployer, the operation slots); it holds no state of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lorien.device.bundles import STAGING_PREFIX, version_dir_name, versions_dir
from lorien.device.state import Kind, Operation, Stage
from lorien.repo.archive import extract_package, is_zip_package
from lorien.repo.bundle import bundle_digest
from lorien.repo.download import DownloadRequest, Progress
from lorien.repo.errors import IntegrityError, PackageError, SignatureError, UpdateFailed
from lorien.repo.hashing import digest_file
from lorien.repo.manifest import Manifest, utc_now


class TopePackages:
    def download_package(self, version: str, url: str, name: str, size: int, md5: str) -> None:
        """Download a TOPE package in the background (resumable, size + MD5 checked).

        Raises:
            Busy: another operation is running.
        """
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
            installed = self._installed.version(self._manifest)
            operation = Operation(
                Kind.DOWNLOAD,
                target=version,
                started_at=utc_now(),
                from_version=installed,
                download_bytes=size,
                full_size=size,
            )
            self._state.begin(operation, package=package)
            path = Path(package["path"])
            part = path.with_name(path.name + ".part")
            self._drop_other_parts({part.name})

            def on_progress(progress: Progress) -> None:
                self._reporter.show(
                    Stage.DOWNLOADING,
                    f"Downloading package... {progress.done / 1e6:.1f} MB / {progress.total / 1e6:.1f} MB",
                    min(progress.percent, 99.0),  # 100 only once the MD5 is verified (toInstall)
                )

            self._downloader(on_progress).fetch(DownloadRequest(url, part, size, md5))
            os.replace(part, path)
            self._state.update(package={**package, "done": True})
            self._state.finish(True, f"package {name} for {version} downloaded and MD5-verified", version)
            self._reporter.report(Stage.IDLE, f"package {name} downloaded", 100.0)

        self._start(Kind.DOWNLOAD, work, (Stage.DOWNLOADING, f"downloading package {name} ({size} bytes)"))

    def install_package(self, version: str, force: bool = False) -> None:
        """Deploy the TOPE package downloaded for ``version`` in the background; in signed mode only a model
        that the signed manifest lists. A version older than the installed one is refused (the downgrade rule of
        ``update-latest``) unless the signed manifest has ``allow_downgrade`` or the operator sends ``force``.
        The package is deleted when the operation ends, installed or not.

        Raises:
            UpdateFailed: no package was downloaded for ``version``.
            Busy: another operation is running.
        """
        package = self._state.get("package")
        if not package or not package.get("done") or package.get("version") != version:
            have = f"version {package['version']}" if package and package.get("done") else "nothing"
            raise UpdateFailed(
                f"no downloaded package for version {version!r} (downloaded: {have}); "
                "POST /api/v1.0/download first"
            )
        path = Path(package["path"])
        if self.config.bundle:
            self._start(
                Kind.INSTALL,
                lambda: self._install_bundle_package(package, version, force),
                (Stage.DEPLOYING, f"installing the package for {version}"),
            )
            return

        def work() -> None:
            started = utc_now()
            try:
                digests = digest_file(path)
                if (digests.size, digests.md5) != (package["size"], package["md5"]):
                    raise IntegrityError(f"package {path.name} changed on disk since it was verified")
                recorded, manifest = self._signed_name(path.name, digests.sha256, version)
                allowed = force or bool(manifest and manifest.allow_downgrade)
                installed = self._installed.version(manifest or self._manifest)
                self._refuse_downgrade(installed, recorded, allowed, "package version")
                staged = self._deployer.stage_copy(path, f"{digests.sha256}.model")
            finally:
                self._state.update(package=None)  # used once: the package goes with the operation's tmp files
            operation = Operation(
                Kind.INSTALL, recorded, digests.sha256, started_at=started, from_version=installed
            )
            self._state.begin(operation)
            self._deployer.deploy(staged, recorded, digests.sha256)

        self._start(Kind.INSTALL, work, (Stage.DEPLOYING, f"installing the package for {version}"))

    def _install_bundle_package(self, package: dict, version: str, force: bool) -> None:
        """A zip package for a bundle family: extracted safely (``repo.archive``) into a new version directory,
        identified by its bundle digest (in signed mode it must be a bundle version of the signed manifest),
        then deployed by switching the link, like an update."""
        path = Path(package["path"])
        started = utc_now()
        try:
            if not is_zip_package(package["name"]):
                raise PackageError(
                    f"package {package['name']} is not a .zip package; this device deploys bundles (bundle = true): "
                    "send the version's files as one zip"
                )
            digests = digest_file(path)
            if (digests.size, digests.md5) != (package["size"], package["md5"]):
                raise IntegrityError(f"package {path.name} changed on disk since it was verified")
            root = versions_dir(self.config.model_path)
            root.mkdir(exist_ok=True)
            staging = root / f"{STAGING_PREFIX}package-{digests.sha256[:16]}"
            shutil.rmtree(staging, ignore_errors=True)
            files = extract_package(path, staging, self.config.limits)
            try:
                digest = bundle_digest(files)
                recorded, manifest = self._signed_bundle(path.name, digest, version)
                allowed = force or bool(manifest and manifest.allow_downgrade)
                installed = self._installed.version(manifest or self._manifest)
                self._refuse_downgrade(installed, recorded, allowed, "package version")
                final = root / version_dir_name(recorded, digest)
                if final.is_dir():
                    shutil.rmtree(final)  # the same name: assembled again from this package
                os.replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            self._state.update(package=None)
        operation = Operation(Kind.INSTALL, recorded, digest, started_at=started, from_version=installed)
        self._state.begin(operation)
        self._deployer.deploy(final, recorded, digest)

    def _signed_bundle(self, name: str, digest: str, label: str) -> tuple[str, Manifest | None]:
        """Like :meth:`_signed_name`, by bundle digest: in signed mode the bundle version with this digest."""
        if not self._trust.signed:
            return label, None
        manifest = self._read_manifest()
        listed = {e.bundle.digest: e.version for e in manifest.versions if e.bundle is not None}
        if digest not in listed:
            raise SignatureError(
                f"package {name} (bundle digest {digest[:16]}…) is not a bundle version in the signed manifest of "
                f"{self.config.family}; this device only installs what the publisher signed"
            )
        return listed[digest], manifest

    def _signed_name(self, name: str, sha256: str, label: str) -> tuple[str, Manifest | None]:
        """The version a package is, and the manifest that says so: in signed mode the name the signed manifest
        gives its SHA-256 (refused when it lists none), else the client's label and no manifest."""
        if not self._trust.signed:
            return label, None
        manifest = self._read_manifest()
        listed = {entry.sha256: entry.version for entry in manifest.versions}
        if sha256 not in listed:
            raise SignatureError(
                f"package {name} (sha256 {sha256[:16]}…) is not a version in the signed manifest of "
                f"{self.config.family}; this device only installs what the publisher signed (publish the model, "
                "or set insecure_allow_unsigned = true)"
            )
        return listed[sha256], manifest
