"""The other tools a user could pick, run by :mod:`bench.run` as ``python -m bench.peers STEP TOOL …``.

    create TOOL OLD NEW PATCH DTYPE   → PATCH (DTYPE: the new file's main tensor dtype, for tools taking a hint)
    apply  TOOL OLD PATCH OUT         → OUT

- ``hdiffpatch`` (HDiffPatch's Python binding): ``diff``/``apply`` with LZMA2 at its strongest (smallest of its
  compressors on model deltas), whole files in memory.
- ``z4ai``: ``compress_delta(new, reference=old, dtype=…, level=19)`` / ``decompress_delta``.
- ``zipnn``: full-model compression of the new file (no delta), ``bytearray_dtype`` hint, zstd level 19.
- ``detools``: ``create_patch`` with its default bsdiff algorithm and LZMA compression (sequential patch).
"""

from __future__ import annotations

import sys
from pathlib import Path

Z4AI_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
ZIPNN_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def create(tool: str, old: Path, new: Path, patch: Path, dtype: str) -> None:
    if tool == "hdiffpatch":
        import hdiffpatch

        patch.write_bytes(hdiffpatch.diff(old.read_bytes(), new.read_bytes(), compression="lzma2"))
    elif tool == "z4ai":
        import z4ai

        hint = {"dtype": Z4AI_DTYPES[dtype]} if dtype in Z4AI_DTYPES else {}
        patch.write_bytes(z4ai.compress_delta(new.read_bytes(), reference=old.read_bytes(), level=19, **hint))
    elif tool == "zipnn":
        import zipnn

        codec = zipnn.ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPES.get(dtype, "float32"), zstd_level=19)
        patch.write_bytes(codec.compress(new.read_bytes()))
    elif tool == "detools":
        import detools

        with open(old, "rb") as ffrom, open(new, "rb") as fto, open(patch, "wb") as fpatch:
            detools.create_patch(ffrom, fto, fpatch, compression="lzma")
    else:
        raise SystemExit(f"unknown tool {tool}")


def apply(tool: str, old: Path, patch: Path, out: Path) -> None:
    if tool == "hdiffpatch":
        import hdiffpatch

        out.write_bytes(hdiffpatch.apply(old.read_bytes(), patch.read_bytes()))
    elif tool == "z4ai":
        import z4ai

        out.write_bytes(z4ai.decompress_delta(patch.read_bytes(), reference=old.read_bytes()))
    elif tool == "zipnn":
        import zipnn

        out.write_bytes(zipnn.ZipNN(input_format="byte").decompress(patch.read_bytes()))
    elif tool == "detools":
        import detools

        with open(old, "rb") as ffrom, open(patch, "rb") as fpatch, open(out, "wb") as fto:
            detools.apply_patch(ffrom, fpatch, fto)
    else:
        raise SystemExit(f"unknown tool {tool}")


def main(argv: list[str]) -> None:
    step, tool, *paths = argv
    if step == "create":
        create(tool, Path(paths[0]), Path(paths[1]), Path(paths[2]), paths[3])
    else:
        apply(tool, Path(paths[0]), Path(paths[1]), Path(paths[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
