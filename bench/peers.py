"""The other tools a user could pick, run by :mod:`bench.run` as ``python -m bench.peers STEP TOOL …``.

    create TOOL OLD NEW PATCH DTYPE   → PATCH (DTYPE: the new file's main tensor dtype, for tools taking a hint)
                                        and, for the HDiffPatch peers, PATCH.notes (below)
    apply  TOOL OLD PATCH OUT         → OUT

- ``hdiffpatch`` (HDiffPatch's Python binding, its standard format) at its best compressor **per pair**: the
  diff is made once uncompressed (``diff(old, new, compression="none", big_cache_match=True)``; the match cache
  only makes it faster, the output is byte-identical), then ``recompress``-ed with every candidate of
  :data:`HDIFF_COMPRESSORS` the binding accepts (one that raises is skipped), and the smallest patch is kept
  (the first listed on a tie). ``recompress`` redoes no match search, so a candidate is byte for byte what
  ``diff`` with that compressor makes (checked on three small pairs; only the string ``"lzham"``, multithreaded,
  varies from run to run). ``apply`` reads the compressor from the patch header.
  The candidates: the binding's compressor names at their built-in settings, plus Brotli at quality 11
  (window 2^24) — the name ``"brotli"`` is quality 9, and quality 11 beat every name on 50 of the 64 small
  pairs (40 of 64 in HPatchLite). No other codec's ``best_compression()`` preset (zstd 22, LZMA / LZMA2 / xz 9,
  tuz ``literal_line``, zlib 9, bzip2 9, LZ4HC 12, tamp 12) beat the best name on any small pair, and LZHAM
  level 5 on one only (HPatchLite, safetensors-small-sparse, by 4 bytes; not a candidate: slow).
- ``hdiffpatch-lite``: the same for HDiffPatch's second format, HPatchLite (``diff_lite`` / ``recompress_lite``
  / ``apply_lite``), the one HDiffPatch's tiny on-device applier reads (13 bytes for identical files); xz has no
  HPatchLite header byte, so it is skipped there.
- ``z4ai``: ``compress_delta(new, reference=old, dtype=…, level=19)`` / ``decompress_delta``.
- ``zipnn``: full-model compression of the new file (no delta), ``bytearray_dtype`` hint, zstd level 19.
- ``detools``: ``create_patch`` with its default bsdiff algorithm and LZMA compression (sequential patch).

``PATCH.notes`` (:func:`notes_path`): one line of text a create step may write beside the patch;
:func:`bench.run.bench_tool` appends it to the result's ``notes`` and deletes it. The HDiffPatch peers write
the compressor that won, e.g. ``compressor brotli-q11 (smallest of 14 tried)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

Z4AI_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
ZIPNN_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
HDIFF_TOOLS = ("hdiffpatch", "hdiffpatch-lite")
# every compressor name of the binding; "brotli-q11" is BrotliConfig(level=11, window=24) (see the docstring)
HDIFF_COMPRESSORS = (
    "none", "zlib", "lzma", "lzma2", "zstd", "bzip2", "lz4", "lz4hc", "tuz", "brotli", "lzham", "xz", "tamp",
    "brotli-q11",
)  # fmt: skip


def notes_path(patch: Path) -> Path:
    """Where a create step leaves its one line of notes for :mod:`bench.run`: ``PATCH.notes``."""
    return patch.with_name(patch.name + ".notes")


def hdiff_candidates() -> list[tuple[str, Any]]:
    """(label, ``compression`` argument of ``hdiffpatch.recompress`` / ``recompress_lite``) for every entry of
    :data:`HDIFF_COMPRESSORS`."""
    import hdiffpatch

    quality11 = hdiffpatch.BrotliConfig(level=11, window=24)
    return [(name, quality11 if name == "brotli-q11" else name) for name in HDIFF_COMPRESSORS]


def hdiff_best(old: bytes, new: bytes, lite: bool) -> tuple[bytes, str, int]:
    """HDiffPatch's smallest patch of ``new`` from ``old`` over every candidate compressor: (patch, the winner's
    label, how many candidates the binding accepted). ``lite``: the HPatchLite format."""
    import hdiffpatch

    if lite:
        raw = hdiffpatch.diff_lite(old, new, compression="none", big_cache_match=True)
        recompress = hdiffpatch.recompress_lite
    else:
        raw = hdiffpatch.diff(old, new, compression="none", big_cache_match=True)
        recompress = hdiffpatch.recompress
    best, winner, tried = raw, "none", 0
    for label, setting in hdiff_candidates():
        try:
            patch = recompress(raw, setting)
        except (hdiffpatch.HDiffPatchError, ValueError):
            continue  # a codec this binding (or this format) lacks
        tried += 1
        if len(patch) < len(best):
            best, winner = patch, label
    return best, winner, tried


def create(tool: str, old: Path, new: Path, patch: Path, dtype: str) -> None:
    if tool in HDIFF_TOOLS:
        data, winner, tried = hdiff_best(old.read_bytes(), new.read_bytes(), lite=tool == "hdiffpatch-lite")
        patch.write_bytes(data)
        notes_path(patch).write_text(f"compressor {winner} (smallest of {tried} tried)\n")
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
    elif tool == "hdiffpatch-lite":
        import hdiffpatch

        out.write_bytes(hdiffpatch.apply_lite(old.read_bytes(), patch.read_bytes()))
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
