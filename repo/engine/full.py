"""A whole model as one compressed blob: a ``lorien`` patch from nothing, for devices with no usable old version.

    compress_model(model, output): an empty source file (in a temporary directory) + the model
      → the ``lorien`` engine's create: no tensor to match, so the planner (``planning.plan_alone``) makes
        typed pieces and each is coded on its own — float tensors as FLOAT_PLANES (sign bit rotated down, each
        byte plane its own zstd frame), everything else plain zstd — in the usual container
    decompress_model(blob, output): the same empty source + the blob → ``apply_patch`` (bounded memory, the
        defensive container parser, target size and SHA-256 checked, atomic output)

A compressed model is refused by ``decompress_model`` unless its header names the empty source, so a patch
between two versions cannot be passed off as a full model.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorien.repo.engine import ByteProgress, apply_patch, create_patch, patch_info
from lorien.repo.engine.base import ApplyResult, PatchStats
from lorien.repo.engine.lorien_engine import LorienEngine
from lorien.repo.errors import PatchError
from lorien.repo.limits import Limits

ENGINE = LorienEngine.name
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@contextmanager
def _empty_source() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lorien-empty-") as directory:
        empty = Path(directory, "empty")
        empty.touch()
        yield empty


def compress_model(
    model: Path | str,
    output: Path | str,
    *,
    progress: ByteProgress | None = None,
    max_format: int | None = None,
) -> PatchStats:
    """Write ``model`` compressed on its own to ``output`` (atomically); ``progress`` and ``max_format`` as in
    ``create_patch`` (below version 3, float tensors are plain byte planes instead of FLOAT_PLANES)."""
    with _empty_source() as empty:
        return create_patch(empty, model, output, ENGINE, progress=progress, max_format=max_format)


def _is_empty_digest(stored: str) -> bool:
    """A patch's source digest (whole, or its first bytes in the compact layout) is the empty file's."""
    return len(stored) >= 16 and EMPTY_SHA256.startswith(stored)


def decompress_model(
    blob: Path | str, output: Path | str, limits: Limits | None = None, *, progress: ByteProgress | None = None
) -> ApplyResult:
    """The model in ``blob`` written (atomically, after its SHA-256 is checked) to ``output``."""
    info = patch_info(blob)
    if info.engine != ENGINE or info.source_size != 0 or not _is_empty_digest(info.source_sha256):
        raise PatchError(
            f"{blob}: not a compressed model (a {info.engine} patch from a {info.source_size}-byte source); "
            "the repository lists something else under 'compressed'"
        )
    with _empty_source() as empty:
        return apply_patch(empty, blob, output, limits, progress=progress)
