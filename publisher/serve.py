"""``lorien serve``: a repository over HTTP with waitress + Bottle, for demos and tests (production: nginx/).

Routes, most specific first:

* Mallorn's example patch-server endpoints (:mod:`lorien.publisher.mallorn_api`, shapes and deviations in
  docs/compatibility.md): ``GET /health``, ``GET /manifest[?family=]``, ``POST /check-update``,
  ``GET /patch/<patch_id>`` (Range), ``GET /fingerprint/<model_name>``,
  ``POST /create-patch?source_version=&target_version=[&family=]`` (admin token).
* ``GET /metrics``: Prometheus text (:mod:`lorien.publisher.metrics`): requests by route and status, blob bytes
  sent, and the published versions read from the manifests (a family named ``metrics`` has its page at
  ``/metrics/``).
* Everything else is a static file of the repository via ``bottle.static_file`` (single Range → 206,
  ``Last-Modified``, ``If-Modified-Since``). We add what it lacks: quoted ETags with ``If-None-Match`` lists,
  ``If-Range``, ``Content-Range`` on 416, multi-range requests answered whole (200), cache headers per file
  kind, and refusal of hidden paths (``.lock``, ``.staging``, temp files).

Error bodies are JSON with ``error`` (lorien) and ``detail`` (FastAPI, as Mallorn's server answers).
"""

from __future__ import annotations

import email.utils
import json
import logging
from pathlib import Path
from typing import Any

import bottle
import waitress

from lorien.publisher.http_json import error_body, error_response
from lorien.publisher.mallorn_api import MallornApi
from lorien.publisher.mallorn_check import MAX_JSON_BODY
from lorien.publisher.metrics import METRICS_PATH, ServeMetrics
from lorien.repo.errors import LorienError
from lorien.repo.layout import BLOB_DIR, HTML_FILE
from lorien.repo.signing import SigningKey

log = logging.getLogger("lorien.serve")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_MIME = {".json": "application/json", ".html": "text/html; charset=utf-8"}


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 weak comparison against a comma-separated If-None-Match list (or ``*``)."""
    strip = etag.removeprefix("W/")
    candidates = [item.strip() for item in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == strip for c in candidates)


def serve_file(root: Path, relative: str, download_name: str | None = None) -> bottle.HTTPResponse:
    """Serve ``root/relative`` with the conditional and range semantics described in the module docstring."""
    parts = [part for part in relative.split("/") if part]
    if any(part.startswith(".") for part in parts):
        return error_response(404, f"not found: /{relative}")
    file = root.joinpath(*parts) if parts else root
    if file.is_dir():
        file, parts = file / HTML_FILE, [*parts, HTML_FILE]
    if not file.is_file():
        return error_response(404, f"not found: /{relative}")
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
        elif not list(bottle.parse_range_header(range_header, stat.st_size)):  # FastAPI's detail, as Mallorn's
            refused = error_response(416, f"Range not satisfiable: {range_header!r} of {stat.st_size} bytes")
            refused.set_header("ETag", etag)  # and error_response's no-store: not the blob's year-long cache
            refused.set_header("Content-Range", f"bytes */{stat.st_size}")
            return refused
    mimetype = _MIME.get(file.suffix, "application/octet-stream")
    response = bottle.static_file(
        "/".join(parts), root=str(root), mimetype=mimetype, etag=etag, download=download_name or False
    )
    for name, value in headers.items():
        response.set_header(name, value)
    return response


def _method_not_allowed(path: str, allowed: str):
    def answer() -> bottle.HTTPResponse:
        refused = error_response(405, f"Method Not Allowed: {path} takes {allowed}")
        refused.set_header("Allow", allowed)
        return refused

    return answer


def make_app(
    root: Path,
    admin_token: str | None = None,
    sign_keys: tuple[SigningKey, ...] = (),
    metrics: ServeMetrics | None = None,
) -> bottle.Bottle:
    """The routes below; with ``metrics``, ``GET /metrics`` too (Prometheus text, publisher.metrics)."""
    root = root.resolve()
    api = MallornApi(root, lambda path, name: serve_file(root, path, name), admin_token, sign_keys)
    app = bottle.Bottle()

    def guarded(handler):  # repository problems become a JSON 500 naming the file, not a stack trace page
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except LorienError as error:
                log.error("%s %s: repository problem: %s", bottle.request.method, bottle.request.path, error)
                return error_response(500, f"repository problem: {error}")

        return wrapper

    # HEAD named on every GET route: Bottle would try the static-file route's HEAD before falling back to GET
    app.route("/health", ["GET", "HEAD"], guarded(api.health))
    app.route("/manifest", ["GET", "HEAD"], guarded(api.manifest))
    app.route("/check-update", "POST", guarded(api.check_update))
    app.route("/patch/<patch_id>", ["GET", "HEAD"], guarded(api.patch))
    app.route("/fingerprint/<model_name>", ["GET", "HEAD"], guarded(api.fingerprint))
    app.route("/create-patch", "POST", guarded(api.create_patch))
    for post_only in ("/check-update", "/create-patch"):  # 405 as FastAPI answers, not the static files' 404
        app.route(post_only, ["GET", "HEAD"], _method_not_allowed(post_only, "POST"))
    if metrics is not None:
        app.route(METRICS_PATH, ["GET", "HEAD"], metrics.answer)
    app.route("/", ["GET", "HEAD"], lambda: serve_file(root, ""))
    app.route("/<path:path>", ["GET", "HEAD"], lambda path: serve_file(root, path))

    def json_error(error: bottle.HTTPError) -> str:  # FastAPI says {"detail": "Not Found"}; we add the path
        bottle.response.content_type = "application/json"
        return json.dumps(error_body(f"{error.status_line.split(' ', 1)[-1]}: {error.body}")) + "\n"

    for status in (404, 405, 500):
        app.error(status)(json_error)
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
    metrics = ServeMetrics(root)
    app = metrics.counting(make_app(root, admin_token, sign_keys, metrics))
    # waitress answers 413 to a larger Content-Length before reading the body (its default buffers up to 1 GiB)
    server = waitress.create_server(app, host=host, port=port, threads=8, max_request_body_size=MAX_JSON_BODY + 1)
    announce(f"serving {root} at http://{server.effective_host}:{server.effective_port}/", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
