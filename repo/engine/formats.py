"""Where the tensors are: byte regions of tensor data in TFLite, ONNX, safetensors and GGUF files.

Used only when *creating* a patch: the patch itself records where each segment goes, so applying one never
needs this module or any format library. Each reader takes the whole file as a read-only buffer (an ``mmap``),
and returns :class:`TensorRegion` records (name, byte offset, byte length, element width, dtype, shape) or
``None`` when the file is not in its format. Readers are deliberately small and dependency-free:

- TFLite: the FlatBuffer ``Model.buffers[i].data`` vectors, named after the tensors that use them
  (read with the ``flatbuffers`` runtime's table accessors; schema field numbers from TensorFlow's schema.fbs).
- ONNX: a protobuf wire-format walk of ``ModelProto.graph`` recording the offset of every ``TensorProto.raw_data``
  among ``initializer``s, including graphs nested in node attributes (``If``/``Loop``/``Scan`` subgraphs).
- safetensors: the JSON header's ``data_offsets``.
- GGUF (v2/v3): the tensor-info table; a plain tensor's extent is its elements × width, a block-quantized one
  (Q8_0, Q4_K, …: :mod:`repo.engine.ggml_blocks`) is whole blocks, named after its type (``q4_k``); other
  types run to the next tensor's offset.
- zip archives (PyTorch ``.pt``/``.pth``, Keras ``.keras``, NumPy ``.npz``): :mod:`repo.engine.zip_tensors`.

Anything the readers do not understand is handled by the caller as generic bytes; a malformed file makes a
reader return ``None`` rather than raise, because a bad guess only costs patch size, never correctness.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable

import flatbuffers.table
from flatbuffers import encode, number_types

from lorien.repo.engine.ggml_blocks import LAYOUTS as GGML_BLOCKS
from lorien.repo.engine.ggml_blocks import byte_length as ggml_byte_length
from lorien.repo.engine.regions import WIDTH, Buffer, TensorRegion
from lorien.repo.engine.regions import region as _region
from lorien.repo.engine.zip_tensors import read_zip

_SAFETENSORS_DTYPE = {
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
    "F32": "float32",
    "I32": "int32",
    "U32": "uint32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I16": "int16",
    "U16": "uint16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3",
    "F8_E5M2": "float8_e5m2",
}


def read_safetensors(data: Buffer) -> list[TensorRegion] | None:
    if len(data) < 10:
        return None
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if header_len < 2 or 8 + header_len > len(data) or header_len > 100 * 1024 * 1024:
        return None
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    base = 8 + header_len
    regions = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            return None
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and base + end <= len(data)):
            return None
        regions.append(_region(name, base + begin, end - begin, _SAFETENSORS_DTYPE.get(dtype, dtype), shape))
    return regions


# --------------------------------------------------------------------------- GGUF

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGML_NAME = {
    0: "float32",
    1: "float16",
    24: "int8",
    25: "int16",
    26: "int32",
    27: "int64",
    28: "float64",
    30: "bfloat16",
}


class _Cursor:
    def __init__(self, data: Buffer, offset: int) -> None:
        self.data, self.offset = data, offset

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.offset + length > len(self.data):
            raise ValueError("string runs past the end of the file")
        value = bytes(self.data[self.offset : self.offset + length]).decode("utf-8", "replace")
        self.offset += length
        return value

    def skip_value(self, kind: int, depth: int = 0) -> object:
        if kind in _GGUF_SCALAR:
            size = _GGUF_SCALAR[kind]
            raw = self.data[self.offset : self.offset + size]
            self.offset += size
            return int.from_bytes(raw, "little")
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY and depth < 2:
            item_kind, count = self.take("<I"), self.take("<Q")
            if count > len(self.data):
                raise ValueError("array longer than the file")
            if item_kind in _GGUF_SCALAR:
                self.offset += count * _GGUF_SCALAR[item_kind]
            else:
                for _ in range(count):
                    self.skip_value(item_kind, depth + 1)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")


def read_gguf(data: Buffer) -> list[TensorRegion] | None:
    if len(data) < 24 or bytes(data[:4]) != b"GGUF":
        return None
    try:
        cursor = _Cursor(data, 4)
        version = cursor.take("<I")
        if version not in (2, 3):
            return None
        tensor_count, kv_count = cursor.take("<Q"), cursor.take("<Q")
        if tensor_count > 1_000_000 or kv_count > 1_000_000:
            return None
        alignment = 32
        for _ in range(kv_count):
            key = cursor.string()
            value = cursor.skip_value(cursor.take("<I"))
            if key == "general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
        infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            n_dims = cursor.take("<I")
            if n_dims > 8:
                return None
            shape = tuple(cursor.take("<Q") for _ in range(n_dims))
            ggml_type, offset = cursor.take("<I"), cursor.take("<Q")
            infos.append((offset, name, shape, ggml_type))
    except (struct.error, ValueError):
        return None
    data_start = -(-cursor.offset // alignment) * alignment
    infos.sort()
    regions = []
    for index, (offset, name, shape, ggml_type) in enumerate(infos):
        begin = data_start + offset
        end = data_start + infos[index + 1][0] if index + 1 < len(infos) else len(data)
        if not data_start <= begin <= end <= len(data):
            return None
        dtype = _GGML_NAME.get(ggml_type, f"ggml{ggml_type}")
        if dtype in WIDTH:  # plain types: the exact extent (alignment padding stays generic bytes)
            end = min(end, begin + math.prod(shape) * WIDTH[dtype])
        elif ggml_type in GGML_BLOCKS:  # block-quantized: whole blocks, named after the type
            dtype = GGML_BLOCKS[ggml_type].name
            extent = ggml_byte_length(ggml_type, math.prod(shape))
            end = min(end, begin + extent) if extent is not None else end
        regions.append(_region(name, begin, end - begin, dtype, tuple(reversed(shape))))
    return regions


# --------------------------------------------------------------------------- ONNX (protobuf wire format)

_ONNX_NAME = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}


def _varint(data: Buffer, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: Buffer, start: int, end: int):
    """Yield (field number, wire type, value or (begin, end) for length-delimited) of one protobuf message."""
    offset = start
    while offset < end:
        key, offset = _varint(data, offset)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _varint(data, offset)
            yield number, wire, value
        elif wire == 2:
            length, offset = _varint(data, offset)
            if offset + length > end:
                raise ValueError("field runs past its message")
            yield number, wire, (offset, offset + length)
            offset += length
        elif wire == 1:
            offset += 8
        elif wire == 5:
            offset += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if offset != end:
        raise ValueError("message overruns its length")


def _onnx_tensor(data: Buffer, span: tuple[int, int], scope: str) -> TensorRegion | None:
    name, dtype, dims, raw = "", 0, [], None
    for number, wire, value in _fields(data, *span):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:  # packed dims
            offset, end = value
            while offset < end:
                dim, offset = _varint(data, offset)
                dims.append(dim)
        elif number == 2 and wire == 0:
            dtype = value
        elif number == 8 and wire == 2:
            name = bytes(data[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == 9 and wire == 2:
            raw = value
    if raw is None:
        return None
    return _region(scope + name, raw[0], raw[1] - raw[0], _ONNX_NAME.get(dtype, f"onnx{dtype}"), tuple(dims))


def _onnx_graph(data: Buffer, span: tuple[int, int], scope: str, out: list[TensorRegion], depth: int) -> None:
    if depth > 16:
        raise ValueError("graphs nested too deeply")
    for number, wire, value in _fields(data, *span):
        if wire != 2:
            continue
        if number == 5:  # GraphProto.initializer
            region = _onnx_tensor(data, value, scope)
            if region is not None:
                out.append(region)
        elif number == 1:  # GraphProto.node → NodeProto.attribute (5) → AttributeProto.g (6) / graphs (11)
            node_name = ""
            attributes = []
            for n_number, n_wire, n_value in _fields(data, *value):
                if n_number == 3 and n_wire == 2:
                    node_name = bytes(data[n_value[0] : n_value[1]]).decode("utf-8", "replace")
                elif n_number == 5 and n_wire == 2:
                    attributes.append(n_value)
            for attribute in attributes:
                for a_number, a_wire, a_value in _fields(data, *attribute):
                    if a_wire == 2 and a_number in (6, 11):
                        _onnx_graph(data, a_value, f"{scope}{node_name}/", out, depth + 1)
                    elif a_wire == 2 and a_number in (5, 10):  # AttributeProto.t / tensors
                        region = _onnx_tensor(data, a_value, f"{scope}{node_name}/")
                        if region is not None:
                            out.append(region)


def read_onnx(data: Buffer) -> list[TensorRegion] | None:
    if len(data) < 4 or data[0] != 0x08:  # ModelProto starts with ir_version (field 1, varint)
        return None
    try:
        graph = None
        for number, wire, value in _fields(data, 0, len(data)):
            if number == 7 and wire == 2:
                graph = value
        if graph is None:
            return None
        regions: list[TensorRegion] = []
        _onnx_graph(data, graph, "", regions, 0)
        return regions
    except (ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- TFLite (FlatBuffers)

_TFLITE_NAME = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
    12: "uint64",
    13: "uint32",
    16: "uint16",
    17: "int4",
}


def _table(data: Buffer, position: int) -> flatbuffers.table.Table:
    return flatbuffers.table.Table(data, position)


def _field_offset(table: flatbuffers.table.Table, field: int) -> int:
    return table.Offset(4 + 2 * field)


def _vector_tables(data: Buffer, table: flatbuffers.table.Table, field: int) -> list[flatbuffers.table.Table]:
    offset = _field_offset(table, field)
    if not offset:
        return []
    start, count = table.Vector(offset), table.VectorLen(offset)
    if count > len(data) // 4:
        raise ValueError("vector longer than the file")
    return [_table(data, table.Indirect(start + 4 * i)) for i in range(count)]


def _scalar(table: flatbuffers.table.Table, field: int, kind, default: int) -> int:
    offset = _field_offset(table, field)
    return table.Get(kind, offset + table.Pos) if offset else default


def read_tflite(data: Buffer) -> list[TensorRegion] | None:
    if len(data) < 16 or bytes(data[4:8]) != b"TFL3":
        return None
    try:
        model = _table(data, encode.Get(number_types.UOffsetTFlags.packer_type, data, 0))
        names: dict[int, tuple[str, int, tuple[int, ...]]] = {}
        for graph_index, subgraph in enumerate(_vector_tables(data, model, 2)):
            for tensor in _vector_tables(data, subgraph, 0):
                buffer_index = _scalar(tensor, 2, number_types.Uint32Flags, 0)
                name_offset = _field_offset(tensor, 3)
                name = tensor.String(name_offset + tensor.Pos).decode("utf-8", "replace") if name_offset else ""
                kind = _scalar(tensor, 1, number_types.Int8Flags, 0)
                shape_offset = _field_offset(tensor, 0)
                shape: tuple[int, ...] = ()
                if shape_offset:
                    start, count = tensor.Vector(shape_offset), tensor.VectorLen(shape_offset)
                    shape = tuple(
                        encode.Get(number_types.Int32Flags.packer_type, data, start + 4 * i)
                        for i in range(min(count, 16))
                    )
                names.setdefault(buffer_index, (f"{graph_index}:{name}", kind, shape))
        regions = []
        for index, buffer in enumerate(_vector_tables(data, model, 4)):
            data_offset = _field_offset(buffer, 0)
            if data_offset:
                start, length = buffer.Vector(data_offset), buffer.VectorLen(data_offset)
            else:  # large models keep tensor data outside the flatbuffer: Buffer.offset / Buffer.size
                start = _scalar(buffer, 1, number_types.Uint64Flags, 0)
                length = _scalar(buffer, 2, number_types.Uint64Flags, 0)
            if length == 0:
                continue
            if not 0 < start <= start + length <= len(data):
                return None
            name, kind, shape = names.get(index, (f"buffer{index}", 3, ()))
            regions.append(_region(name, start, length, _TFLITE_NAME.get(kind, f"tflite{kind}"), shape))
        return regions
    except (struct.error, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- dispatch

READERS: dict[str, Callable[[Buffer], list[TensorRegion] | None]] = {
    "tflite": read_tflite,
    "gguf": read_gguf,
    "safetensors": read_safetensors,
    "onnx": read_onnx,
    "zip": read_zip,
}


def find_tensors(data: Buffer) -> tuple[str, list[TensorRegion]]:
    """The file's format name and its tensor regions, sorted by offset and non-overlapping; ("bytes", []) if none."""
    for format_name, reader in READERS.items():
        try:
            regions = reader(data)
        except (ValueError, TypeError, IndexError, OverflowError, struct.error, RecursionError):
            regions = None  # a damaged file is generic bytes: costs patch size, never correctness
        if regions:
            return format_name, _non_overlapping(regions)
    return "bytes", []


def _non_overlapping(regions: list[TensorRegion]) -> list[TensorRegion]:
    kept: list[TensorRegion] = []
    for region in sorted(regions, key=lambda r: (r.offset, -r.length)):
        if region.length and (not kept or region.offset >= kept[-1].end):
            kept.append(region)
    return kept
