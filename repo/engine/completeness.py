"""Is a model file whole? Structural checks that catch a file whose copy stalled half way.

The publisher asks before it takes a *new* file as a version (``lorien watch`` publishes a file once it has
not changed for ``--settle`` seconds; a copy that pauses longer would otherwise be published half written).
A file is judged only when it claims a format we parse — by its extension *and* its magic bytes — so an
unknown or unrelated file is never refused here:

- TFLite (``TFL3`` at byte 4): the FlatBuffer's tables and every buffer lie inside the file;
- ONNX (protobuf starting with ``ir_version``): the ``ModelProto`` parses to its end and has a graph;
- safetensors (``{`` after the 8-byte header length): the JSON header and every ``data_offsets`` end inside;
- GGUF (``GGUF``): the tensor table parses and every tensor of a known type has all its bytes;
- zip containers (``.zip``, ``.pt``, ``.pth``, ``.keras``, ``.npz`` starting ``PK``): the end-of-central-directory
  record is there.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Callable
from pathlib import Path

from lorien.repo.engine.formats import Buffer, TensorRegion, read_gguf, read_onnx, read_safetensors, read_tflite

ZIP_EXTENSIONS = {"zip", "pt", "pth", "keras", "npz"}
_EOCD = b"PK\x05\x06"
_EOCD_SEARCH = 22 + 0xFFFF  # the record, plus the longest archive comment
_PARSE_ERRORS = (ValueError, TypeError, IndexError, OverflowError, struct.error, RecursionError)
# GGML block-quantized types: (elements per block, bytes per block)
_GGML_BLOCKS = {
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
}
_PLAIN_WIDTHS = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2, "int16": 2}


def _claims_safetensors(data: Buffer) -> bool:
    return len(data) >= 9 and data[8:9] == b"{" and struct.unpack_from("<Q", data)[0] < 100 * 1024 * 1024


def _claims_onnx(data: Buffer) -> bool:
    return len(data) >= 3 and data[0] == 0x08 and 0 < data[1] < 0x80  # field 1 (ir_version), a small varint


def _gguf_tensor_bytes(region: TensorRegion) -> int | None:
    elements = math.prod(region.shape)
    if region.dtype in _PLAIN_WIDTHS:
        return elements * _PLAIN_WIDTHS[region.dtype]
    if region.dtype.startswith("ggml") and region.dtype[4:].isdigit():
        block = _GGML_BLOCKS.get(int(region.dtype[4:]))
        if block is not None:
            return -(-elements // block[0]) * block[1]
    return None  # a type whose size we do not know: trust the table


def _gguf_problem(data: Buffer) -> str | None:
    regions = read_gguf(data)
    if regions is None:
        return "its tensor table does not parse, or a tensor starts past the end of the file"
    for region in regions:
        needed = _gguf_tensor_bytes(region)
        if needed is not None and region.offset + needed > len(data):
            return f"tensor {region.name!r} needs {region.offset + needed} bytes, the file has {len(data)}"
    return None


def _parses(reader: Callable[[Buffer], list[TensorRegion] | None], why: str) -> Callable[[Buffer], str | None]:
    def problem(data: Buffer) -> str | None:
        return why if reader(data) is None else None

    return problem


_CHECKS: dict[str, tuple[str, Callable[[Buffer], bool], Callable[[Buffer], str | None]]] = {
    "tflite": (
        "TFLite",
        lambda data: len(data) >= 8 and data[4:8] == b"TFL3",
        _parses(read_tflite, "its FlatBuffer does not parse: a table or buffer lies past the end of the file"),
    ),
    "onnx": (
        "ONNX",
        _claims_onnx,
        _parses(read_onnx, "its protobuf does not parse to the end, or has no graph"),
    ),
    "safetensors": (
        "safetensors",
        _claims_safetensors,
        _parses(read_safetensors, "its header, or a tensor's data_offsets, runs past the end of the file"),
    ),
    "gguf": ("GGUF", lambda data: data[:4] == b"GGUF", _gguf_problem),
}


def _zip_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return None
        handle.seek(max(0, size - _EOCD_SEARCH))
        if _EOCD not in handle.read():
            return "incomplete zip container: no end-of-central-directory record"
    return None


def incomplete_reason(path: Path) -> str | None:
    """Why ``path`` looks cut short (``"incomplete TFLite file: …"``), or None when it looks whole or is not a
    format we parse. Raises OSError when the file cannot be read."""
    extension = path.suffix.lower().lstrip(".")
    size = path.stat().st_size
    if extension in ZIP_EXTENSIONS:
        return _zip_problem(path, size)
    if extension not in _CHECKS or size == 0:
        return None
    label, claims, problem = _CHECKS[extension]
    # the readers take the mmap itself: its slices are copies, so nothing keeps it from closing
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data: Buffer = mapped  # type: ignore[assignment]
        if not claims(data):
            return None
        try:
            why = problem(data)
        except _PARSE_ERRORS as error:
            why = f"it does not parse ({error})"
    return None if why is None else f"incomplete {label} file: {why}"
