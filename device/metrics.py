"""The device's Prometheus metrics, served by ``GET /metrics`` (text format 0.0.4).

One :class:`DeviceMetrics` per :class:`~device.updater.Updater`, with a registry of its own (not
prometheus_client's global one), so several updaters can live in one process (tests). Two kinds of metric:

* read from the device's state at every scrape (they survive a restart): ``lorien_installed_info{family,
  version,sha256}``, ``lorien_stage{stage}`` (1 for the current stage, 0 for the others) and
  ``lorien_last_success_timestamp_seconds`` (the newest operation in ``state.json``'s history that ended well:
  an install, an "already up to date" check, a package download), ``lorien_rollout_info{channel,state,target}``
  (the last rollout decision, docs/rollouts.md);
* counted by this process (Prometheus counters start again at 0 when the device restarts; ``rate()`` and
  ``increase()`` handle such resets): ``lorien_updates_total{result}``, ``lorien_rollbacks_total``,
  ``lorien_download_bytes_total`` / ``lorien_full_bytes_total``, ``lorien_download_retries_total`` and the
  gauge ``lorien_last_check_timestamp_seconds`` (0 until the first check since start).

Results come from the stage changes the :class:`~device.report.Reporter` announces (``state`` has the diagram):
deploying → idle is a ``success``; rolling_back → failed is ``rolled_back`` (every entry into rolling_back
counts in ``lorien_rollbacks_total``); any other stage → failed is ``failed``. A check with nothing to do is
no update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from lorien.device.installed import InstalledModel
from lorien.device.state import Stage, StateStore
from lorien.repo.download import Progress
from lorien.repo.manifest import Manifest, parse_timestamp

RESULTS = ("success", "failed", "rolled_back")


def update_result(before: Stage, after: Stage) -> str | None:
    """How an operation ended, by the stage change that ended it (None: it did not end an update)."""
    if after == Stage.FAILED:
        return "rolled_back" if before == Stage.ROLLING_BACK else "failed"
    if after == Stage.IDLE and before == Stage.DEPLOYING:
        return "success"
    return None


class _StateCollector(Collector):
    """The metrics read from ``state.json`` (and the model in place) at scrape time."""

    def __init__(
        self,
        family: str,
        state: StateStore,
        installed: InstalledModel,
        manifest: Callable[[], Manifest | None],
        channel: str,
    ) -> None:
        self._family, self._channel = family, channel
        self._state = state
        self._installed = installed
        self._manifest = manifest

    def collect(self) -> Iterator[Metric]:
        version, sha256 = self._installed.version(self._manifest()), self._installed.sha256()  # /status's rule
        info = InfoMetricFamily("lorien_installed", "The model in place: its family, version and SHA-256.")
        info.add_metric([], {"family": self._family, "version": version or "", "sha256": sha256 or ""})
        yield info
        stage = GaugeMetricFamily(
            "lorien_stage", "1 for the updater's current stage, 0 for the others.", labels=["stage"]
        )
        current = self._state.stage()
        for each in Stage:
            stage.add_metric([each.value], 1.0 if each == current else 0.0)
        yield stage
        success = GaugeMetricFamily(
            "lorien_last_success_timestamp_seconds",
            "When the newest operation that ended well ended (Unix time; 0: none in the history).",
        )
        success.add_metric([], self._last_success())
        yield success
        decision = self._state.get("rollout") or {}
        rollout = InfoMetricFamily(
            "lorien_rollout", "The last rollout decision: channel, state (in, out, pinned, held, …) and target."
        )
        labels = {"channel": self._channel, "state": decision.get("state") or "unknown"}
        rollout.add_metric([], {**labels, "target": decision.get("target") or ""})
        yield rollout

    def _last_success(self) -> float:
        for entry in self._state.get("history") or []:
            if isinstance(entry, dict) and entry.get("ok"):
                try:
                    return parse_timestamp(str(entry.get("at"))).timestamp()
                except ValueError:
                    continue
        return 0.0


class DeviceMetrics:
    """The counters the updater's hooks feed, and the exposition of all of the device's metrics."""

    def __init__(
        self,
        family: str,
        state: StateStore,
        installed: InstalledModel,
        manifest: Callable[[], Manifest | None],
        channel: str = "stable",
    ) -> None:
        """``manifest``: the last manifest the updater accepted (the installed version's rule needs it);
        ``channel``: the one the device follows (``lorien_rollout_info``)."""
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(family, state, installed, manifest, channel))
        self._updates = Counter("lorien_updates", "Updates by how they ended.", ["result"], registry=self.registry)
        for result in RESULTS:
            self._updates.labels(result)  # every result shows, at 0 until it happens
        self._rollbacks = Counter(
            "lorien_rollbacks",
            "Automatic rollbacks to the previous model (failed health check or deploy).",
            registry=self.registry,
        )
        self._download_bytes = Counter(
            "lorien_download_bytes",
            "Bytes the manifest-driven updates downloaded (patches or full models, as planned).",
            registry=self.registry,
        )
        self._full_bytes = Counter(
            "lorien_full_bytes",
            "Bytes of the full models those updates produced: what downloading them whole would have cost.",
            registry=self.registry,
        )
        self._retries = Counter(
            "lorien_download_retries", "Download attempts retried after a network error.", registry=self.registry
        )
        self._last_check = Gauge(
            "lorien_last_check_timestamp_seconds",
            "When the device last asked its repository for the manifest, whatever came of it (Unix time).",
            registry=self.registry,
        )

    def stage_changed(self, before: Stage, after: Stage) -> None:
        """The Reporter's news: count an update that ended, and a rollback that starts."""
        if after == Stage.ROLLING_BACK and before != Stage.ROLLING_BACK:
            self._rollbacks.inc()
        result = update_result(before, after)
        if result is not None:
            self._updates.labels(result).inc()

    def checked(self) -> None:
        self._last_check.set_to_current_time()

    def downloaded(self, download_bytes: int, full_bytes: int) -> None:
        """An update's downloads are complete: ``download_bytes`` fetched to build a model of ``full_bytes``."""
        self._download_bytes.inc(download_bytes)
        self._full_bytes.inc(full_bytes)

    def counting_retries(self, on_progress: Callable[[Progress], None]) -> Callable[[Progress], None]:
        """``on_progress`` that also counts a retry each time the downloader reports that it waits for one."""

        def counted(progress: Progress) -> None:
            if progress.waiting is not None:
                self._retries.inc()
            on_progress(progress)

        return counted

    def exposition(self) -> bytes:
        """Every metric in Prometheus text format."""
        return generate_latest(self.registry)
