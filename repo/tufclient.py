"""Reading a lorien repository as a TUF client: python-tuf's ``tuf.ngclient.Updater`` over lorien's fetcher.

:class:`TufClient` is what the device (and ``lorien inspect --verify``) trusts. One client = one ``refresh``
(ngclient's rule): root chain (rotation), timestamp, snapshot, targets — rollback, freeze, mix-and-match and
endless-data defences are python-tuf's. Then::

    target(path)      → the signed TargetFile (length + SHA-256) of a repository path, or ManifestError
    read_target(path) → its bytes, fetched under the hash-prefixed name and checked against that TargetFile

Blobs are not read here: the device's resumable downloader fetches them and checks them against ``target``.

All traffic goes through a lorien :class:`~repo.fetch.Fetcher` (the same transport, limits, deadlines and
retries as every other request; tests inject the in-memory repository): :class:`LorienFetcher` adapts it to
ngclient's ``FetcherInterface`` and reports a missing file as HTTP 404 so the root walk ends. The trusted
metadata ngclient keeps lives in ``metadata_dir`` (the device's state directory); the configured initial root is
the bootstrap on every start, and newer roots already walked are replayed from ``metadata_dir/root_history``.
python-tuf errors become lorien errors of the same cause (``repo.tufmeta.lorien_error``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Root, TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from lorien.repo.errors import LorienError, ManifestError, NotFoundError
from lorien.repo.fetch import Fetcher
from lorien.repo.limits import Limits
from lorien.repo.tufmeta import HASH, METADATA_DIR, ROLES, RoleSummary, hash_prefixed, lorien_error, summarize

_BASE = "lorien-repository:///"  # ngclient builds URLs under this; LorienFetcher maps them back to paths


class LorienFetcher(FetcherInterface):
    """ngclient's network interface, served by a lorien fetcher (documents only: bounded by ngclient's limit)."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher

    def _path(self, url: str) -> str:
        if not url.startswith(_BASE):
            raise tuf_errors.DownloadError(f"{url}: outside the repository")
        return url[len(_BASE) :]

    def _fetch(self, url: str) -> Iterator[bytes]:  # pragma: no cover - download_bytes/download_file are used
        raise tuf_errors.DownloadError(f"{url}: use download_bytes")

    def download_bytes(self, url: str, max_length: int) -> bytes:
        path = self._path(url)
        try:
            return self.fetcher.read_document(path, max_length)
        except NotFoundError as error:
            raise tuf_errors.DownloadHTTPError(str(error), 404) from error
        except LorienError as error:
            raise tuf_errors.DownloadError(str(error)) from error

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self.download_bytes(url, max_length))


def updater_config(limits: Limits) -> UpdaterConfig:
    """lorien's ``[limits]`` as ngclient's hard limits."""
    return UpdaterConfig(
        max_root_rotations=limits.max_root_rotations,
        max_delegations=1,  # the top-level targets only: lorien repositories delegate nothing
        root_max_length=limits.max_root_bytes,
        timestamp_max_length=limits.max_timestamp_bytes,
        snapshot_max_length=limits.max_snapshot_bytes,
        targets_max_length=limits.max_document_bytes,
    )


@dataclass(frozen=True)
class TrustedState:
    """What a refresh established: the versions and keys of each role (for ``/status`` and ``lorien inspect``)."""

    root_version: int
    targets_version: int
    roles: tuple[RoleSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_version": self.root_version,
            "targets_version": self.targets_version,
            "roles": [role.to_dict() for role in self.roles],
        }


class TufClient:
    """One refreshed view of a repository's TUF metadata, starting from ``trusted_root`` (bytes of a root.json)."""

    def __init__(self, fetcher: Fetcher, trusted_root: bytes, metadata_dir: Path, limits: Limits) -> None:
        self.fetcher = fetcher
        self.where = f"{fetcher.location.rstrip('/')}/{METADATA_DIR}"
        metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._updater = Updater(
                str(metadata_dir),
                f"{_BASE}{METADATA_DIR}/",
                target_base_url=_BASE,
                fetcher=LorienFetcher(fetcher),
                config=updater_config(limits),
                bootstrap=trusted_root,
            )
        except (tuf_errors.RepositoryError, ValueError) as error:
            raise ManifestError(f"trusted root: not a valid TUF root.json ({error})") from None
        self._refreshed = False

    def refresh(self) -> TrustedState:
        """Walk the root chain and load timestamp, snapshot and targets (python-tuf's client workflow)."""
        try:
            self._updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as error:
            raise lorien_error(error, self.where) from None
        except OSError as error:
            raise LorienError(f"{self.where}: cannot store trusted metadata: {error}") from None
        self._refreshed = True
        return self.state()

    def state(self) -> TrustedState:
        trusted = self._updater._trusted_set  # python-tuf has no public accessor for it
        root: Root = trusted.root
        signed = {role: trusted.get(role) for role in ROLES if role != "root" and role in trusted}
        return TrustedState(root.version, trusted.targets.version, tuple(summarize(root, signed)))

    def target(self, path: str) -> TargetFile:
        """The signed length and hashes of ``path``; ManifestError if the signed targets do not list it."""
        if not self._refreshed:
            self.refresh()
        try:
            info = self._updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as error:
            raise lorien_error(error, self.where) from None
        if info is None:
            raise ManifestError(
                f"{self.fetcher.location.rstrip('/')}/{path}: not a signed target of this repository (the signed "
                "targets metadata does not list it); is the family published here?"
            )
        if HASH not in info.hashes:
            raise ManifestError(f"{path}: its signed target entry has no {HASH} hash")
        return info

    def read_target(self, path: str) -> bytes:
        """The bytes of a small target (a manifest, index.json), verified against its signed length and hash."""
        info = self.target(path)
        try:
            data = self.fetcher.read_document(hash_prefixed(path, info.hashes[HASH]), info.length)
            info.verify_length_and_hashes(data)
        except tuf_errors.LengthOrHashMismatchError as error:
            raise lorien_error(error, f"{self.fetcher.location.rstrip('/')}/{path}") from None
        return data
