"""Block layouts of ggml's quantized tensor types (GGUF), for the create side of the ``lorien`` engine.

A quantized GGUF tensor is a run of fixed-size blocks, each a few fields: fp16 (or float32) scales, packed
sub-block scales, and the quantized values (int8 bytes, or two 4-bit values per byte). This table says, per
ggml type id, how many elements a block holds, how many bytes it takes, and its fields in order. Used by:

    repo.engine.formats  — a quantized tensor's exact byte extent (elements / block elements × block bytes)
    repo.engine.planning — tensor chunks cut at block boundaries, tagged with the type id
    repo.engine.candidates → repo.engine.block_planes — each field becomes its own planes (codec BLOCK_PLANES)

The patch itself records the field layout it used, so applying never needs this table. Layouts follow the
``block_*`` structs in ggml's ``ggml-common.h``; every block size equals gguf-py's ``GGML_QUANT_SIZES``
(checked in tests/test_block_planes.py). Types whose layout could not be checked here (Q8_1, the IQ and TQ
families) are absent: their tensors stay generic bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

HALF, FLOAT, INT8, INT16, NIBBLES, BITS = "half", "float", "int8", "int16", "nibbles", "bits"


@dataclass(frozen=True)
class Field:
    name: str
    length: int  # bytes per block
    kind: str  # HALF fp16 scale, FLOAT float32 scale, INT8 values, INT16, NIBBLES two 4-bit values, BITS packed


@dataclass(frozen=True)
class Layout:
    name: str
    elements: int  # weights per block
    fields: tuple[Field, ...]

    @property
    def block_bytes(self) -> int:
        return sum(field.length for field in self.fields)


def _layout(name: str, elements: int, *fields: tuple[str, int, str]) -> Layout:
    return Layout(name, elements, tuple(Field(*field) for field in fields))


LAYOUTS: dict[int, Layout] = {
    2: _layout("q4_0", 32, ("d", 2, HALF), ("qs", 16, NIBBLES)),
    3: _layout("q4_1", 32, ("d", 2, HALF), ("m", 2, HALF), ("qs", 16, NIBBLES)),
    6: _layout("q5_0", 32, ("d", 2, HALF), ("qh", 4, BITS), ("qs", 16, NIBBLES)),
    7: _layout("q5_1", 32, ("d", 2, HALF), ("m", 2, HALF), ("qh", 4, BITS), ("qs", 16, NIBBLES)),
    8: _layout("q8_0", 32, ("d", 2, HALF), ("qs", 32, INT8)),
    10: _layout("q2_k", 256, ("scales", 16, BITS), ("qs", 64, BITS), ("d", 2, HALF), ("dmin", 2, HALF)),
    11: _layout("q3_k", 256, ("hmask", 32, BITS), ("qs", 64, BITS), ("scales", 12, BITS), ("d", 2, HALF)),
    12: _layout("q4_k", 256, ("d", 2, HALF), ("dmin", 2, HALF), ("scales", 12, BITS), ("qs", 128, NIBBLES)),
    13: _layout(
        "q5_k",
        256,
        ("d", 2, HALF),
        ("dmin", 2, HALF),
        ("scales", 12, BITS),
        ("qh", 32, BITS),
        ("qs", 128, NIBBLES),
    ),
    14: _layout("q6_k", 256, ("ql", 128, NIBBLES), ("qh", 64, BITS), ("scales", 16, INT8), ("d", 2, HALF)),
    15: _layout("q8_k", 256, ("d", 4, FLOAT), ("qs", 256, INT8), ("bsums", 32, INT16)),
}
BY_NAME = {layout.name: type_id for type_id, layout in LAYOUTS.items()}


def byte_length(type_id: int, elements: int) -> int | None:
    """Bytes of a tensor of ``elements`` weights in this type; None for unknown types or partial blocks."""
    layout = LAYOUTS.get(type_id)
    if layout is None or elements % layout.elements:
        return None
    return elements // layout.elements * layout.block_bytes
