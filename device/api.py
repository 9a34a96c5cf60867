"""The device updater's HTTP API (Bottle, served by waitress), TOPE-compatible plus manifest-driven endpoints.

Every answer is the TOPE envelope ``{"code", "msg", "data"}`` with ``code`` equal to the HTTP status. Who may
ask, checked in this order before anything else happens:

* every request: a ``Host`` naming this API (the bound address, ``localhost``, ``127.0.0.1`` or ``[::1]``, with
  the port; any IP address when bound to a wildcard address) and no foreign ``Origin`` — else 403, so neither a
  web page (cross-site POST) nor DNS rebinding can reach it;
* POST: ``Authorization: Bearer <api_token>`` (constant time; 401) — the token is on by default
  (``device.startup``); a body must be ``Content-Type: application/json`` (415; a POST without a body needs
  none), is bounded by ``limits.max_request_body`` (413 — waitress refuses a larger ``Content-Length`` itself,
  before reading the body), and every field is type- and range-checked (400 naming the field). A refused
  request changes nothing.

Network work is bounded by the updater's slots (``device.operations``): one background operation and one
``/check`` at a time, a request for a busy slot gets 409 at once, so ``GET /status`` and ``/progress`` always
answer. ``ROUTES`` lists every endpoint; ``_answer`` is the one place that runs the checks, calls the handler
and maps errors to status codes (Busy and UpdateFailed 409, NetworkError 502, other LorienError 422). Handlers
use only the updater's public methods (``status_view``, ``status``, ``check``, operations, ``metrics``).

``GET /metrics`` (at the root, not under ``/api/v1.0``) answers Prometheus text (``device.metrics``) instead of
the envelope. Like every GET it needs no token — it tells what ``/status`` tells (family, version, SHA-256,
stage) — and it obeys the Host/Origin checks, so a scraper must send the address it connects to as ``Host``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import bottle
import prometheus_client
import waitress

from lorien.device.state import Stage
from lorien.device.updater import Updater
from lorien.repo.errors import Busy, LorienError, NetworkError, UpdateFailed

log = logging.getLogger(__name__)

PREFIX = "/api/v1.0"
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_NAME = re.compile(r"[A-Za-z0-9._+-]{1,200}")
_VERSION = re.compile(r"[A-Za-z0-9._+-]{1,100}")
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _envelope(status: int, msg: str, data: Any = None) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps({"code": status, "msg": msg, "data": data if data is not None else {}})


def _require_own_host(bound: str) -> None:
    """403 unless ``Host`` (and ``Origin``, when sent) name this API: a browser sends a foreign ``Origin`` on a
    cross-site request, and a rebound DNS name as ``Host``."""
    request = bottle.request
    port = request.environ.get("SERVER_PORT", "")
    if not _names_this_api(request.get_header("Host", ""), bound, port):
        raise ApiError(403, f"Host {request.get_header('Host', '')!r} is not this API (use 127.0.0.1:{port})")
    origin = request.get_header("Origin")
    if origin is not None and not (
        urlsplit(origin).scheme == "http" and _names_this_api(urlsplit(origin).netloc, bound, port)
    ):
        raise ApiError(403, f"cross-origin request from {origin[:100]!r} refused")


def _names_this_api(netloc: str, bound: str, port: str) -> bool:
    try:
        parts = urlsplit(f"//{netloc}")
        name, given_port = (parts.hostname or ""), parts.port
    except ValueError:
        return False
    if str(given_port) != port:
        return False
    if name in _LOCAL_NAMES or name == bound.lower().strip("[]"):
        return True
    if bound in _WILDCARDS:  # any address of this machine; an IP literal cannot be rebound to another host
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def _read_body(limit: int) -> dict[str, Any]:
    length = bottle.request.content_length  # -1: no Content-Length (waitress sets it for chunked bodies)
    if length <= 0:
        return {}  # a POST without a body (check, update-latest, rollback) needs no Content-Type
    if length > limit:
        raise ApiError(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
    media_type = bottle.request.get_header("Content-Type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, f"Content-Type {media_type or '(none)'!r}: a request body must be application/json")
    raw = bottle.request.body.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"request body exceeds the {limit}-byte limit")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type, pattern: re.Pattern[str] | None = None) -> Any:
    if name not in data:
        raise ApiError(400, f"{name}: required")
    value = data[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"{name}: must be an integer")
    if kind is str and not isinstance(value, str):
        raise ApiError(400, f"{name}: must be a string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ApiError(400, f"{name}: {value[:80]!r} is not allowed (expected {pattern.pattern})")
    return value


# (updater, JSON body) → (msg, data) for the envelope, or a whole response (/metrics: Prometheus text)
Handler = Callable[[Updater, dict[str, Any]], tuple[str, Any] | bottle.HTTPResponse]


def _download(updater: Updater, body: dict[str, Any]) -> tuple[str, Any]:
    limits = updater.config.limits
    version = _field(body, "version", str, _VERSION)
    url = _field(body, "package_url", str)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(400, "package_url: must be an http:// or https:// URL")
    name = _field(body, "package_name", str, _NAME)
    if name in (".", ".."):
        raise ApiError(400, "package_name: must be a file name")
    size = _field(body, "package_size", int)
    if not 0 < size <= limits.max_blob_bytes:
        raise ApiError(400, f"package_size: must be from 1 to {limits.max_blob_bytes}")
    md5 = _field(body, "package_md5", str, _MD5)
    updater.download_package(version, url, name, size, md5)
    return "success", {"version": version, "status": "downloading"}  # TOPE: msg "success", data.status


def _update(updater: Updater, body: dict[str, Any]) -> tuple[str, Any]:
    version = _field(body, "version", str, _VERSION)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force: must be true or false")
    updater.install_package(version, force=force)
    return "success", {"version": version, "status": "installing"}


def _update_latest(updater: Updater, body: dict[str, Any]) -> tuple[str, Any]:
    now = body.get("now", False)
    if not isinstance(now, bool):
        raise ApiError(400, "now: must be true or false (true: ignore the download and deploy windows)")
    updater.update_latest(now=now)
    return "update started", {}


def _rollback(updater: Updater, body: dict[str, Any]) -> tuple[str, Any]:
    updater.rollback()
    return "rollback started", {}


def _control(updater: Updater, body: dict[str, Any]) -> tuple[str, Any]:
    """``{"pin": "1.2.0" | null, "hold": true | false}`` (each optional): the operator's run-time pin and hold,
    kept in state.json; the next check applies them."""
    unknown = sorted(set(body) - {"pin", "hold"})
    if unknown or not body:
        raise ApiError(
            400, f"{(unknown or ['body'])[0]}: expected pin (a version or null) and/or hold (true/false)"
        )
    pin = body.get("pin")
    if pin is not None and (not isinstance(pin, str) or not _VERSION.fullmatch(pin)):
        raise ApiError(400, f"pin: must be a version name or null, got {str(pin)[:80]!r}")
    if "hold" in body and not isinstance(body["hold"], bool):
        raise ApiError(400, "hold: must be true or false")
    return "success", updater.set_control(**body)


# Every route. Every request must name this API (Host, Origin); POST routes need the token (unless
# insecure_no_token) and have their body parsed (bounded, application/json, a JSON object or empty) before the
# handler runs; GET routes read no body.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/download", _download),
    ("POST", "/update", _update),
    ("GET", "/progress", lambda updater, body: ("success", updater.status_view().progress)),
    ("POST", "/check", lambda updater, body: ("success", {**updater.check().to_dict(), **updater.rollout_view()})),
    ("POST", "/update-latest", _update_latest),
    ("POST", "/rollback", _rollback),
    ("POST", "/control", _control),
    ("GET", "/status", lambda updater, body: ("success", updater.status())),
    ("GET", "/metrics", lambda updater, body: _prometheus(updater.metrics.exposition())),
)
ROOT_PATHS = frozenset({"/metrics"})  # served at the root, where Prometheus looks by default, not under PREFIX


def _prometheus(text: bytes) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(text, 200, {"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def _answer(updater: Updater, token: str | None, method: str, handler: Handler) -> str | bottle.HTTPResponse:
    """Host and Origin, token (POST), body (POST), the handler, and its result or error as the envelope."""
    try:
        _require_own_host(updater.config.host)
        body: dict[str, Any] = {}
        if method == "POST":
            if token:
                given = bottle.request.get_header("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <api_token>)")
            body = _read_body(updater.config.limits.max_request_body)
        answer = handler(updater, body)
        if isinstance(answer, bottle.HTTPResponse):
            return answer
        message, data = answer
        return _envelope(200, message, data)
    except ApiError as error:
        return _envelope(error.status, str(error))
    except Busy as error:
        return _envelope(409, str(error), {"stage": updater.status_view().stage})
    except UpdateFailed as error:
        return _envelope(409, str(error))
    except NetworkError as error:
        return _envelope(502, f"repository unreachable or bad: {error}")
    except LorienError as error:
        return _envelope(422, str(error))


def make_app(updater: Updater, token: str | None) -> bottle.Bottle:
    app = bottle.Bottle()
    for method, path, handler in ROUTES:
        url = path if path in ROOT_PATHS else f"{PREFIX}{path}"
        app.route(url, method=method, callback=_route(updater, token, method, handler))
    for code in (404, 405, 500):
        app.error(code)(lambda error: _envelope(error.status_code, error.status_line))
    return app


def _route(
    updater: Updater, token: str | None, method: str, handler: Handler
) -> Callable[[], str | bottle.HTTPResponse]:
    return lambda: _answer(updater, token, method, handler)


def serve(updater: Updater, announce: Callable[..., None] = print) -> None:
    config = updater.config
    server = waitress.create_server(
        make_app(updater, config.api_token),
        host=config.host,
        port=config.port,
        threads=4,  # network work holds at most one of them (a /check); /status and /progress get the rest
        max_request_body_size=max_request_body_size(config.limits.max_request_body),
    )
    # Announce before healing: heal may start work at once (and, in the crash tests, die), and whoever started
    # the device must still learn where its API is. Requests wait in the listen queue until server.run().
    announce(
        f"lorien device: family {config.family}, API at http://{server.effective_host}:"
        f"{server.effective_port}{PREFIX}/, model {config.model_path}",
        flush=True,
    )
    log.info("startup: %s", updater.heal())
    stop = _periodic_checks(updater)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        server.close()


def max_request_body_size(limit: int) -> int:
    """waitress's ``max_request_body_size`` for bodies of up to ``limit`` bytes: it answers 413 and closes the
    connection as soon as the headers announce ``limit + 1`` bytes or more (or a chunked body reaches that),
    instead of buffering up to 1 GiB to a temporary file before the app could refuse it."""
    return limit + 1


def _periodic_checks(updater: Updater) -> Callable[[], None]:
    interval = updater.config.check_interval
    stopped = threading.Event()
    if interval <= 0:
        return stopped.set

    def loop() -> None:
        while not stopped.wait(interval):
            view = updater.status_view()
            if view.busy or view.stage == Stage.DEPLOYING:
                continue
            try:
                updater.update_latest(retry_rejected=False)
            except (Busy, LorienError) as error:
                log.info("periodic check skipped: %s", error)

    threading.Thread(target=loop, name="periodic-check", daemon=True).start()
    return stopped.set
