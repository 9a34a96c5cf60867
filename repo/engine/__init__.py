"""The delta engine interface, with Mallorn's function names.

``create_patch(old, new, output) -> PatchStats``, ``apply_patch(model, patch, output) -> ApplyResult``,
``verify_patch(model, patch) -> ApplyResult`` and ``patch_info(patch) -> PatchInfo`` dispatch to a named
engine. Each engine writes a self-describing patch (its magic bytes say which engine made it), so the apply
side never needs to be told the engine; the name is still recorded per patch in the manifest so a device can
refuse engines it does not have before downloading anything. ``create_patch``, ``apply_patch`` and
``verify_patch`` take ``progress=(done bytes, total bytes)`` of the target: the lorien engine reports each piece
it encodes and each segment it decodes, the others only their start and end.

Data flow of ``apply_patch``: the declared target size against ``Limits.max_target`` and the free space beside
``output`` (a patch bomb is refused before one byte is written) → check the source model's size and SHA-256
against the patch header → decode into a temporary file beside ``output`` while hashing → compare with the
target SHA-256 in the header → atomically rename. On any failure the temporary file is removed and ``output``
is untouched; a write that fails anyway (the disk filled meanwhile) is one ``LocalIOError`` naming ``output``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lorien.repo.atomic import require_space, write_failure
from lorien.repo.engine.base import ApplyResult, Engine, PatchInfo, PatchStats
from lorien.repo.engine.container import READABLE_VERSIONS
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.engine.mallorn_adapter import MallornEngine
from lorien.repo.engine.planning import Hints
from lorien.repo.engine.zstd_dict import ZstdDictEngine
from lorien.repo.errors import BadInputError, LocalIOError, PatchError
from lorien.repo.limits import DEFAULT_LIMITS, Limits

DEFAULT_ENGINE = LorienEngine.name

ByteProgress = Callable[[int, int], None]  # (done bytes, total bytes) of the target being made or checked

_ENGINES: dict[str, Engine] = {
    LorienEngine.name: LorienEngine(),
    ZstdDictEngine.name: ZstdDictEngine(),
    MallornEngine.name: MallornEngine(),
}


def _usable(engine: Engine) -> bool:
    return not isinstance(engine, MallornEngine) or engine.available()


def available_engines() -> list[str]:
    """Engines that work here (``mallorn`` only when its package imports)."""
    return sorted(name for name, engine in _ENGINES.items() if _usable(engine))


def get_engine(name: str) -> Engine:
    try:
        return _ENGINES[name]
    except KeyError:
        raise PatchError(
            f"unknown patch engine {name!r}; this lorien has: {', '.join(available_engines())}"
        ) from None


def engine_for_patch(patch: Path | str) -> Engine:
    """The engine that wrote ``patch``, recognised by its magic bytes."""
    patch = Path(patch)
    try:
        with open(patch, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise BadInputError(f"{patch}: cannot read patch: {error.strerror}") from None
    for engine in _ENGINES.values():
        if engine.recognises(head):
            return engine
    mallorn = _ENGINES[MallornEngine.name]
    if _usable(mallorn):
        return mallorn
    raise PatchError(f"{patch}: not a patch made by any engine this lorien has ({', '.join(available_engines())})")


def _require_file(path: Path, role: str) -> None:
    if not path.is_file():
        raise BadInputError(f"{path}: {role} does not exist or is not a regular file")


def create_patch(
    old: Path | str,
    new: Path | str,
    output: Path | str,
    engine: str = DEFAULT_ENGINE,
    *,
    progress: ByteProgress | None = None,
    hints: Hints | None = None,
    max_format: int | None = None,
) -> PatchStats:
    """Write a patch that turns ``old`` into ``new``; ``progress`` is told how much of ``new`` is encoded.
    ``hints`` = (old regions, new regions) of a data file whose tensors a companion file describes
    (:func:`repo.engine.companions.companion_regions`); only the ``lorien`` engine uses them.
    ``max_format``: the newest ``lorien`` container version the patch may need (devices of an older release
    read only the versions they know; docs/patch-format.md); the other engines have a single format."""
    old, new, output = Path(old), Path(new), Path(output)
    _require_file(old, "old model")
    _require_file(new, "new model")
    chosen = get_engine(engine)
    if max_format is not None and isinstance(chosen, LorienEngine):
        chosen = LorienEngine(level=chosen.level, limits=chosen.limits, max_version=max_format)
    started = time.perf_counter()
    total = new.stat().st_size
    _report(progress, 0, total)
    try:
        extra: dict[str, object] = dict(_progress_argument(chosen, progress))
        if hints is not None and isinstance(chosen, LorienEngine):
            extra["hints"] = hints
        chosen.create(old, new, output, **extra)
    except OSError as error:
        raise write_failure(error, output, "the patch") from None
    _report(progress, total, total)
    info = chosen.info(output)
    return PatchStats(
        engine=chosen.name,
        source_size=info.source_size,
        target_size=info.target_size,
        patch_size=info.patch_size,
        seconds=time.perf_counter() - started,
        format_version=info.format_version,
    )


def _report(progress: ByteProgress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _progress_argument(engine: Engine, progress: ByteProgress | None) -> dict[str, ByteProgress]:
    """The lorien engine reports each piece it encodes or segment it decodes; the others are reported only at
    their start and end (by the caller)."""
    return {"progress": progress} if progress is not None and isinstance(engine, LorienEngine) else {}


def apply_patch(
    model: Path | str,
    patch: Path | str,
    output: Path | str,
    limits: Limits | None = None,
    *,
    progress: ByteProgress | None = None,
) -> ApplyResult:
    """Apply ``patch`` to ``model`` and atomically write the verified result to ``output``; ``limits`` replaces
    the default bounds the lorien engine enforces on the patch container (a device's ``[limits]`` table);
    ``progress`` is told how much of the result is written."""
    model, patch, output = Path(model), Path(patch), Path(output)
    _require_file(model, "model")
    _require_file(patch, "patch")
    limits = limits or DEFAULT_LIMITS
    engine = _bounded(engine_for_patch(patch), limits)
    target_size = engine.info(patch).target_size
    if target_size > limits.max_target:
        raise PatchError(
            f"{patch}: corrupt patch: target size {target_size} exceeds the limit {limits.max_target}"
        )
    require_space(output, target_size, f"the result of {patch.name}")
    _report(progress, 0, target_size)
    try:
        result = engine.apply(model, patch, output, **_progress_argument(engine, progress))
    except OSError as error:
        raise write_failure(error, output, f"the result of {patch.name}", target_size) from None
    _report(progress, target_size, target_size)
    return result


def _bounded(engine: Engine, limits: Limits) -> Engine:
    """``engine`` enforcing ``limits`` (the shared instances use the defaults)."""
    if limits is DEFAULT_LIMITS:
        return engine
    if isinstance(engine, LorienEngine):
        return LorienEngine(limits=limits)
    if isinstance(engine, ZstdDictEngine):
        return ZstdDictEngine(limits=limits)
    return engine


def verify_patch(model: Path | str, patch: Path | str, *, progress: ByteProgress | None = None) -> ApplyResult:
    """Check that ``patch`` applies to ``model`` and yields its promised target, writing nothing; ``progress``
    is told how much of the target is checked."""
    model, patch = Path(model), Path(patch)
    _require_file(model, "model")
    _require_file(patch, "patch")
    engine = engine_for_patch(patch)
    target_size = engine.info(patch).target_size
    _report(progress, 0, target_size)
    try:
        result = engine.apply(model, patch, None, **_progress_argument(engine, progress))
    except OSError as error:
        raise LocalIOError.wrap(error, f"verifying {patch}") from None
    _report(progress, target_size, target_size)
    return result


def require_engine(name: str, what: str = "patch") -> Engine:
    """The engine ``name`` for applying a patch a manifest lists, or a clear refusal before any download."""
    engine = _ENGINES.get(name)
    if engine is None or not _usable(engine):
        raise PatchError(
            f"{what} needs engine {name!r}, which this lorien cannot apply (it has: "
            f"{', '.join(available_engines())}); upgrade lorien on this device or take the full model"
        )
    return engine


def reads_format(engine: str, format_version: int | None) -> bool:
    """Whether this lorien applies a patch of ``engine`` whose container version a manifest gives as
    ``format_version`` (None: not listed — a repository written before the field existed; tried, and a patch
    of a version this lorien cannot read is refused by its header)."""
    if format_version is None or engine != LorienEngine.name:
        return True
    return format_version in READABLE_VERSIONS


def segment_summary(patch: Path | str) -> dict[str, dict[str, int]]:
    """Per codec: segment count, target bytes produced and payload bytes (lorien patches; {} for others)."""
    patch = Path(patch)
    engine = engine_for_patch(patch)
    if not isinstance(engine, LorienEngine):
        return {}
    summary: dict[str, dict[str, int]] = {}
    for segment in engine.segments(patch):
        entry = summary.setdefault(segment.codec.name, {"count": 0, "target_bytes": 0, "payload_bytes": 0})
        entry["count"] += 1
        entry["target_bytes"] += segment.target_length
        entry["payload_bytes"] += segment.payload_length
    return summary


def patch_info(patch: Path | str) -> PatchInfo:
    patch = Path(patch)
    _require_file(patch, "patch")
    return engine_for_patch(patch).info(patch)


__all__ = [
    "DEFAULT_ENGINE",
    "ApplyResult",
    "ByteProgress",
    "Hints",
    "PatchInfo",
    "PatchStats",
    "apply_patch",
    "available_engines",
    "create_patch",
    "get_engine",
    "patch_info",
    "reads_format",
    "require_engine",
    "segment_summary",
    "verify_patch",
]
