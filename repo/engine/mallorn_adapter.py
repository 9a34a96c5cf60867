"""Engine ``mallorn``: the real Mallorn library (``import mallorn``), used only when it is installed.

Mallorn is not on any package registry this project can reach, so it is an *optional* engine: nothing here
imitates it. When ``import mallorn`` fails, every operation raises :class:`~repo.errors.PatchError` saying so.
Mallorn's Python API (``create_patch(source, target, patch)`` returning stats with ``patch_size``,
``apply_patch(source, patch, output)`` returning a result with ``is_valid()``) writes its own ``.tflp``
patches; lorien wraps them unchanged, checks sizes and SHA-256 itself, and writes outputs atomically.
Mallorn patches carry no magic this module knows, so :func:`repo.engine.engine_for_patch` falls back to
this engine for unrecognised patches only when the package imports.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

from lorien.repo.atomic import atomic_writer
from lorien.repo.engine.base import ApplyResult, PatchInfo
from lorien.repo.errors import IntegrityError, PatchError
from lorien.repo.hashing import sha256_file


def load_mallorn() -> ModuleType | None:
    try:
        return importlib.import_module("mallorn")
    except ImportError:
        return None


class MallornEngine:
    name = "mallorn"

    def available(self) -> bool:
        return load_mallorn() is not None

    def _module(self) -> ModuleType:
        module = load_mallorn()
        if module is None:
            raise PatchError(
                "engine 'mallorn' needs the mallorn Python package, which is not installed here "
                "(it is not on PyPI; build it from its repository with maturin); use --engine lorien instead"
            )
        return module

    def recognises(self, head: bytes) -> bool:
        return False

    def create(self, old: Path, new: Path, output: Path) -> None:
        module = self._module()
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=".mallorn-") as scratch:
            temp = Path(scratch) / "patch.tflp"
            module.create_patch(str(old), str(new), str(temp))
            with open(temp, "rb") as source, atomic_writer(output) as sink:
                shutil.copyfileobj(source, sink)

    def info(self, patch: Path) -> PatchInfo:
        info = self._module().patch_info(str(patch))
        return PatchInfo(
            self.name,
            patch.stat().st_size,
            int(getattr(info, "source_size", 0)),
            int(getattr(info, "target_size", 0)),
            str(getattr(info, "source_hash", "")),
            str(getattr(info, "target_hash", "")),
        )

    def apply(self, model: Path, patch: Path, output: Path | None) -> ApplyResult:
        module = self._module()
        parent = output.parent if output is not None else patch.parent
        with tempfile.TemporaryDirectory(dir=parent, prefix=".mallorn-") as scratch:
            temp = Path(scratch) / "model.out"
            result = module.apply_patch(str(model), str(patch), str(temp))
            valid = getattr(result, "is_valid", lambda: True)
            if not temp.is_file() or not valid():
                raise IntegrityError(f"{patch}: mallorn reports the patched model as invalid")
            digest, size = sha256_file(temp), temp.stat().st_size
            if output is not None:
                with open(temp, "rb") as source, atomic_writer(output) as sink:
                    shutil.copyfileobj(source, sink)
        return ApplyResult(self.name, size, digest, True, None if output is None else str(output))
