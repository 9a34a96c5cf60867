"""The repository's metadata — ``<family>/manifest.json``, ``index.json``, the TUF metadata that signs them
(:mod:`publisher.tuf_writer`) and the HTML pages — written so that a device never sees a document the signed
metadata does not vouch for.

:class:`SignedMetadataWriter` is the metadata half of :class:`~publisher.writer.RepositoryWriter` (which adds
blobs and patches); callers hold the repository's writer lock. Its jobs, in the order a publish meets them:

- ``check_signing_mode``: with no ``--sign-key``, refuse a signed repository; with keys, make a new repository a
  TUF repository, and refuse one still on the old ``.sig`` scheme (``lorien trust init --from-key`` converts);
- ``read_manifest`` / ``all_manifests``: read existing manifests, and with keys ``check_untampered`` refuses
  one that the signed targets do not list with its SHA-256, unless it is what an interrupted run of ours wrote;
- ``write_manifest``: bump the sequence, stamp ``generated_at`` and ``expires``, then ``write_signed`` (a
  hidden ``.<name>.signing`` marker, then the document; the old ``.sig`` only with ``--legacy-signatures``);
- ``renew_and_index``: at the end of every publish (and on watch's timer) renew every manifest whose expiry is
  half gone, then the root page, ``index.json`` and last the TUF metadata (``publish_tuf``: targets → snapshot →
  timestamp, each renewed when half its validity is gone).

Crash points (``repo/testhooks.py``), in write order: ``manifest``, ``signature`` (legacy only), ``html``,
``index``, then ``tuf-targets``, ``tuf-snapshot``, ``tuf-timestamp``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.metadata import Targets

from lorien.publisher.html import render_family_page, render_root_page
from lorien.publisher.options import PublishOptions
from lorien.publisher.tuf_writer import Target, TufWriter
from lorien.repo.atomic import atomic_write_bytes, write_if_changed
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
from lorien.repo.tufmeta import HASH, METADATA_DIR, ROLES, ROOT, hash_prefixed, metadata_path, signer

log = logging.getLogger(__name__)


class SignedMetadataWriter:
    """Writes and checks the signed metadata and the pages of one repository. Callers hold the writer lock."""

    def __init__(self, root: Path, options: PublishOptions | None = None) -> None:
        self.root = root
        self.options = options or PublishOptions()
        self._own_keys = tuple(
            TrustedKey(key.private.public_key(), key.keyid, key.source) for key in self.options.sign_keys
        )
        self._was_signed: bool | None = None
        self.tuf = TufWriter(root, self.options.sign_keys, self.options.expiry)
        self._targets: Targets | bool | None = False  # False: not read yet
        self._markers: set[Path] = set()  # documents written since the last TUF publish
        self.tuf_written: list[str] = []  # the TUF roles the last publish_tuf wrote

    # -- signatures and expiry -----------------------------------------------------------------------------------
    def check_signing_mode(self) -> None:
        """Refuse to write unsigned metadata into a signed repository (devices would reject it); with keys, make a
        new repository a TUF repository (every given key in every role, threshold 1), and refuse one still on the
        old ``.sig`` scheme until ``lorien trust init --from-key`` has converted it."""
        signed = next(self._signature_files(), None)
        if not self.options.sign_keys:
            if self.tuf.exists():
                raise BadInputError(
                    f"{self.root}: repository is signed (it has TUF metadata in {METADATA_DIR}/) but no --sign-key "
                    "was given; pass the keys of the targets, snapshot and timestamp roles (`lorien trust show`)"
                )
            if signed is not None:
                raise BadInputError(
                    f"{self.root}: repository is signed ({signed.name} exists) but no --sign-key was given; pass "
                    f"the publisher key, or delete the {SIGNATURE_SUFFIX} files to publish unsigned on purpose"
                )
            return
        if self.tuf.exists():
            return
        if signed is not None:
            raise BadInputError(
                f"{self.root}: repository is signed with the old .sig scheme ({signed.name}); convert it to TUF once "
                "with `lorien trust init REPO --from-key PUBLISHER.key` (docs/security.md, Migration)"
            )
        roles = {role: self.options.sign_keys for role in ROLES}
        root = self.tuf.initial_root(roles, {})
        for key in self.options.sign_keys:
            root.sign(signer(key), append=True)
        self.tuf.write_root(root, None)
        log.warning(
            "%s: new TUF repository; install %s on devices as their trusted_root (every given key signs every "
            "role: see `lorien trust` to move root and targets keys offline)",
            self.root,
            self.root / metadata_path(ROOT),
        )

    def write_signed(self, relative: str, data: bytes) -> bool:
        """Write a metadata document. Signed repositories: until the TUF metadata naming it is written (by
        ``write_index``, at the end of every publish) a hidden ``.<name>.signing`` marker holds the SHA-256 of
        the bytes, so the next run can tell its own interrupted write from someone else's edit. With
        ``legacy_signatures`` (migration only) the old detached ``.sig`` is written too; otherwise a leftover
        ``.sig`` is removed (it would no longer match)."""
        document = self.root / relative
        if not self.options.sign_keys:
            return write_if_changed(document, data)
        signature_file = self.root / signature_path(relative)
        changed = False
        if _read_or_none(document) != data:
            marker = self._signing_marker(relative)
            atomic_write_bytes(marker, hashlib.sha256(data).hexdigest().encode())
            self._markers.add(marker)
            atomic_write_bytes(document, data)
            changed = True
        if self.options.legacy_signatures:
            signature = sign_document(data, relative, self.options.sign_keys)
            if _read_or_none(signature_file) != signature:
                crash_point("signature")
                atomic_write_bytes(signature_file, signature)
                changed = True
        elif signature_file.exists():
            signature_file.unlink()
            changed = True
        return changed

    def _signing_marker(self, relative: str) -> Path:
        path = self.root / relative
        return path.with_name(f".{path.name}.signing")

    def check_untampered(self, relative: str, data: bytes) -> None:
        """With signing keys, existing metadata must be what the repository's signed TUF targets say (or, before
        the first TUF publish of a converted repository, carry a valid old-scheme signature by one of the keys) —
        or be exactly what an interrupted run of ours was writing. Anything else was changed by someone else, and
        signing it would bless their change (e.g. an extra patch entry or ``allow_downgrade`` added on a web
        server)."""
        if not self.options.sign_keys:
            return
        digest = hashlib.sha256(data).hexdigest()
        if _read_or_none(self._signing_marker(relative)) == digest.encode():
            return  # our own write, interrupted before the metadata naming it
        targets = self._trusted_targets()
        if targets is not None:
            listed = targets.targets.get(relative)
            if listed is not None and listed.hashes.get(HASH) == digest:
                return
            reason = (
                "its SHA-256 is not the one the signed targets metadata lists" if listed else "not a signed target"
            )
        elif not self._repository_was_signed():
            return  # a first signed publish of an unsigned repository signs its existing manifests as they are
        else:
            try:
                verify_document(
                    data, relative, (self.root / signature_path(relative)).read_bytes(), self._own_keys
                )
                return
            except FileNotFoundError:
                reason = "it has no signature"
            except SignatureError as error:
                reason = str(error)
        raise SignatureError(
            f"{self.root / relative}: not what the publisher signed ({reason}). It was changed after lorien signed "
            "it: restore it from a backup (or from the hash-prefixed copy the signed metadata names)"
        )

    def _trusted_targets(self) -> Targets | None:
        if self._targets is False:
            self._targets = self.tuf.trusted_targets() if self.tuf.exists() else None
        assert self._targets is not True
        return self._targets

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
        written = self.write_signed(INDEX_FILE, index.to_bytes())
        if self.options.sign_keys:
            written = bool(self.publish_tuf(manifests)) or written
        return written, problems

    def publish_tuf(self, manifests: list[Manifest], force: bool = False) -> list[str]:
        """Make every file devices fetch a signed TUF target: index.json, each manifest, each blob they name;
        then drop the markers of the documents this covers. Returns the roles written."""
        targets = [self._document_target(INDEX_FILE)] if (self.root / INDEX_FILE).exists() else []
        blobs: dict[str, Target] = {}
        for manifest in manifests:
            targets.append(self._document_target(manifest_path(manifest.family)))
            for file in manifest.blob_files():
                blobs[file.blob] = Target(file.blob, file.size, file.sha256, source=self.root / file.blob)
        for manifest, target in self._still_signed(manifests):
            targets.append(target)
            for file in manifest.blob_files():
                blobs.setdefault(
                    file.blob, Target(file.blob, file.size, file.sha256, source=self.root / file.blob)
                )
        written = self.tuf.publish(targets + list(blobs.values()), force=force)
        self.tuf_written = written
        self._targets = False
        # every document on disk is now a signed target: no marker (ours, or a killed run's) is needed any more
        for marker in [*self._markers, *self.root.glob(".*.signing"), *self.root.glob("*/.*.signing")]:
            marker.unlink(missing_ok=True)
        self._markers.clear()
        return written

    def _still_signed(self, manifests: list[Manifest]) -> Iterator[tuple[Manifest, Target]]:
        """Families whose manifest could not be used this time (damaged, edited by someone else) but that are still
        on disk keep their last signed state: that manifest (from its hash-prefixed copy) and its blobs."""
        targets = self._trusted_targets() if self.tuf.exists() else None
        if targets is None:
            return
        good = {manifest_path(manifest.family) for manifest in manifests}
        for path, info in targets.targets.items():
            if not path.endswith(f"/{MANIFEST_FILE}") or path in good or not (self.root / path).exists():
                continue
            copy = self.root / hash_prefixed(path, info.hashes[HASH])
            try:
                data = copy.read_bytes()
                manifest = parse_manifest(data, str(copy))
            except (OSError, ManifestError):
                continue
            if hashlib.sha256(data).hexdigest() == info.hashes[HASH]:
                yield manifest, Target(path, len(data), info.hashes[HASH], source=copy)

    def _document_target(self, relative: str) -> Target:
        data = (self.root / relative).read_bytes()
        return Target(relative, len(data), hashlib.sha256(data).hexdigest(), data=data)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
