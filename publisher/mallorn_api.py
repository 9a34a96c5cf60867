"""The endpoints of Mallorn's example patch server (``examples/server/patch_server.py`` in gar-ai/mallorn),
answered from the repository's static documents so devices written against Mallorn work unchanged.

Every answer has the reference's fields with the reference's types (its pydantic models), lorien's own fields
as additional keys; every error body has ``error`` and ``detail``. The deliberate deviations and the shape of
every request and answer are in ``docs/compatibility.md``. ``POST /check-update`` is in
:mod:`lorien.publisher.mallorn_check`.

Manifests are re-read on every request, so a concurrent ``lorien publish`` is picked up immediately.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import bottle

from lorien.publisher.http_json import Problem, error_response, json_response, validation_error
from lorien.publisher.mallorn_check import (
    ambiguity,
    match_versions,
    parse_update_query,
    read_json_body,
    update_answer,
)
from lorien.publisher.publish import PublishOptions, RepositoryWriter, ordered_patches
from lorien.repo.engine.mallorn_adapter import load_mallorn
from lorien.repo.errors import BusyError, FingerprintError, LorienError
from lorien.repo.fingerprint import sampled_hash
from lorien.repo.layout import INDEX_FILE, PATCH_EXTENSION
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import Manifest, PatchEntry, VersionEntry, parse_index, parse_manifest
from lorien.repo.signing import SigningKey
from lorien.repo.versions import sort_versions

SendFile = Callable[[str, str], bottle.HTTPResponse]  # (repository-relative path, download name) → response


def published_manifests(root: Path) -> list[Manifest]:
    """Every family's manifest, as ``index.json`` lists them, read now ([] before the first publish). Raises
    ``ManifestError`` / ``OSError`` when a document is broken or missing."""
    index_file = root / INDEX_FILE
    if not index_file.exists():
        return []
    index = parse_index(index_file.read_bytes(), INDEX_FILE)
    return [parse_manifest((root / e.manifest).read_bytes(), e.manifest) for e in index.families]


class SampledHashes:
    """Each version's sampled hash: from its manifest, else computed once from its blob (blobs never change)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._computed: dict[str, str | None] = {}

    def __call__(self, entry: VersionEntry) -> str | None:
        if entry.sampled_sha256 is not None:
            return entry.sampled_sha256
        if entry.sha256 not in self._computed:
            try:
                self._computed[entry.sha256] = sampled_hash(self.root / entry.blob)
            except FingerprintError:  # blob missing: unknown, so it rules nothing out
                return None
        return self._computed[entry.sha256]


def _patch_document(manifest: Manifest, patch: PatchEntry) -> dict[str, Any]:
    return {
        "id": patch.id,
        "url": f"/patch/{patch.id}",
        "size": patch.size,
        "patch_id": patch.id,
        "family": manifest.family,
        "source_version": patch.source,
        "target_version": patch.target,
        "engine": patch.engine,
        "sha256": patch.sha256,
        "md5": patch.md5,
    }


def _model_document(manifest: Manifest, entry: VersionEntry, sampled: str | None) -> dict[str, Any]:
    return {
        "family": manifest.family,
        "version": entry.version,
        "name": f"{manifest.family}_{entry.version}",
        "filename": entry.filename,
        "latest": entry.version == manifest.latest,
        "url": f"/{entry.blob}",
        "sha256": entry.sha256,
        "md5": entry.md5,
        "sampled_sha256": sampled,
        **entry.fingerprint.to_dict(),
    }


class MallornApi:
    """The Mallorn patch-server endpoints of ``lorien serve``."""

    def __init__(
        self, root: Path, send_file: SendFile, admin_token: str | None, sign_keys: tuple[SigningKey, ...] = ()
    ) -> None:
        self.root = root
        self.send_file = send_file
        self.admin_token = admin_token
        self.sign_keys = sign_keys  # a signed repository's manifest is re-signed after /create-patch
        self.sampled = SampledHashes(root)

    def manifests(self) -> list[Manifest]:
        return published_manifests(self.root)

    # -- GET endpoints ---------------------------------------------------------------------------------------
    def health(self) -> bottle.HTTPResponse:
        manifests = self.manifests()
        versions = sum(len(m.versions) for m in manifests)
        return json_response(
            {
                "status": "healthy",
                "mallorn_available": load_mallorn() is not None,
                "models_count": versions,
                "patches_count": sum(len(m.patches) for m in manifests),
                "families": len(manifests),
                "versions": versions,
            }
        )

    def manifest(self) -> bottle.HTTPResponse:
        """One family's ``PatchManifest``: ``?family=``, else the only family, else the first by name."""
        by_name = {m.family: m for m in self.manifests()}
        wanted = bottle.request.query.get("family")
        if wanted is not None and wanted not in by_name:
            return error_response(404, f"no family {wanted!r}; families: {', '.join(sorted(by_name)) or 'none'}")
        name = wanted if wanted is not None else min(by_name, default=None)
        if name is None:  # nothing published: the reference's answer for an empty server
            body = {"model_family": "default", "latest_version": "unknown", "patches": [], "models": []}
            return json_response({**body, "families": []})
        chosen = by_name[name]
        return json_response(
            {
                "model_family": chosen.family,
                "latest_version": chosen.latest,
                "patches": [_patch_document(chosen, p) for p in chosen.patches],
                "models": [_model_document(chosen, e, self.sampled(e)) for e in chosen.versions],
                "families": sorted(by_name),
            }
        )

    def patch(self, patch_id: str) -> bottle.HTTPResponse:
        for manifest in self.manifests():
            for patch in manifest.patches:
                if patch.id == patch_id:
                    return self.send_file(patch.blob, f"{patch_id}.{PATCH_EXTENSION}")
        return error_response(404, f"Patch not found: no patch with id {patch_id!r}; GET /manifest lists them")

    def fingerprint(self, model_name: str) -> bottle.HTTPResponse:
        """``<family>`` (its latest), ``<family>@<version>`` or ``<family>_<version>`` (seed style)."""
        matches = []
        for manifest in self.manifests():
            for entry in manifest.versions:
                names = {f"{manifest.family}@{entry.version}", f"{manifest.family}_{entry.version}"}
                if entry.version == manifest.latest:
                    names.add(manifest.family)
                if model_name in names:
                    matches.append((manifest, entry))
        if not matches:
            return error_response(
                404, f"Model not found: {model_name!r}; use <family>, <family>@<version> or <family>_<version>"
            )
        if len(matches) > 1:
            return error_response(409, f"{model_name!r} names several models; use <family>@<version>")
        manifest, entry = matches[0]
        document = _model_document(manifest, entry, self.sampled(entry))
        for key in ("name", "filename", "latest", "url"):
            document.pop(key)
        return json_response(document)

    # -- POST endpoints --------------------------------------------------------------------------------------
    def check_update(self) -> bottle.HTTPResponse:
        query = parse_update_query(read_json_body())
        candidates = match_versions(self.manifests(), query, self.sampled)
        if len(candidates) > 1:
            return ambiguity(query, candidates)
        return json_response(update_answer(candidates[0] if candidates else None))

    def create_patch(self) -> bottle.HTTPResponse:
        if not self.admin_token:
            return error_response(
                403, "create-patch is disabled; start `lorien serve` with --admin-token to enable it"
            )
        supplied = bottle.request.get_header("Authorization", "").removeprefix("Bearer ").strip()
        supplied = supplied or bottle.request.get_header("X-Admin-Token", "")
        if not hmac.compare_digest(supplied.encode(), self.admin_token.encode()):
            return error_response(401, "admin token missing or wrong: send 'Authorization: Bearer <token>'")
        query = bottle.request.query
        source, target, family = query.get("source_version"), query.get("target_version"), query.get("family")
        missing = [name for name, value in (("source_version", source), ("target_version", target)) if not value]
        if missing:
            return validation_error([Problem("missing", ("query", name), "Field required") for name in missing])
        candidates = [
            m
            for m in self.manifests()
            if (family is None or m.family == family) and {source, target} <= {v.version for v in m.versions}
        ]
        if not candidates:
            return error_response(404, f"Model version not found: no family has both {source!r} and {target!r}")
        if len(candidates) > 1:
            return error_response(409, "several families have both versions; add &family=<name>")
        try:
            with repository_lock(self.root):
                return self._create_patch_locked(candidates[0].family, source, target)
        except BusyError as error:
            return error_response(409, str(error))
        except LorienError as error:
            return error_response(500, str(error))

    def _create_patch_locked(self, family: str, source: str, target: str) -> bottle.HTTPResponse:
        writer = RepositoryWriter(self.root, options=PublishOptions(sign_keys=self.sign_keys))
        writer.check_signing_mode()  # never leave a signed repository with an unsigned manifest
        manifest = writer.read_manifest(family)
        assert manifest is not None
        source_entry = manifest.version(source)
        existing = manifest.patch(source, target)
        if existing is not None:
            return json_response(_created(existing, source_entry, created=False))
        entry, stats = writer.create_patch(family, source_entry, manifest.version(target))
        order = sort_versions(v.version for v in manifest.versions)
        patches = ordered_patches(order, [*manifest.patches, entry])
        final, _ = writer.write_manifest(replace(manifest, patches=patches), manifest)
        writer.write_family_page(final)
        writer.write_index()
        return json_response({**_created(entry, source_entry, created=True), "seconds": round(stats.seconds, 3)})


def _created(patch: PatchEntry, source: VersionEntry, created: bool) -> dict[str, Any]:
    """The reference's create-patch answer (``compression_ratio`` = source size / patch size, as Mallorn's)."""
    return {
        "patch_id": patch.id,
        "patch_size": patch.size,
        "compression_ratio": source.size / patch.size,
        "url": f"/patch/{patch.id}",
        "created": created,
        **patch.to_dict(),
    }
