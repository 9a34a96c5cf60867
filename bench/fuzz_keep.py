"""Structure-aware differential fuzzing of the ``lorien`` delta engine against the generic differs.

An on-demand tool (not a test): it checks the engine's "Keep" promises of issue 15 on pairs the bench corpus
never makes —

- ``create`` never crashes: any (old, new) pair of regular files gives a patch (a refusal must be a
  ``LorienError`` with a message, never another exception);
- byte-exact round trip: ``apply`` of the patch to old gives new, byte for byte;
- size: the patch is never larger than the best generic tool + 1 KiB (bsdiff4 through its Python module,
  ``xdelta3 -9 -e -s`` and ``zstd -19 --long=W --patch-from``, with the options ``bench/run.py`` uses).

Data flow, per case ``i`` of a run with ``--seed S``::

    numpy default_rng([S, i]) + recipe RECIPES[i % len(RECIPES)] (or the ``--recipes`` subset)
      → a base: a model of ``bench.corpus`` (tiny or small architecture; tflite, onnx, safetensors, gguf,
        pt or npz; one of its scenarios' (old, new) models) or random / compressible bytes
      → the recipe turns it into (old, new) bytes: byte-level edits (insert / delete / overwrite chunks,
        truncate, append, duplicate, swap), structure-level edits of the model (reorder, rename, one tensor's
        dtype or shape, metadata that shifts the data, GGUF alignment, zip entries stored ↔ deflated),
        value-level edits (scale, add, negate, fewer mantissa bits, int8, shuffled rows, a transposed matrix)
        or degenerate pairs (empty, 1 byte, identical, + 1 byte, two formats, zeros, patterns, sizes at the
        engine's thresholds)
      → ``lorien.repo.engine.create_patch`` / ``apply_patch`` (what ``lorien diff`` / ``lorien apply`` call;
        the engine instance is swapped for one with ``--workers`` threads, which does not change any byte)
      → bsdiff4, xdelta3, zstd --patch-from on the same files (their sizes; a tool that fails is skipped)
      → a violation (crash, refusal, round trip, size > best generic + 1024) saves old/new and ``case.json``
        under ``--cases DIR/<name>/`` (a case's pair follows from seed, index and recipe name alone: re-run it
        with ``--seed S --recipes R --only I``)
      → ``--out FILE`` (JSON, rewritten after every case): parameters, per case recipe, detail, sizes,
        status, and a summary per recipe.

Usage: ``.venv/bin/python -m bench.fuzz_keep [--seed 0] [--cases-count 300] [--recipes a,b] [--only I]
[--out /tmp/fuzz_keep.json] [--cases /work/fuzz-cases] [--max-bytes 2000000] [--workers 1]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bsdiff4
import ml_dtypes
import numpy as np

from bench import corpus
from bench.run import SLACK_BYTES, zstd_window_log

Rng = np.random.Generator
FORMATS = corpus.FORMATS
TINY = corpus.Arch(d_model=16, n_layers=2, vocab=64)  # ~25 KB of float32: every tensor under 4 KiB or near it
BASE_SCENARIOS = ("dense", "sparse", "fp16-dense", "requant-int8", "identical", "last-layers")
THRESHOLDS = (1024, 4096, 64 * 1024, 1 << 20, 2 << 20)  # sizes the engine switches behaviour at (≤ 2 MiB)
BF16 = np.dtype(ml_dtypes.bfloat16)


# --------------------------------------------------------------------------- bases: models and bytes


@dataclass
class Built:
    """One generated case: the pair and how it was made."""

    old: bytes
    new: bytes
    detail: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[tuple[str, str, int], tuple[corpus.Model, corpus.Model]] = {}


def base_models(
    rng: Rng, scenario: str | None = None, arch: str | None = None
) -> tuple[corpus.Model, corpus.Model, dict]:
    """An (old, new) model pair of a corpus scenario at the tiny or small architecture (cached per seed)."""
    scenario = scenario or str(rng.choice(BASE_SCENARIOS))
    arch = arch or str(rng.choice(["tiny", "small"]))
    model_seed = int(rng.integers(0, 4))
    key = (scenario, arch, model_seed)
    if key not in _MODELS:
        if arch == "small":
            _MODELS[key] = corpus.make_pair("small", scenario, model_seed)
        else:
            model_rng = np.random.default_rng([model_seed, corpus.stable_hash(f"tiny-{scenario}")])
            base = corpus.random_model(TINY, model_rng)
            if scenario == "dense":
                pair = (base, corpus.dense_fine_tune(base, model_rng))
            elif scenario == "sparse":
                pair = (base, corpus.sparse_update(base, model_rng))
            elif scenario == "fp16-dense":
                new = corpus.dense_fine_tune(base, model_rng)
                pair = (base.map(lambda _n, a: a.astype(np.float16)), new.map(lambda _n, a: a.astype(np.float16)))
            elif scenario == "requant-int8":
                pair = (corpus.quantize_int8(base), corpus.quantize_int8(corpus.dense_fine_tune(base, model_rng)))
            elif scenario == "last-layers":
                pair = (base, corpus.retrain_last_layers(base, model_rng, 1))
            else:
                pair = (base, base)
            _MODELS[key] = pair
    old, new = _MODELS[key]
    return old, new, {"scenario": scenario, "arch": arch, "model_seed": model_seed}


def _copy(model: corpus.Model, tensors: dict[str, np.ndarray] | None = None) -> corpus.Model:
    return corpus.Model(model.arch, list(model.layers), dict(model.tensors if tensors is None else tensors))


def write_model(model: corpus.Model, fmt: str, *, order: list[str] | None = None, **options: Any) -> bytes:
    """The bytes of ``model`` in ``fmt``; ``order`` the tensors' order in the file; ``options`` per format:
    ``meta`` (extra metadata characters), ``alignment`` (GGUF), ``deflate`` (zip formats: "all" or a share)."""
    tensors = model.tensors if order is None else {name: model.tensors[name] for name in order}
    meta_pad = "x" * options.get("meta", 0)
    with tempfile.TemporaryDirectory(prefix="fuzzkeep-w-") as tmp:
        path = Path(tmp) / f"m.{corpus.EXTENSIONS[fmt]}"
        if fmt == "safetensors":
            return _safetensors(tensors, meta_pad)
        if fmt == "gguf":
            _gguf(model, tensors, path, meta_pad, options.get("alignment"))
        elif fmt == "tflite":
            data = corpus.tensors_to_tflite(list(tensors.items()), "fuzz" + meta_pad)
            return bytes(data)
        elif fmt == "onnx":
            return _onnx(model, tensors, meta_pad, options)
        elif fmt == "pt":
            from bench.torch_checkpoint import write_torch_checkpoint

            write_torch_checkpoint(path, dict(tensors))
        elif fmt == "npz":
            with open(path, "wb") as handle:
                np.savez(handle, **tensors)
        else:
            raise ValueError(fmt)
        data = path.read_bytes()
    if fmt in ("pt", "npz") and (options.get("deflate") or meta_pad):
        data = rezip(data, options.get("deflate"), meta_pad, options.get("deflate_seed", 0))
    return data


def _safetensors(tensors: dict[str, np.ndarray], meta_pad: str) -> bytes:
    """safetensors by hand, so the tensors keep the given order (the library sorts them)."""
    names = {
        np.dtype(np.float32): "F32",
        np.dtype(np.float16): "F16",
        BF16: "BF16",
        np.dtype(np.int8): "I8",
        np.dtype(np.int32): "I32",
    }
    header: dict[str, Any] = {"__metadata__": {"description": "fuzz" + meta_pad}}
    offset, blobs = 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _gguf(
    model: corpus.Model, tensors: dict[str, np.ndarray], path: Path, meta_pad: str, alignment: int | None
) -> None:
    import gguf

    from bench import ggml_quants

    writer = gguf.GGUFWriter(path, arch="lorienbench")
    writer.add_name("fuzz" + meta_pad)
    if alignment:
        writer.add_custom_alignment(alignment)
    ggml_quants.add_tensors(writer, tensors, model.ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _onnx(model: corpus.Model, tensors: dict[str, np.ndarray], meta_pad: str, options: dict[str, Any]) -> bytes:
    """The corpus's ONNX graph when the model still fits it, else a graph of initializers only (dtype/shape
    edits make the real graph inconsistent, which ONNX's checker refuses); initializers in ``tensors`` order."""
    from onnx import helper, numpy_helper

    try:
        proto = corpus.onnx_model(_copy(model, dict(tensors)), corpus.Meta("fuzz", 1))
    except Exception:
        inits = [numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in tensors.items()]
        graph = helper.make_graph([], "fuzz", [], [], initializer=inits)
        proto = helper.make_model(graph, producer_name="fuzz")
    by_name = {init.name: init for init in proto.graph.initializer}
    if set(by_name) >= set(tensors) and options.get("reorder_onnx"):
        ordered = [by_name[n] for n in tensors if n in by_name] + [
            i for n, i in by_name.items() if n not in tensors
        ]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(ordered)
    proto.doc_string = "fuzz" + meta_pad
    return proto.SerializeToString()


def rezip(data: bytes, deflate: Any, meta_pad: str, seed: int) -> bytes:
    """Rewrite a zip with entries deflated (``deflate`` "all", "none" or a share picked by ``seed``) and, with
    ``meta_pad``, an archive comment and an extra entry first that shift every entry."""
    rng = np.random.default_rng(seed)
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        if meta_pad:
            archive.writestr(zipfile.ZipInfo("meta.txt", date_time=(1980, 1, 1, 0, 0, 0)), meta_pad)
        for info in source.infolist():
            body = source.read(info)
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            if deflate == "all" or (isinstance(deflate, float) and rng.random() < deflate):
                entry.compress_type = zipfile.ZIP_DEFLATED
            elif deflate == "none" or deflate is None:
                entry.compress_type = zipfile.ZIP_STORED
            else:
                entry.compress_type = info.compress_type
            archive.writestr(entry, body)
    return out.getvalue()


def pick_format(rng: Rng, allowed: tuple[str, ...] = FORMATS) -> str:
    return str(rng.choice(allowed))


def random_bytes(rng: Rng, size: int) -> bytes:
    kind = rng.integers(0, 4)
    if kind == 0:
        return rng.bytes(size)
    if kind == 1:  # float32 weights as raw bytes
        return (rng.standard_normal(size // 4 + 1, dtype=np.float32) * np.float32(0.05)).tobytes()[:size]
    if kind == 2:  # text-like, compressible
        words = [rng.bytes(int(rng.integers(2, 9))) for _ in range(64)]
        out = bytearray()
        while len(out) < size:
            out += words[int(rng.integers(0, 64))] + b" "
        return bytes(out[:size])
    return (rng.integers(-3, 4, size // 2 + 1, dtype=np.int16)).tobytes()[:size]  # low-entropy int16


def model_base(rng: Rng, fmt: str | None = None) -> tuple[bytes, bytes, dict]:
    fmt = fmt or pick_format(rng)
    old, new, detail = base_models(rng)
    if fmt != "gguf" and old.tensors and any(a.dtype == BF16 for a in old.tensors.values()):
        fmt = "safetensors"
    return write_model(old, fmt), write_model(new, fmt), detail | {"format": fmt}


# --------------------------------------------------------------------------- byte-level edits


def _chunk(rng: Rng) -> int:
    return int(np.exp(rng.uniform(0, np.log(64 * 1024))))  # 1 B .. 64 KiB, log-uniform


def _where(rng: Rng, length: int) -> int:
    roll = rng.random()
    if roll < 0.15:
        return 0
    if roll < 0.3:
        return length
    return int(rng.integers(0, length + 1))


def byte_edit(rng: Rng, data: bytes, op: str, k: int) -> tuple[bytes, list]:
    out = bytearray(data)
    log: list = []
    for _ in range(k):
        n = len(out)
        if op == "insert":
            at, size = _where(rng, n), _chunk(rng)
            filler = (
                rng.bytes(size) if rng.random() < 0.5 else bytes(out[max(0, at - size) : at]) or rng.bytes(size)
            )
            out[at:at] = filler
            log.append((op, at, len(filler)))
        elif op == "delete" and n:
            at = min(_where(rng, n), n - 1)
            size = min(_chunk(rng), n - at)
            del out[at : at + size]
            log.append((op, at, size))
        elif op == "overwrite" and n:
            at = min(_where(rng, n), n - 1)
            size = min(_chunk(rng), n - at)
            out[at : at + size] = rng.bytes(size)
            log.append((op, at, size))
        elif op == "truncate" and n:
            keep = int(rng.integers(0, n))
            del out[keep:]
            log.append((op, keep))
        elif op == "append":
            size = _chunk(rng)
            out += rng.bytes(size) if rng.random() < 0.5 else bytes(out[:size])
            log.append((op, size))
        elif op == "duplicate" and n:
            start = int(rng.integers(0, n))
            size = min(_chunk(rng), n - start)
            at = _where(rng, n)
            out[at:at] = out[start : start + size]
            log.append((op, start, size, at))
        elif op == "swap" and n > 2:
            a, b = sorted(int(x) for x in rng.integers(0, n, 2))
            size = min(_chunk(rng), b - a, n - b)
            if size > 0:
                first, second = bytes(out[a : a + size]), bytes(out[b : b + size])
                out[a : a + size], out[b : b + size] = second, first
                log.append((op, a, b, size))
    return bytes(out), log


BYTE_OPS = ("insert", "delete", "overwrite", "truncate", "append", "duplicate", "swap")


def recipe_bytes(op: str) -> Callable[[Rng], Built]:
    def build(rng: Rng) -> Built:
        if rng.random() < 0.75:
            old, new, detail = model_base(rng)
            if rng.random() < 0.5:
                new = old
                detail["base"] = "old"
        else:
            size = int(rng.choice([1000, 5000, 70_000, 300_000]))
            old = random_bytes(rng, size)
            new, detail = old, {"format": "random", "size": size}
        k = 1 if op == "truncate" else int(rng.integers(1, 6))
        new, log = byte_edit(rng, new, op, k)
        return Built(old, new, detail | {"edits": log})

    return build


def recipe_bytes_mix(rng: Rng) -> Built:
    old, new, detail = model_base(rng)
    log: list = []
    for _ in range(int(rng.integers(2, 6))):
        new, more = byte_edit(rng, new, str(rng.choice(BYTE_OPS)), 1)
        log += more
    return Built(old, new, detail | {"edits": log})


# --------------------------------------------------------------------------- structure-level edits


def _model_pair(rng: Rng, fmts: tuple[str, ...] = FORMATS) -> tuple[corpus.Model, corpus.Model, str, dict]:
    old, new, detail = base_models(rng, scenario=str(rng.choice(["dense", "sparse", "identical", "fp16-dense"])))
    fmt = pick_format(rng, fmts)
    return old, new, fmt, detail | {"format": fmt}


def recipe_reorder(rng: Rng) -> Built:
    old, new, fmt, detail = _model_pair(rng)
    order = list(new.tensors)
    how = str(rng.choice(["shuffle", "reverse", "move-one"]))
    if how == "shuffle":
        order = [order[i] for i in rng.permutation(len(order))]
    elif how == "reverse":
        order.reverse()
    else:
        name = order.pop(int(rng.integers(0, len(order))))
        order.insert(int(rng.integers(0, len(order) + 1)), name)
    return Built(
        write_model(old, fmt), write_model(new, fmt, order=order, reorder_onnx=True), detail | {"how": how}
    )


def recipe_rename(rng: Rng) -> Built:
    old, new, fmt, detail = _model_pair(rng, ("tflite", "safetensors", "gguf", "pt", "npz"))
    names = list(new.tensors)
    share = float(rng.choice([0.1, 0.5, 1.0]))
    renamed = {n: (f"model.{n}.renamed" if rng.random() < share else n) for n in names}
    tensors = {renamed[n]: a for n, a in new.tensors.items()}
    return Built(write_model(old, fmt), write_model(_copy(new, tensors), fmt), detail | {"share": share})


DTYPE_CHANGES = (("float32", "float16"), ("float32", "bfloat16"), ("float16", "float32"))


def recipe_dtype(rng: Rng) -> Built:
    src, dst = DTYPE_CHANGES[int(rng.integers(0, len(DTYPE_CHANGES)))]
    fmts = (
        ("safetensors", "gguf")
        if "bfloat16" in (src, dst)
        else ("tflite", "onnx", "safetensors", "gguf", "pt", "npz")
    )
    if src == "float16":
        old, new, detail = base_models(rng, scenario="fp16-dense")
    else:
        old, new, detail = base_models(rng, scenario=str(rng.choice(["dense", "identical"])))
    fmt = pick_format(rng, fmts)
    target = BF16 if dst == "bfloat16" else np.dtype(dst)
    candidates = [n for n, a in new.tensors.items() if a.dtype == np.dtype(src) and a.size >= 8]
    how_many = 1 if rng.random() < 0.7 else len(candidates)
    chosen = (
        sorted(
            rng.choice(candidates, min(how_many, len(candidates)), replace=False).tolist(),
            key=lambda n: -new.tensors[n].nbytes,
        )
        if candidates
        else []
    )
    if rng.random() < 0.5 and candidates:  # the largest tensor, where it matters most
        chosen = [max(candidates, key=lambda n: new.tensors[n].nbytes)]
    tensors = {n: (a.astype(target) if n in chosen else a) for n, a in new.tensors.items()}
    return Built(
        write_model(old, fmt),
        write_model(_copy(new, tensors), fmt),
        detail | {"format": fmt, "change": f"{src}->{dst}", "tensors": chosen[:5], "count": len(chosen)},
    )


def recipe_shape(rng: Rng) -> Built:
    old, new, fmt, detail = _model_pair(rng, ("tflite", "safetensors", "gguf", "pt", "npz", "onnx"))
    mats = [n for n, a in new.tensors.items() if a.ndim == 2]
    name = str(rng.choice(mats))
    array = new.tensors[name]
    rows = int(rng.integers(1, max(2, array.shape[0] // 4)))
    grow = rng.random() < 0.5
    axis = int(rng.integers(0, 2))
    if grow:
        extra_shape = list(array.shape)
        extra_shape[axis] = rows
        extra = (rng.standard_normal(extra_shape, dtype=np.float32) * np.float32(0.05)).astype(array.dtype)
        changed = np.concatenate([array, extra], axis=axis)
    else:
        rows = min(rows, array.shape[axis] - 1)
        changed = array[:-rows] if axis == 0 else array[:, :-rows]
    tensors = dict(new.tensors)
    tensors[name] = np.ascontiguousarray(changed)
    return Built(
        write_model(old, fmt),
        write_model(_copy(new, tensors), fmt),
        detail | {"tensor": name, "axis": axis, "grow": grow, "rows": rows},
    )


def recipe_metadata(rng: Rng) -> Built:
    old, new, fmt, detail = _model_pair(rng)
    shift = int(rng.choice([1, 2, 3, 5, 7, 13, 17, 31, 33, 63, 100, 1001, 4097]))
    return Built(write_model(old, fmt), write_model(new, fmt, meta=shift), detail | {"meta": shift})


def recipe_gguf_align(rng: Rng) -> Built:
    old, new, _fmt, detail = _model_pair(rng, ("gguf",))
    new_alignment = int(rng.choice([64, 128, 16, 8]))
    return Built(
        write_model(old, "gguf"),
        write_model(new, "gguf", alignment=new_alignment),
        detail | {"alignment": new_alignment},
    )


def recipe_zip_compress(rng: Rng) -> Built:
    old, new, fmt, detail = _model_pair(rng, ("pt", "npz"))
    deflate: Any = str(rng.choice(["all", "some"]))
    deflate = float(rng.choice([0.2, 0.5])) if deflate == "some" else deflate
    seed = int(rng.integers(0, 1 << 30))
    old_bytes, new_bytes = write_model(old, fmt), write_model(new, fmt, deflate=deflate, deflate_seed=seed)
    if rng.random() < 0.4:  # the other way round: deflated old, stored new
        old_bytes, new_bytes = write_model(old, fmt, deflate="all"), write_model(new, fmt)
        deflate = "old all, new stored"
    return Built(old_bytes, new_bytes, detail | {"deflate": deflate})


# --------------------------------------------------------------------------- value-level edits


def _mantissa(array: np.ndarray, keep: int) -> np.ndarray:
    if array.dtype == np.float32:
        bits = array.view(np.uint32) & np.uint32((0xFFFFFFFF << (23 - keep)) & 0xFFFFFFFF)
        return bits.view(np.float32)
    if array.dtype == np.float16:
        bits = array.view(np.uint16) & np.uint16((0xFFFF << (10 - min(keep, 10))) & 0xFFFF)
        return bits.view(np.float16)
    return array


VALUE_OPS = ("scale", "add", "negate", "mantissa", "quantize", "shuffle-rows", "transpose")


def recipe_value(op: str) -> Callable[[Rng], Built]:
    def build(rng: Rng) -> Built:
        old, _new, fmt, detail = _model_pair(rng)
        floats = [n for n, a in old.tensors.items() if a.dtype in (np.float32, np.float16)]
        mats = [n for n in floats if old.tensors[n].ndim == 2]
        scope = "all" if op in ("scale", "add", "negate", "mantissa", "quantize") and rng.random() < 0.6 else "one"
        targets = (
            floats
            if scope == "all"
            else [str(rng.choice(mats if op in ("shuffle-rows", "transpose") else floats))]
        )
        if fmt == "onnx" and op == "transpose":
            fmt = "safetensors"  # a transposed weight breaks the graph's shapes
        if fmt == "onnx" and op == "quantize":
            fmt = "npz"
        value = (
            float(rng.choice([0.5, 2.0, 1.001, 0.999, 3.0]))
            if op == "scale"
            else float(rng.choice([1e-3, 0.1, 1.0]))
        )
        keep = int(rng.choice([3, 7, 10, 16]))
        tensors = dict(old.tensors)
        for name in targets:
            a = tensors[name]
            if op == "scale":
                b = (a * a.dtype.type(value)).astype(a.dtype)
            elif op == "add":
                b = (a + a.dtype.type(value)).astype(a.dtype)
            elif op == "negate":
                b = -a
            elif op == "mantissa":
                b = _mantissa(a, keep)
            elif op == "quantize":
                scale = max(float(np.abs(a).max()), 1e-12) / 127.0
                b = np.clip(np.rint(a / scale), -127, 127).astype(np.int8)
            elif op == "shuffle-rows":
                b = a[rng.permutation(a.shape[0])]
            else:
                b = a.T
            tensors[name] = np.ascontiguousarray(b)
        return Built(
            write_model(old, fmt),
            write_model(_copy(old, tensors), fmt),
            detail | {"format": fmt, "scope": scope, "tensors": targets[:3], "value": value, "keep": keep},
        )

    return build


# --------------------------------------------------------------------------- degenerate pairs


DEGENERATE = (
    "empty-old",
    "empty-new",
    "empty-both",
    "one-byte",
    "identical",
    "plus-one",
    "cross-format",
    "zeros",
    "pattern",
    "threshold",
    "threshold-models",
)


def recipe_degenerate(kind: str) -> Callable[[Rng], Built]:
    def build(rng: Rng) -> Built:
        if kind in ("empty-old", "empty-new", "empty-both"):
            data = (
                model_base(rng)[0] if rng.random() < 0.5 else random_bytes(rng, int(rng.choice([1, 100, 10_000])))
            )
            old, new = (b"", data) if kind == "empty-old" else (data, b"") if kind == "empty-new" else (b"", b"")
            return Built(old, new, {"size": len(data)})
        if kind == "one-byte":
            choices = [b"", b"\x00", b"\xff", rng.bytes(1), rng.bytes(2)]
            old, new = choices[int(rng.integers(0, 5))], choices[int(rng.integers(1, 5))]
            return Built(old, new, {})
        if kind == "identical":
            old = model_base(rng)[0] if rng.random() < 0.6 else random_bytes(rng, int(rng.integers(1, 300_000)))
            return Built(old, old, {"size": len(old)})
        if kind == "plus-one":
            old, _new, detail = model_base(rng) if rng.random() < 0.6 else (random_bytes(rng, 50_000), b"", {})
            where = str(rng.choice(["end", "start", "middle"]))
            byte = rng.bytes(1)
            at = {"end": len(old), "start": 0, "middle": len(old) // 2}[where]
            return Built(old, old[:at] + byte + old[at:], detail | {"where": where})
        if kind == "cross-format":
            a, b = rng.choice(FORMATS, 2, replace=False)
            old_m, new_m, detail = base_models(rng, scenario=str(rng.choice(["identical", "dense"])))
            if any(x.dtype == BF16 for x in old_m.tensors.values()):
                a, b = "safetensors", "gguf"
            return Built(
                write_model(old_m, str(a)), write_model(new_m, str(b)), detail | {"old": str(a), "new": str(b)}
            )
        if kind == "zeros":
            size = int(rng.choice([1, 4095, 4096, 65536, 1 << 20, 2_000_000]))
            other = int(rng.choice([0, 1, size, size + 1, size // 2]))
            new = bytes(size)
            old = bytes(other) if rng.random() < 0.5 else random_bytes(rng, max(other, 1))
            if rng.random() < 0.3:
                new, old = old, new
            return Built(old, new, {"size": size, "other": other})
        if kind == "pattern":
            unit = rng.bytes(int(rng.choice([1, 2, 3, 4, 7, 16, 1000])))
            size = int(rng.choice([5000, 65_537, 1_000_000]))
            new = (unit * (size // len(unit) + 1))[:size]
            old = (unit * (size // len(unit) + 2))[1 : size + 1] if rng.random() < 0.5 else random_bytes(rng, size)
            return Built(old, new, {"unit": len(unit), "size": size})
        if kind == "threshold":
            edge = int(rng.choice(THRESHOLDS))
            size = max(1, edge + int(rng.choice([-1, 0, 1, -4, 4])))
            old = random_bytes(rng, size)
            new, log = byte_edit(rng, old, str(rng.choice(["overwrite", "insert", "delete"])), 2)
            if rng.random() < 0.5:
                new = new[:size] + bytes(max(0, size - len(new)))
            return Built(old, new, {"size": size, "edits": log})
        # threshold-models: a float32 tensor file of a threshold's size, sparsely or densely nudged
        edge = int(rng.choice(THRESHOLDS[1:]))
        elements = max(1, (edge + int(rng.choice([-4, 0, 4]))) // 4)
        array = rng.standard_normal(elements, dtype=np.float32) * np.float32(0.05)
        changed = corpus._nudge(rng, array) if rng.random() < 0.5 else array.copy()
        if changed is not array:
            pass
        flat = changed.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 100))] += np.float32(0.01)
        fmt = pick_format(rng, ("safetensors", "npz", "gguf", "tflite"))
        model = corpus.Model(TINY, [], {"w": array})
        new_model = corpus.Model(TINY, [], {"w": changed})
        return Built(write_model(model, fmt), write_model(new_model, fmt), {"format": fmt, "bytes": array.nbytes})

    return build


def recipe_generic_fine_tune(rng: Rng) -> Built:
    """Raw weights in no format lorien parses (float32, float16 or bfloat16), densely fine-tuned, behind a
    header that grew, shrank or stayed (k bytes), at sizes on both sides of the engine's thresholds (≤ 2 MB)."""
    dtype = [np.dtype(np.float32), np.dtype(np.float16), BF16][int(rng.integers(0, 3))]
    size = int(rng.choice([20_000, 70_000, 130_000, 300_000, 1_000_000, 2_000_000]))
    elements = size // dtype.itemsize
    weights = rng.standard_normal(elements, dtype=np.float32) * np.float32(0.05)
    tuned = corpus._nudge(rng, weights)
    header = rng.bytes(int(rng.integers(0, 64)))
    grown = int(rng.choice([-3, -1, 0, 1, 2, 4, 5, 8, 100]))
    new_header = header[: max(0, len(header) + grown)] if grown < 0 else header + rng.bytes(grown)
    old = header + weights.astype(dtype).tobytes()
    new = new_header + tuned.astype(dtype).tobytes()
    return Built(old, new, {"dtype": str(dtype), "size": size, "header": len(header), "grown": grown})


RECIPES: dict[str, Callable[[Rng], Built]] = {
    **{f"bytes-{op}": recipe_bytes(op) for op in BYTE_OPS},
    "bytes-mix": recipe_bytes_mix,
    "struct-reorder": recipe_reorder,
    "struct-rename": recipe_rename,
    "struct-dtype": recipe_dtype,
    "struct-shape": recipe_shape,
    "struct-metadata": recipe_metadata,
    "struct-gguf-align": recipe_gguf_align,
    "struct-zip-compress": recipe_zip_compress,
    **{f"value-{op}": recipe_value(op) for op in VALUE_OPS},
    **{f"degenerate-{kind}": recipe_degenerate(kind) for kind in DEGENERATE},
    "generic-fine-tune": recipe_generic_fine_tune,
}


# --------------------------------------------------------------------------- running one case


def generic_sizes(old: Path, new: Path, work: Path) -> dict[str, int | None]:
    """Patch sizes of the generic tools (None when a tool fails on the pair), with bench/run.py's options."""
    sizes: dict[str, int | None] = {}
    try:
        sizes["bsdiff4"] = len(bsdiff4.diff(old.read_bytes(), new.read_bytes()))
    except Exception:
        sizes["bsdiff4"] = None
    w = zstd_window_log(old.stat().st_size, new.stat().st_size)
    commands = {
        "xdelta3": ["xdelta3", "-9", "-e", "-f", "-s", str(old), str(new), str(work / "p.xd3")],
        "zstd-patch-from": [
            "zstd",
            "-19",
            f"--long={w}",
            f"--patch-from={old}",
            str(new),
            "-o",
            str(work / "p.zst"),
            "-f",
            "-q",
        ],
    }
    outputs = {"xdelta3": work / "p.xd3", "zstd-patch-from": work / "p.zst"}
    for tool, argv in commands.items():
        outputs[tool].unlink(missing_ok=True)
        done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
        sizes[tool] = outputs[tool].stat().st_size if done.returncode == 0 and outputs[tool].exists() else None
    return sizes


def run_case(old_bytes: bytes, new_bytes: bytes) -> dict[str, Any]:
    """Create, apply and compare one pair; returns status ("ok", "crash", "refused", "mismatch", "apply-error",
    "size") with sizes."""
    from lorien.repo.engine import apply_patch, create_patch
    from lorien.repo.errors import LorienError

    result: dict[str, Any] = {"old_bytes": len(old_bytes), "new_bytes": len(new_bytes)}
    with tempfile.TemporaryDirectory(prefix="fuzzkeep-") as tmp:
        work = Path(tmp)
        old, new, patch, out = work / "old.bin", work / "new.bin", work / "p.lrn", work / "out.bin"
        old.write_bytes(old_bytes)
        new.write_bytes(new_bytes)
        started = time.perf_counter()
        try:
            create_patch(old, new, patch)
        except LorienError as error:
            return result | {"status": "refused", "error": str(error)}
        except Exception as error:
            return result | {
                "status": "crash",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-3000:],
            }
        result["create_seconds"] = round(time.perf_counter() - started, 3)
        result["lorien"] = patch.stat().st_size
        try:
            apply_patch(old, patch, out)
        except Exception as error:
            return result | {
                "status": "apply-error",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-3000:],
            }
        if out.read_bytes() != new_bytes:
            return result | {"status": "mismatch"}
        generic = generic_sizes(old, new, work)
        result["generic"] = generic
        known = [size for size in generic.values() if size is not None]
        result["best_generic"] = min(known) if known else None
        if known and result["lorien"] > min(known) + SLACK_BYTES:
            return result | {"status": "size"}
    return result | {"status": "ok"}


def save_case(cases: Path, name: str, built: Built, record: dict[str, Any]) -> Path:
    directory = cases / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "old.bin").write_bytes(built.old)
    (directory / "new.bin").write_bytes(built.new)
    (directory / "case.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return directory


def build_case(seed: int, index: int, recipe: str) -> Built:
    _MODELS.clear() if len(_MODELS) > 24 else None
    return RECIPES[recipe](np.random.default_rng([seed, index, corpus.stable_hash(recipe)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_keep", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases-count", type=int, default=300, help="cases to run (recipes round-robin)")
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--only", type=int, action="append", help="run only these case indices")
    parser.add_argument(
        "--recipes", type=lambda s: corpus.parse_list(s, tuple(RECIPES), "recipe"), default=list(RECIPES)
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/fuzz_keep.json"))
    parser.add_argument("--cases", type=Path, default=Path("/work/fuzz-cases"))
    parser.add_argument("--max-bytes", type=int, default=2_000_000, help="skip pairs with a larger file")
    parser.add_argument("--workers", type=int, default=1, help="threads of the lorien engine (bytes unchanged)")
    parser.add_argument("--time-budget", type=float, default=0, help="stop starting cases after this many s")
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(
            f"--out {args.out} is a directory: give the JSON file to write, e.g. {args.out / 'fuzz.json'}"
        )

    from lorien.repo import engine as engine_api
    from lorien.repo.engine.lorien_engine import LorienEngine

    engine_api._ENGINES[LorienEngine.name] = LorienEngine(workers=args.workers)
    indices = args.only or list(range(args.start, args.start + args.cases_count))
    report: dict[str, Any] = {"seed": args.seed, "recipes": args.recipes, "slack_bytes": SLACK_BYTES, "cases": []}
    started = time.perf_counter()
    for index in indices:
        if args.time_budget and time.perf_counter() - started > args.time_budget:
            break
        recipe = args.recipes[index % len(args.recipes)]
        record: dict[str, Any] = {"index": index, "recipe": recipe, "seed": args.seed}
        try:
            built = build_case(args.seed, index, recipe)
        except Exception as error:
            record |= {
                "status": "build-error",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-2000:],
            }
            report["cases"].append(record)
            print(f"{index:4d} {recipe:28s} build-error {error}", flush=True)
            continue
        record["detail"] = built.detail
        if max(len(built.old), len(built.new)) > args.max_bytes:
            record["status"] = "skipped-size"
        else:
            record |= run_case(built.old, built.new)
        if record["status"] not in ("ok", "skipped-size"):
            name = f"s{args.seed}-{index}-{recipe}"
            record["saved"] = str(save_case(args.cases, name, built, record))
        report["cases"].append(record)
        generic = record.get("generic") or {}
        print(
            f"{index:4d} {recipe:28s} {record['status']:8s} old {len(built.old):>9,} new {len(built.new):>9,} "
            f"lorien {record.get('lorien', '-')!s:>8} best {record.get('best_generic', '-')!s:>8} "
            + " ".join(f"{k}={v}" for k, v in generic.items()),
            flush=True,
        )
        report["summary"] = summarise(report["cases"])
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    report["summary"] = summarise(report["cases"])
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, int]] = {}
    worst: list[tuple[float, int, str]] = []
    for case in cases:
        counts = per.setdefault(case["recipe"], {})
        counts[case["status"]] = counts.get(case["status"], 0) + 1
        if case.get("lorien") is not None and case.get("best_generic"):
            worst.append((case["lorien"] - case["best_generic"], case["index"], case["recipe"]))
    worst.sort(reverse=True)
    return {
        "per_recipe": per,
        "largest_margin_over_best_generic": worst[:10],
        "violations": sum(c["status"] not in ("ok", "skipped-size") for c in cases),
    }


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
