"""What every delta engine provides, and the result records the engine functions return."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class PatchInfo:
    engine: str
    patch_size: int
    source_size: int
    target_size: int
    source_sha256: str
    target_sha256: str
    format_version: int | None = None  # the lorien container's version (None: an engine with one format)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PatchStats:
    engine: str
    source_size: int
    target_size: int
    patch_size: int
    seconds: float
    format_version: int | None = None  # as in PatchInfo

    @property
    def ratio(self) -> float:
        """Patch size as a fraction of the full target size (smaller is better)."""
        return self.patch_size / self.target_size if self.target_size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 6)}


@dataclass(frozen=True)
class ApplyResult:
    engine: str
    target_size: int
    target_sha256: str
    verified: bool
    output: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    name: str

    def recognises(self, head: bytes) -> bool:
        """True when ``head`` (the first 16 bytes of a file) starts a patch of this engine."""

    def create(self, old: Path, new: Path, output: Path) -> None:
        """Write a patch turning ``old`` into ``new`` to ``output`` (atomically)."""

    def apply(self, model: Path, patch: Path, output: Path | None) -> ApplyResult:
        """Apply and verify; write ``output`` atomically, or only verify when ``output`` is None."""

    def info(self, patch: Path) -> PatchInfo:
        """Read the patch header."""
