"""Tensor regions: what the create side's format readers report (name, byte range, element width, dtype).

Shared by :mod:`repo.engine.formats` and :mod:`repo.engine.zip_tensors`; dtype names are numpy spellings in
every format, so old and new tensors compare by dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

Buffer = bytes | memoryview


@dataclass(frozen=True)
class TensorRegion:
    name: str
    offset: int
    length: int
    width: int  # element width in bytes (1, 2, 4, 8) for plane codecs; 1 when unknown or packed
    dtype: str
    shape: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.offset + self.length


# the element width follows from the name (packed or block-quantized types are 1: plain bytes for the plane codecs)
WIDTH = {
    "float64": 8,
    "int64": 8,
    "uint64": 8,
    "float32": 4,
    "int32": 4,
    "uint32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int16": 2,
    "uint16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3": 1,
    "float8_e5m2": 1,
}


def region(name: str, offset: int, length: int, dtype: str, shape: tuple[int, ...]) -> TensorRegion:
    return TensorRegion(name, offset, length, WIDTH.get(dtype, 1), dtype, shape)
