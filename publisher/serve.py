"""``lorien serve``: a repository over HTTP with waitress + Bottle, for demos and tests (production: nginx/).

Routes, most specific first:

* Mallorn seed endpoints answered from the static manifests: ``GET /health``, ``GET /manifest``,
  ``POST /check-update``, ``GET /patch/<patch_id>`` (Range), ``GET /fingerprint/<model_name>``,
  ``POST /create-patch?source_version=&target_version=[&family=]`` (admin token).
* Everything else is a static file of the repository via ``bottle.static_file`` (single Range → 206,
  ``Last-Modified``, ``If-Modified-Since``). We add what it lacks: quoted ETags with ``If-None-Match`` lists,
  ``If-Range``, ``Content-Range`` on 416, multi-range requests answered whole (200), cache headers per file
  kind, and refusal of hidden paths (``.lock``, ``.staging``, temp files).

Manifests are re-read on every request, so a concurrent ``lorien publish`` is picked up immediately.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import bottle
import waitress

from lorien.publisher.publish import PublishOptions, RepositoryWriter, ordered_patches
from lorien.repo.errors import LorienError, RepositoryLockedError
from lorien.repo.layout import BLOB_DIR, HTML_FILE, INDEX_FILE, PATCH_EXTENSION
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import Manifest, VersionEntry, parse_index, parse_manifest
from lorien.repo.signing import SigningKey
from lorien.repo.versions import sort_versions

log = logging.getLogger("lorien.serve")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
MAX_JSON_BODY = 64 * 1024
_MIME = {".json": "application/json", ".html": "text/html; charset=utf-8"}


def _error(status: int, message: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        json.dumps({"error": message}) + "\n", status=status, headers={"Content-Type": "application/json"}
    )


def _json(document: Any, status: int = 200) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        json.dumps(document, indent=2) + "\n", status=status, headers={"Content-Type": "application/json"}
    )


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 weak comparison against a comma-separated If-None-Match list (or ``*``)."""
    strip = etag.removeprefix("W/")
    candidates = [item.strip() for item in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == strip for c in candidates)


def serve_file(root: Path, relative: str, download_name: str | None = None) -> bottle.HTTPResponse:
    """Serve ``root/relative`` with the conditional and range semantics described in the module docstring."""
    parts = [part for part in relative.split("/") if part]
    if any(part.startswith(".") for part in parts):
        return _error(404, f"not found: /{relative}")
    file = root.joinpath(*parts) if parts else root
    if file.is_dir():
        file, parts = file / HTML_FILE, [*parts, HTML_FILE]
    if not file.is_file():
        return _error(404, f"not found: /{relative}")
    stat = file.stat()
    etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
    immutable = parts[0] == BLOB_DIR
    headers = {"Cache-Control": IMMUTABLE if immutable else REVALIDATE, "ETag": etag}
    environ = bottle.request.environ
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match and _etag_matches(if_none_match, etag):
        return bottle.HTTPResponse(status=304, **headers)
    range_header = environ.get("HTTP_RANGE", "")
    if range_header:
        if_range = environ.get("HTTP_IF_RANGE")
        last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        if (if_range and if_range not in (etag, last_modified)) or "," in range_header:
            environ.pop("HTTP_RANGE")  # validator changed or multi-range: send the whole file
        elif not list(bottle.parse_range_header(range_header, stat.st_size)):
            return bottle.HTTPResponse(
                status=416,
                body="",
                headers={**headers, "Content-Range": f"bytes */{stat.st_size}"},
            )
    mimetype = _MIME.get(file.suffix, "application/octet-stream")
    response = bottle.static_file(
        "/".join(parts), root=str(root), mimetype=mimetype, etag=etag, download=download_name or False
    )
    for name, value in headers.items():
        response.set_header(name, value)
    return response


class SeedApi:
    """The Mallorn patch-server endpoints, answered from the repository's static documents."""

    def __init__(self, root: Path, admin_token: str | None, sign_keys: tuple[SigningKey, ...] = ()) -> None:
        self.root = root
        self.admin_token = admin_token
        self.sign_keys = sign_keys  # a signed repository's manifest is re-signed after /create-patch

    # -- reading the repository ------------------------------------------------------------------------------
    def manifests(self) -> list[Manifest]:
        index_file = self.root / INDEX_FILE
        if not index_file.exists():
            return []
        index = parse_index(index_file.read_bytes(), INDEX_FILE)
        return [parse_manifest((self.root / e.manifest).read_bytes(), e.manifest) for e in index.families]

    def _body(self) -> dict[str, Any]:
        raw = bottle.request.body.read(MAX_JSON_BODY + 1)
        if len(raw) > MAX_JSON_BODY:
            raise _error(413, f"request body is over the {MAX_JSON_BODY}-byte limit")
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _error(400, f"request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise _error(400, 'request body must be a JSON object like {"short_id": "0123456789abcdef"}')
        return body

    # -- endpoints -------------------------------------------------------------------------------------------
    def health(self) -> bottle.HTTPResponse:
        manifests = self.manifests()
        return _json(
            {"status": "ok", "families": len(manifests), "versions": sum(len(m.versions) for m in manifests)}
        )

    def manifest(self) -> bottle.HTTPResponse:
        models, patches = [], []
        for manifest in self.manifests():
            for entry in manifest.versions:
                models.append(
                    {
                        "family": manifest.family,
                        "version": entry.version,
                        "name": f"{manifest.family}_{entry.version}",
                        "filename": entry.filename,
                        "latest": entry.version == manifest.latest,
                        "url": f"/{entry.blob}",
                        "sha256": entry.sha256,
                        "md5": entry.md5,
                        **entry.fingerprint.to_dict(),
                    }
                )
            for patch in manifest.patches:
                patches.append(
                    {
                        "patch_id": patch.id,
                        "family": manifest.family,
                        "source_version": patch.source,
                        "target_version": patch.target,
                        "engine": patch.engine,
                        "size": patch.size,
                        "sha256": patch.sha256,
                        "md5": patch.md5,
                        "url": f"/patch/{patch.id}",
                    }
                )
        return _json({"models": models, "patches": patches})

    def check_update(self) -> bottle.HTTPResponse:
        body = self._body()
        short_id = body.get("short_id")
        if (
            not isinstance(short_id, str)
            or len(short_id) != 16
            or any(c not in "0123456789abcdef" for c in short_id)
        ):
            return _error(400, "short_id: expected 16 lowercase hex characters (from `lorien fingerprint`)")
        filters: dict[str, Any] = {}
        if "file_size" in body:
            size = body["file_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 4:
                return _error(400, "file_size: expected an integer of at least 4")
            filters["file_size"] = size
        for key in ("header_hash", "tail_hash"):
            if key in body:
                if not isinstance(body[key], str) or len(body[key]) != 32:
                    return _error(400, f"{key}: expected 32 hex characters")
                filters[key] = body[key].lower()
        found: dict[str, tuple[Manifest, VersionEntry]] = {}
        for manifest in self.manifests():
            for entry in manifest.versions:
                fp = entry.fingerprint.to_dict()
                if fp["short_id"] == short_id and all(fp[k] == v for k, v in filters.items()):
                    found.setdefault(entry.sha256, (manifest, entry))
        if not found:
            return _error(404, f"no published version has short_id {short_id} (with the given filters)")
        if len(found) > 1:
            names = ", ".join(f"{m.family} {e.version}" for m, e in found.values())
            return _error(
                409,
                f"short_id {short_id} is ambiguous: it matches {names}. Files under 68 KiB all share the "
                "short_id 0000000000000000; send file_size, header_hash and tail_hash as well",
            )
        manifest, current = next(iter(found.values()))
        latest = manifest.latest_entry()
        answer: dict[str, Any] = {
            "family": manifest.family,
            "update_available": current.version != latest.version,
            "current_version": current.version,
            "latest_version": latest.version,
            "patch_url": None,
            "patch_size": None,
            "patch_id": None,
            "full_url": f"/{latest.blob}",
            "full_size": latest.size,
            "expected_hash": latest.sha256,
            "expected_md5": latest.md5,
        }
        patch = manifest.patch(current.version, latest.version)
        if answer["update_available"] and patch is not None:
            answer.update(patch_url=f"/patch/{patch.id}", patch_size=patch.size, patch_id=patch.id)
        return _json(answer)

    def patch(self, patch_id: str) -> bottle.HTTPResponse:
        for manifest in self.manifests():
            for patch in manifest.patches:
                if patch.id == patch_id:
                    return serve_file(self.root, patch.blob, download_name=f"{patch_id}.{PATCH_EXTENSION}")
        return _error(404, f"no patch with id {patch_id!r}; GET /manifest lists them")

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
            return _error(404, f"no model {model_name!r}; use <family>, <family>@<version> or <family>_<version>")
        if len(matches) > 1:
            return _error(409, f"{model_name!r} names several models; use <family>@<version>")
        manifest, entry = matches[0]
        return _json(
            {
                "family": manifest.family,
                "version": entry.version,
                "sha256": entry.sha256,
                "md5": entry.md5,
                **entry.fingerprint.to_dict(),
            }
        )

    def create_patch(self) -> bottle.HTTPResponse:
        if not self.admin_token:
            return _error(403, "create-patch is disabled; start `lorien serve` with --admin-token to enable it")
        supplied = bottle.request.get_header("Authorization", "").removeprefix("Bearer ").strip()
        supplied = supplied or bottle.request.get_header("X-Admin-Token", "")
        if not hmac.compare_digest(supplied.encode(), self.admin_token.encode()):
            return _error(401, "admin token missing or wrong: send 'Authorization: Bearer <token>'")
        query = bottle.request.query
        source, target, family = query.get("source_version"), query.get("target_version"), query.get("family")
        if not source or not target:
            return _error(400, "source_version and target_version query parameters are required")
        candidates = [
            m
            for m in self.manifests()
            if (family is None or m.family == family) and {source, target} <= {v.version for v in m.versions}
        ]
        if not candidates:
            return _error(404, f"no family has both versions {source!r} and {target!r}")
        if len(candidates) > 1:
            return _error(409, "several families have both versions; add &family=<name>")
        try:
            with repository_lock(self.root):
                return self._create_patch_locked(candidates[0].family, source, target)
        except RepositoryLockedError as error:
            return _error(409, str(error))
        except LorienError as error:
            return _error(400, str(error))

    def _create_patch_locked(self, family: str, source: str, target: str) -> bottle.HTTPResponse:
        writer = RepositoryWriter(self.root, options=PublishOptions(sign_keys=self.sign_keys))
        writer.check_signing_mode()  # never leave a signed repository with an unsigned manifest
        manifest = writer.read_manifest(family)
        assert manifest is not None
        existing = manifest.patch(source, target)
        if existing is not None:
            return _json({"created": False, **existing.to_dict(), "url": f"/patch/{existing.id}"})
        entry, stats = writer.create_patch(family, manifest.version(source), manifest.version(target))
        order = sort_versions(v.version for v in manifest.versions)
        patches = ordered_patches(order, [*manifest.patches, entry])
        final, _ = writer.write_manifest(replace(manifest, patches=patches), manifest)
        writer.write_family_page(final)
        writer.write_index()
        return _json(
            {
                "created": True,
                **entry.to_dict(),
                "url": f"/patch/{entry.id}",
                "seconds": round(stats.seconds, 3),
            },
            status=201,
        )


def make_app(root: Path, admin_token: str | None = None, sign_keys: tuple[SigningKey, ...] = ()) -> bottle.Bottle:
    root = root.resolve()
    api = SeedApi(root, admin_token, sign_keys)
    app = bottle.Bottle()

    def guarded(handler):  # repository problems become a JSON 500 naming the file, not a stack trace page
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except LorienError as error:
                return _error(500, f"repository problem: {error}")

        return wrapper

    app.route("/health", "GET", guarded(api.health))
    app.route("/manifest", "GET", guarded(api.manifest))
    app.route("/check-update", "POST", guarded(api.check_update))
    app.route("/patch/<patch_id>", ["GET", "HEAD"], guarded(api.patch))
    app.route("/fingerprint/<model_name>", "GET", guarded(api.fingerprint))
    app.route("/create-patch", "POST", guarded(api.create_patch))
    app.route("/", ["GET", "HEAD"], lambda: serve_file(root, ""))
    app.route("/<path:path>", ["GET", "HEAD"], lambda path: serve_file(root, path))

    for status in (404, 405, 500):
        app.error(status)(lambda error: json.dumps({"error": f"{error.status_line}: {error.body}"}))
    return app


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_token: str | None = None,
    announce=print,
    sign_keys: tuple[SigningKey, ...] = (),
) -> None:
    if not root.is_dir():
        raise LorienError(f"{root}: repository directory does not exist; run `lorien publish` first")
    server = waitress.create_server(make_app(root, admin_token, sign_keys), host=host, port=port, threads=8)
    announce(f"serving {root} at http://{server.effective_host}:{server.effective_port}/", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
