"""Tensors spread over files: where the typed tensors of a bundle's *data* file are, read from its companion.

Some formats keep the description of their weights in one file and the bytes in another, so the data file alone
looks like generic bytes to :func:`repo.engine.formats.find_tensors`:

- ONNX external data: a ``TensorProto`` in the ``.onnx`` with ``data_location = EXTERNAL`` (field 14) carries
  ``external_data`` key/value entries (field 13): ``location`` (the data file, relative to the ``.onnx``),
  ``offset`` and ``length`` inside it; its dtype and dims are in the same ``TensorProto``.
- OpenVINO IR: the ``.xml`` lists ``<layer type="Const">`` with ``<data element_type= shape= offset= size=>``
  pointing into the ``.bin`` of the same name.
- Core ML ``.mlpackage``: ``Data/com.apple.CoreML/weights/weight.bin`` is a MIL blob file that describes itself
  (a 64-byte header with the blob count and format version 2, then per blob a 64-byte record — sentinel
  ``0xDEADBEEF``, data type, size, offset — before its 64-byte aligned data), so it needs no companion; the
  names (``blob0``, ``blob1``, …) are positional, the dtypes those of coremltools' ``BlobDataType``.

Create side only: :func:`companion_regions` takes a bundle's files (path → bytes on disk) and one data file's
path and returns its regions (or ``None``); the publisher passes them to ``create_patch(..., regions=…)``. The patch
records byte ranges as always, so applying it needs neither this module, nor the companion, nor any format
library. Like the other readers, a malformed companion yields ``None``: a bad guess only costs patch size.
"""

from __future__ import annotations

import mmap
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path, PurePosixPath

from lorien.repo.engine.formats import _ONNX_NAME, _fields
from lorien.repo.engine.regions import Buffer, TensorRegion, region

MAX_COMPANION_BYTES = 64 << 20  # a description file larger than this is not read (its data is generic bytes)

_OPENVINO_TYPES = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "boolean": "bool",
}


# --------------------------------------------------------------------------------------- ONNX external data


def _external_tensor(data: Buffer, span: tuple[int, int], scope: str) -> tuple[str, TensorRegion] | None:
    name, dtype, dims, external, location_kind = "", 0, [], {}, 0
    for number, wire, value in _fields(data, *span):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 2 and wire == 0:
            dtype = value
        elif number == 8 and wire == 2:
            name = bytes(data[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == 13 and wire == 2:  # StringStringEntryProto {key = 1, value = 2}
            entry = {
                n: bytes(data[v[0] : v[1]]).decode("utf-8", "replace")
                for n, w, v in _fields(data, *value)
                if w == 2
            }
            external[entry.get(1, "")] = entry.get(2, "")
        elif number == 14 and wire == 0:
            location_kind = value
    if location_kind != 1 or "location" not in external:
        return None
    offset = int(external.get("offset", "0"))
    length = int(external["length"]) if "length" in external else -1
    if offset < 0 or length < 0:
        return None  # without a length the extent is unknown: generic bytes
    dtype_name = _ONNX_NAME.get(dtype, f"onnx{dtype}")
    return external["location"], region(scope + name, offset, length, dtype_name, tuple(dims))


def _external_graph(data: Buffer, span: tuple[int, int], out: list[tuple[str, TensorRegion]], depth: int) -> None:
    if depth > 16:
        raise ValueError("graphs nested too deeply")
    for number, wire, value in _fields(data, *span):
        if wire != 2:
            continue
        if number == 5:
            found = _external_tensor(data, value, "")
            if found:
                out.append(found)
        elif number == 1:  # nodes → attributes → subgraphs (If/Loop/Scan)
            for n_number, n_wire, n_value in _fields(data, *value):
                if n_number == 5 and n_wire == 2:
                    for a_number, a_wire, a_value in _fields(data, *n_value):
                        if a_wire == 2 and a_number in (6, 11):
                            _external_graph(data, a_value, out, depth + 1)


def onnx_external_regions(onnx: Buffer) -> dict[str, list[TensorRegion]]:
    """Regions of every externally stored initializer of an ONNX model, by ``location`` (``{}`` if none)."""
    if len(onnx) < 4 or onnx[0] != 0x08:
        return {}
    try:
        found: list[tuple[str, TensorRegion]] = []
        for number, wire, value in _fields(onnx, 0, len(onnx)):
            if number == 7 and wire == 2:
                _external_graph(onnx, value, found, 0)
    except (ValueError, IndexError, UnicodeDecodeError):
        return {}
    by_file: dict[str, list[TensorRegion]] = {}
    for location, tensor in found:
        by_file.setdefault(location, []).append(tensor)
    return by_file


# -------------------------------------------------------------------------------------------------- OpenVINO IR


def openvino_regions(xml: bytes) -> list[TensorRegion] | None:
    """Regions in the ``.bin`` of every ``Const`` layer of an OpenVINO IR ``.xml`` (``None`` if not IR)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    if root.tag != "net":
        return None
    regions = []
    for layer in root.iter("layer"):
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        if data is None:
            continue
        try:
            offset, size = int(data.get("offset", "")), int(data.get("size", ""))
            shape_text = data.get("shape", "")
            shape = tuple(int(d) for d in shape_text.split(",") if d.strip()) if shape_text else ()
        except ValueError:
            continue
        if offset < 0 or size <= 0:
            continue
        dtype = _OPENVINO_TYPES.get(data.get("element_type", ""), data.get("element_type", "bytes"))
        regions.append(region(layer.get("name", layer.get("id", "")), offset, size, dtype, shape))
    return regions


# ------------------------------------------------------------------------------------------------ Core ML

_COREML_TYPES = {1: "float16", 2: "float32", 3: "uint8", 4: "int8", 5: "bfloat16", 6: "int16", 7: "uint16"}
_COREML_SENTINEL = 0xDEADBEEF
MAX_COREML_BLOBS = 1 << 20


def coreml_weight_regions(data: Buffer) -> list[TensorRegion] | None:
    """Regions of a Core ML MIL blob file (``weights/weight.bin``); None when it is not one."""
    if len(data) < 128:
        return None
    count, version = struct.unpack_from("<II", data, 0)
    if version != 2 or not 0 < count <= MAX_COREML_BLOBS:
        return None
    regions = []
    position = 64
    for index in range(count):
        if position + 64 > len(data):
            return None
        sentinel, kind, size, offset = struct.unpack_from("<IIQQ", data, position)
        if sentinel != _COREML_SENTINEL or offset < position + 64 or offset + size > len(data):
            return None
        dtype = _COREML_TYPES.get(kind, f"coreml{kind}")
        regions.append(region(f"blob{index}", offset, size, dtype, ()))
        position = (offset + size + 63) // 64 * 64
    return regions


# ------------------------------------------------------------------------------------------------------ lookup


def companion_regions(files: dict[str, Path], relative: str) -> list[TensorRegion] | None:
    """Regions of the bundle file ``relative`` described by a companion among ``files`` (bundle path → where its
    bytes are: a directory's file or a repository blob), only those inside the data file; ``None`` when no
    companion describes it."""
    size = files[relative].stat().st_size
    found: list[TensorRegion] = []
    pure = PurePosixPath(relative)
    if pure.suffix == ".bin":
        with open(files[relative], "rb") as handle:
            head = handle.read(8)
        if len(head) == 8 and struct.unpack("<II", head)[1] == 2 and pure.name == "weight.bin":
            with (
                open(files[relative], "rb") as handle,
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view,
            ):
                found.extend(coreml_weight_regions(view) or [])
    if pure.suffix == ".bin":
        xml = str(pure.with_suffix(".xml"))
        if xml in files and files[xml].stat().st_size <= MAX_COMPANION_BYTES:
            found.extend(openvino_regions(files[xml].read_bytes()) or [])
    for other, where in files.items():
        if not other.endswith(".onnx") or other == relative or where.stat().st_size > MAX_COMPANION_BYTES:
            continue
        base = PurePosixPath(other).parent
        for location, tensors in onnx_external_regions(where.read_bytes()).items():
            if str(base / location) == relative:
                found.extend(tensors)
    inside = [tensor for tensor in found if tensor.end <= size]
    return inside or None
