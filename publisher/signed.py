"""The repository's metadata — ``<family>/manifest.json``, ``index.json``, their ``.sig`` files and the HTML
pages — written so that a device never sees a document without its signature or a signature it must refuse.

:class:`SignedMetadataWriter` is the metadata half of :class:`~publisher.writer.RepositoryWriter` (which adds
blobs and patches); callers hold the repository's writer lock. Its jobs, in the order a publish meets them:

- ``check_signing_mode``: with no ``--sign-key``, refuse a repository that already has signatures;
- ``read_manifest`` / ``all_manifests``: read existing manifests, and with keys ``check_untampered`` refuses
  one that is neither validly signed by them nor what an interrupted run of ours was signing;
- ``write_manifest``: bump the sequence, stamp ``generated_at`` and ``expires``, then ``write_signed`` (the
  document, then its signature, a hidden ``.<name>.signing`` marker bridging the two);
- ``renew_and_index``: at the end of every publish (and on watch's timer) re-sign or renew every manifest whose
  expiry is half gone or whose signature is stale, then the root page and, very last, ``index.json``.

Crash points (``repo/testhooks.py``), in write order: ``manifest``, ``signature``, ``html``, ``index``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lorien.publisher.html import render_family_page, render_root_page
from lorien.publisher.options import PublishOptions
from lorien.repo.atomic import atomic_write_bytes, fsync_dir, write_if_changed
from lorien.repo.errors import BadInputError, ManifestError, SignatureError
from lorien.repo.layout import BLOB_DIR, HTML_FILE, INDEX_FILE, MANIFEST_FILE, manifest_path
from lorien.repo.manifest import MAX_SEQUENCE, Index, IndexEntry, Manifest, format_timestamp, parse_manifest
from lorien.repo.signing import (
    SIGNATURE_SUFFIX,
    TrustedKey,
    sign_document,
    signature_path,
    verify_document,
)
from lorien.repo.testhooks import crash_point


class SignedMetadataWriter:
    """Writes and checks the signed metadata and the pages of one repository. Callers hold the writer lock."""

    def __init__(self, root: Path, options: PublishOptions | None = None) -> None:
        self.root = root
        self.options = options or PublishOptions()
        self._own_keys = tuple(
            TrustedKey(key.private.public_key(), key.keyid, key.source) for key in self.options.sign_keys
        )
        self._was_signed: bool | None = None

    # -- signatures and expiry -----------------------------------------------------------------------------------
    def check_signing_mode(self) -> None:
        """Refuse to write unsigned metadata into a signed repository (devices would reject it)."""
        if self.options.sign_keys:
            return
        signed = next(self._signature_files(), None)
        if signed is not None:
            raise BadInputError(
                f"{self.root}: repository is signed ({signed.name} exists) but no --sign-key was given; pass "
                f"the publisher key, or delete the {SIGNATURE_SUFFIX} files to publish unsigned on purpose"
            )

    def write_signed(self, relative: str, data: bytes) -> bool:
        """Write a metadata document, then its signature (ed25519 is deterministic: unchanged bytes and keys give
        the same .sig, so nothing is rewritten; a missing or stale .sig, e.g. after a crash or a key change, is
        rewritten). While the two disagree on disk, a hidden ``.<name>.signing`` marker holds the SHA-256 of
        the bytes being signed, so the next run can tell its own interrupted write from someone else's edit."""
        if not self.options.sign_keys:
            return write_if_changed(self.root / relative, data)
        document, signature_file = self.root / relative, self.root / signature_path(relative)
        signature = sign_document(data, relative, self.options.sign_keys)
        document_current = _read_or_none(document) == data
        signature_current = _read_or_none(signature_file) == signature
        if document_current and signature_current:
            return False
        marker = self._signing_marker(relative)
        atomic_write_bytes(marker, hashlib.sha256(data).hexdigest().encode())
        if not document_current:
            atomic_write_bytes(document, data)
        crash_point("signature")
        if not signature_current:
            atomic_write_bytes(signature_file, signature)
        marker.unlink()
        fsync_dir(marker.parent)
        return True

    def _signing_marker(self, relative: str) -> Path:
        path = self.root / relative
        return path.with_name(f".{path.name}.signing")

    def check_untampered(self, relative: str, data: bytes) -> None:
        """With signing keys, existing metadata must carry a valid signature by one of them — or be exactly what
        an interrupted run of ours was signing. Anything else was changed by someone else, and re-signing it
        would bless their change (e.g. an extra patch entry or ``allow_downgrade`` added on a web server)."""
        if not self.options.sign_keys or not self._repository_was_signed():
            return
        try:
            verify_document(data, relative, (self.root / signature_path(relative)).read_bytes(), self._own_keys)
            return
        except FileNotFoundError:
            reason = "it has no signature"
        except SignatureError as error:
            reason = str(error)
        if _read_or_none(self._signing_marker(relative)) == hashlib.sha256(data).hexdigest().encode():
            return  # our own write, interrupted between the document and its signature
        raise SignatureError(
            f"{self.root / relative}: not signed by the given --sign-key ({reason}). Either it was changed after "
            "lorien signed it — restore it from a backup — or it was signed with another key: after a key "
            "rotation, publish once with both the old and the new --sign-key"
        )

    def _repository_was_signed(self) -> bool:
        """Whether the repository had signatures when this writer first looked (a first signed publish of an
        unsigned repository signs its existing manifests as they are)."""
        if self._was_signed is None:
            self._was_signed = next(self._signature_files(), None) is not None
        return self._was_signed

    def _signature_files(self) -> Iterator[Path]:
        """``index.json.sig`` and every ``<family>/manifest.json.sig`` there is."""
        yield from self.root.glob(f"*{SIGNATURE_SUFFIX}")
        yield from self.root.glob(f"*/*{SIGNATURE_SUFFIX}")

    def needs_refresh(self, manifest: Manifest, now: datetime) -> bool:
        """True when the manifest's expiry is not what the options want: within half the validity period of
        expiring (so a watcher re-signs long before devices refuse it), or set differently."""
        validity = self.options.validity
        expires = manifest.expires_at()
        if validity is None or expires is None:
            return (validity is None) != (expires is None)
        remaining = expires - now
        return remaining < validity / 2 or remaining > validity + timedelta(minutes=1)

    def refresh_expiring(self, manifests: list[Manifest]) -> tuple[list[Manifest], list[str]]:
        """Re-write (new expiry, next sequence, new signature) every manifest that needs it, and re-sign any whose
        signature is missing or stale; families whose model directory is gone are included. Returns the
        manifests as they now are, and the families whose metadata was rewritten."""
        current, refreshed = [], []
        now = datetime.now(UTC)
        for manifest in manifests:
            if self.needs_refresh(manifest, now) or manifest.sequence < self.options.min_sequence:
                manifest, _ = self.write_manifest(manifest, manifest, force=True)
                refreshed.append(manifest.family)
            elif self.write_signed(manifest_path(manifest.family), manifest.to_bytes()):
                refreshed.append(manifest.family)
            current.append(manifest)
        return current, refreshed

    def renew_and_index(self) -> tuple[list[str], bool, list[str]]:
        """The end of every publish (and watch's renewal timer): read every manifest once, renew what needs it,
        then write the root page and index.json. Returns (renewed families, index written, problems)."""
        manifests, problems = self.all_manifests()
        manifests, refreshed = self.refresh_expiring(manifests)
        index_written, _ = self.write_index((manifests, problems))
        return refreshed, index_written, problems

    # -- documents ---------------------------------------------------------------------------------------------
    def read_manifest(self, family: str) -> Manifest | None:
        path = self.root / manifest_path(family)
        if not path.exists():
            return None
        data = path.read_bytes()
        self.check_untampered(manifest_path(family), data)
        try:
            return parse_manifest(data, str(path))
        except ManifestError as error:
            raise ManifestError(
                f"{error}; the existing manifest is damaged: restore it from a backup, or remove it and publish "
                "with --min-sequence above the highest sequence devices accepted (they refuse a restart at 1)"
            ) from None

    def write_manifest(
        self, manifest: Manifest, previous: Manifest | None, force: bool = False
    ) -> tuple[Manifest, bool]:
        """Write unless only bookkeeping would change and the expiry is still fine; bump the sequence when
        writing. The signature is (re)written either way, so a crash between the two writes heals here."""
        now = datetime.now(UTC)
        relative = manifest_path(manifest.family)
        if not force and manifest.same_content(previous):
            assert previous is not None
            if not self.needs_refresh(previous, now) and previous.sequence >= self.options.min_sequence:
                resigned = self.write_signed(relative, previous.to_bytes())  # the bytes that were checked
                return previous, resigned  # a repaired or rotated signature is a change mirrors must copy
        validity = self.options.validity
        sequence = max((previous.sequence + 1) if previous else 1, self.options.min_sequence)
        if sequence > MAX_SEQUENCE:
            raise ManifestError(f"{relative}: sequence would exceed {MAX_SEQUENCE}; start a new repository URL")
        final = replace(
            manifest,
            sequence=sequence,
            generated_at=format_timestamp(now),
            expires=format_timestamp(now + validity) if validity is not None else None,
        )
        crash_point("manifest")
        self.write_signed(relative, final.to_bytes())
        return final, True

    def write_family_page(self, manifest: Manifest) -> None:
        write_if_changed(self.root / manifest.family / HTML_FILE, render_family_page(manifest, self.root).encode())
        crash_point("html")

    def all_manifests(self) -> tuple[list[Manifest], list[str]]:
        manifests, problems = [], []
        for path in sorted(self.root.glob(f"*/{MANIFEST_FILE}")):
            if path.parent.name == BLOB_DIR or path.parent.name.startswith("."):
                continue
            try:
                data = path.read_bytes()
                self.check_untampered(f"{path.parent.name}/{MANIFEST_FILE}", data)
                manifests.append(parse_manifest(data, str(path)))
            except (ManifestError, SignatureError) as error:
                problems.append(f"{error}; left out of index.json")
        return manifests, problems

    def write_index(self, loaded: tuple[list[Manifest], list[str]] | None = None) -> tuple[bool, list[str]]:
        """Root page first, then index.json (the very last write of a publish), from ``loaded`` (manifests and
        their problems, as :meth:`all_manifests` returns them) or the manifests on disk."""
        manifests, problems = loaded or self.all_manifests()
        index = Index(families=tuple(IndexEntry(m.family, m.latest, manifest_path(m.family)) for m in manifests))
        write_if_changed(self.root / HTML_FILE, render_root_page(index, manifests, self.root).encode())
        crash_point("index")
        return self.write_signed(INDEX_FILE, index.to_bytes()), problems


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
