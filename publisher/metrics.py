"""The publisher's Prometheus metrics: ``GET /metrics`` of ``lorien serve`` and ``lorien watch --metrics-port``.

Each has a registry of its own (never prometheus_client's global one). Counters start at 0 when the process
starts (Prometheus counters do; ``rate()`` and ``increase()`` handle the reset).

``lorien serve`` (:class:`ServeMetrics`): a WSGI wrapper counts every answer by route and status
(``lorien_serve_requests_total``) and the bytes of blobs sent (``lorien_serve_blob_bytes_total{kind="model|
patch"}``, the ``Content-Length`` of each 200/206 answer to a GET); static files are labelled by the shape of
their path (``/blobs/<patch>``, ``/<family>/manifest.json``, …) so the labels stay few. At every scrape the
family manifests listed in ``index.json`` are read: ``lorien_published_versions{family}``,
``lorien_published_latest_info{family,version}``, ``lorien_manifest_sequence{family}`` and
``lorien_manifest_expiry_timestamp_seconds{family}`` (a manifest that never expires has none).

``lorien watch`` (:class:`WatchMetrics`), told of every publish the watcher finishes: versions published and
patch bytes created per family, the publish's duration (histogram), the last publish's time, publishes that
failed, and the problems (bad files skipped, families held back) the last publish reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bottle
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from lorien.publisher.mallorn_api import published_manifests
from lorien.repo.errors import LorienError
from lorien.repo.layout import BLOB_DIR, INDEX_FILE, MANIFEST_FILE, PATCH_EXTENSION
from lorien.repo.manifest import Manifest

if TYPE_CHECKING:
    from lorien.publisher.publish import PublishReport

METRICS_PATH = "/metrics"
_STATIC_ROUTES = ("/", "/<path:path>")  # serve.make_app's routes for the repository's files
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _file_route(path: str) -> str:
    """A static file's route label: the shape of its path, not the path (a label per blob would never end)."""
    parts = [part for part in path.split("/") if part]
    name = parts[-1] if parts else ""
    if parts and parts[0] == BLOB_DIR:
        return "/blobs/<patch>" if name.endswith(f".{PATCH_EXTENSION}") else "/blobs/<model>"
    if name.startswith(INDEX_FILE) and len(parts) == 1:
        return f"/{name}" if name in (INDEX_FILE, f"{INDEX_FILE}.sig") else "/<file>"
    if len(parts) == 2 and name in (MANIFEST_FILE, f"{MANIFEST_FILE}.sig"):
        return f"/<family>/{name}"
    if not parts or (len(parts) == 1 and "." not in name) or name == "index.html":
        return "/<page>"
    return "/<file>"


def _route(environ: dict[str, Any]) -> str:
    route = environ.get("bottle.route")
    if route is None:
        return "(none)"  # refused before any route matched (404 of an unknown method, …)
    if route.rule in _STATIC_ROUTES:
        return _file_route(environ.get("PATH_INFO", ""))
    return route.rule


def _blob_kind(route: str) -> str | None:
    return {"/blobs/<patch>": "patch", "/patch/<patch_id>": "patch", "/blobs/<model>": "model"}.get(route)


class _Manifests(Collector):
    """The published families, read from the repository at every scrape."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _manifests(self) -> list[Manifest]:
        try:
            return published_manifests(self._root)
        except (LorienError, OSError):
            return []  # the requests that read it answer 500 and log why; a scrape still answers

    def collect(self) -> Iterator[Metric]:
        versions = GaugeMetricFamily(
            "lorien_published_versions", "Versions in the family's manifest.", labels=["family"]
        )
        latest = InfoMetricFamily("lorien_published_latest", "The family's latest version.", labels=["family"])
        sequence = GaugeMetricFamily("lorien_manifest_sequence", "The manifest's sequence.", labels=["family"])
        expiry = GaugeMetricFamily(
            "lorien_manifest_expiry_timestamp_seconds",
            "When devices stop accepting the manifest.",
            labels=["family"],
        )
        for manifest in self._manifests():
            versions.add_metric([manifest.family], len(manifest.versions))
            latest.add_metric([manifest.family], {"version": manifest.latest})
            sequence.add_metric([manifest.family], manifest.sequence)
            if (expires := manifest.expires_at()) is not None:
                expiry.add_metric([manifest.family], expires.timestamp())
        yield from (versions, latest, sequence, expiry)


class ServeMetrics:
    """``lorien serve``'s metrics: wrap the app with :meth:`counting`, answer ``GET /metrics`` with :meth:`answer`."""

    def __init__(self, root: Path) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Manifests(root))
        self._requests = Counter(
            "lorien_serve_requests", "Answers by route and status.", ["route", "status"], registry=self.registry
        )
        self._blob_bytes = Counter(
            "lorien_serve_blob_bytes",
            "Bytes of blobs sent (Content-Length of each answer).",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("model", "patch"):
            self._blob_bytes.labels(kind)

    def counting(self, app: WsgiApp) -> WsgiApp:
        """``app``, counting each answer when it starts (its status and length are known then)."""

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                route, code = _route(environ), status.split(" ", 1)[0]
                self._requests.labels(route, code).inc()
                kind = _blob_kind(route)
                if kind and code in ("200", "206") and environ.get("REQUEST_METHOD") == "GET":
                    length = next((value for name, value in headers if name.lower() == "content-length"), "0")
                    self._blob_bytes.labels(kind).inc(int(length) if length.isdigit() else 0)
                return start_response(status, headers, *exc_info)

            return app(environ, start)

        return counted

    def answer(self) -> bottle.HTTPResponse:
        return bottle.HTTPResponse(generate_latest(self.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST})


class WatchMetrics:
    """``lorien watch``'s metrics; :meth:`published` is the watcher's ``on_publish`` hook."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._versions = Counter(
            "lorien_watch_published_versions", "New versions published.", ["family"], registry=registry
        )
        self._patch_bytes = Counter(
            "lorien_watch_patch_bytes", "Bytes of the patches created.", ["family"], registry=registry
        )
        self._seconds = Histogram(
            "lorien_watch_publish_seconds",
            "How long a publish took (scan, hash, patches, manifests).",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self._last = Gauge(
            "lorien_watch_last_publish_timestamp_seconds",
            "When the last publish ended (Unix time).",
            registry=registry,
        )
        self._failures = Counter(
            "lorien_watch_publish_failures", "Publishes that failed (retried later).", registry=registry
        )
        self._problems = Gauge(
            "lorien_watch_problems",
            "Problems the last publish reported (files skipped, families held back).",
            registry=registry,
        )

    def serve(self, host: str, port: int) -> str:
        """Serve ``GET /metrics`` from a daemon thread (prometheus_client's HTTP server); its URL."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound_host, bound_port = server.server_address[:2]
        return f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}{METRICS_PATH}"

    def published(self, report: PublishReport | None, seconds: float) -> None:
        """A publish ended after ``seconds``: with its report, or failed (None)."""
        self._seconds.observe(seconds)
        self._last.set_to_current_time()
        if report is None:
            self._failures.inc()
            return
        for family in report.families:
            self._versions.labels(family.family).inc(len(family.new_versions))
            self._patch_bytes.labels(family.family).inc(
                sum(stats.patch_size for *_, stats in family.patches_created)
            )
        self._problems.set(len(report.all_problems()) + len(report.skipped))
