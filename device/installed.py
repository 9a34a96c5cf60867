"""Which model this device runs: its SHA-256 and its version, by one rule used everywhere — ``GET /status``,
``POST /check``, the downgrade rule (``update-latest`` and TOPE ``/update``) and the version a manual rollback
records.

The version of the model file's SHA-256, first match wins:

1. the install this device recorded (``installed`` in ``state.json``), if the file still has that SHA-256;
2. the version this device installed with that SHA-256 before (``known_versions``, kept across rollbacks);
3. the version with that SHA-256 in the last manifest accepted since start (signature and freshness checked;
   ``plan.identify`` finds the same entry by fingerprint, confirmed by SHA-256).

Otherwise it is unknown (``None``): a model this device never installed, before any manifest was accepted. A
version found by step 3 is remembered in ``known_versions`` (:meth:`InstalledModel.remember`), so the answer
survives a restart and a later rollback to that model.
"""

from __future__ import annotations

from pathlib import Path

from lorien.device.state import StateStore
from lorien.repo.hashing import sha256_file
from lorien.repo.manifest import Manifest


class InstalledModel:
    def __init__(self, model_path: Path, state: StateStore) -> None:
        self._model_path = model_path
        self._state = state
        self._digest_cache: tuple[tuple[int, int, int], str] | None = None

    def sha256(self) -> str | None:
        """SHA-256 of the model file, re-hashed only when its inode, size or mtime changed (``/status`` is
        polled; hashing a large model on every request would make polling cost a full read each time)."""
        try:
            stat = self._model_path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._digest_cache is None or self._digest_cache[0] != key:
            self._digest_cache = (key, sha256_file(self._model_path))
        return self._digest_cache[1]

    def version(self, manifest: Manifest | None) -> str | None:
        """The installed model's version by the rule above (``manifest``: the last one accepted, if any)."""
        return self.version_of(self.sha256(), manifest)

    def remember(self, manifest: Manifest) -> str | None:
        """The installed model's version; one that only ``manifest`` names is added to ``known_versions``."""
        sha256 = self.sha256()
        version = self.version_of(sha256, manifest)
        known = self._state.get("known_versions") or {}
        if sha256 is not None and version is not None and self.version_of(sha256, None) is None:
            self._state.update(known_versions={**known, sha256: version})
        return version

    def version_of(self, sha256: str | None, manifest: Manifest | None) -> str | None:
        """The version of the model with ``sha256`` by the rule above."""
        if sha256 is None:
            return None
        installed = self._state.get("installed") or {}
        if installed.get("version") and installed.get("sha256") == sha256:
            return installed["version"]
        known = (self._state.get("known_versions") or {}).get(sha256)
        if known:
            return known
        listed = [entry.version for entry in manifest.versions if entry.sha256 == sha256] if manifest else []
        return listed[0] if listed else None
