"""ggml block quantization for the benchmark corpus: float32 rows → Q8_0 or Q4_K block bytes.

Used by :mod:`bench.corpus` for the ``requant-q8_0`` / ``requant-q4_k`` scenarios (GGUF files whose weight
matrices are block-quantized the way llama.cpp stores them). Data flow::

    float32 array (..., n), n a multiple of the block's element count
      → rows of blocks → per block: scale(s) + quantized values, packed in ggml's byte layout
      → uint8 array (..., n // elements * block bytes), written to GGUF with the matching ggml type id

Q8_0 is gguf-py's own numpy implementation of ggml's reference (block of 32: fp16 ``d`` = max|x| / 127, then
32 int8 ``round(x / d)``). gguf-py has no Q4_K quantizer, so :func:`quantize_q4_k` is a simpler but valid one
(not llama.cpp's iterative ``make_qkx2_quants`` search): per super-block of 256 elements, eight sub-blocks of
32 get ``scale = (max - min) / 15`` and ``min = -min(0, min)``; fp16 ``d`` and ``dmin`` are the largest of them
over 63, the 6-bit sub-block scales/mins are ``round(scale / d)`` / ``round(min / dmin)`` packed into 12 bytes
as ``ggml-quants.c`` ``get_scale_min_k4`` reads them, and the 4-bit quants ``round((x + dmin·m) / (d·sc))``
fill 128 bytes (sub-block 2g in the low nibbles of bytes 32g..32g+31, sub-block 2g+1 in the high ones).
The bytes decode with gguf-py's ``Q4_K.dequantize_blocks`` (checked in tests/test_block_planes.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Q8_0, Q4_K = 8, 12  # ggml type ids
ELEMENTS = {Q8_0: 32, Q4_K: 256}
BLOCK_BYTES = {Q8_0: 34, Q4_K: 144}


def quantize(array: np.ndarray, ggml_type: int) -> np.ndarray:
    """``array`` (float32, last dimension a multiple of the block's elements) as ggml block bytes."""
    if ggml_type == Q8_0:
        import gguf

        return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    if ggml_type == Q4_K:
        return quantize_q4_k(array)
    raise ValueError(f"no quantizer for ggml type {ggml_type}")


def add_tensor(writer: Any, name: str, array: np.ndarray, ggml_type: int | None) -> None:
    """Add ``array`` to a ``gguf.GGUFWriter``: block-quantized as ``ggml_type`` when given and the tensor is a
    matrix, else as it is (llama.cpp keeps 1-D norms and biases in float32)."""
    import gguf

    if ggml_type is not None and array.ndim == 2:
        writer.add_tensor(name, quantize(array, ggml_type), raw_dtype=gguf.GGMLQuantizationType(ggml_type))
    else:
        writer.add_tensor(name, array)


def add_tensors(writer: Any, tensors: dict[str, np.ndarray], ggml_type: int | None) -> None:
    """Add every tensor to a ``gguf.GGUFWriter``: a 0-d one as shape (1,) (GGUF tensors have a dimension),
    bfloat16 as raw BF16, int32 as it is, the rest through :func:`add_tensor`."""
    import gguf
    import ml_dtypes

    for name, array in tensors.items():
        array = np.ascontiguousarray(array.reshape(-1) if array.ndim == 0 else array)
        if array.dtype == np.dtype(ml_dtypes.bfloat16):
            writer.add_tensor(name, array.view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif array.dtype == np.int32:
            writer.add_tensor(name, array)
        else:
            add_tensor(writer, name, array, ggml_type)


def quantize_q4_k(array: np.ndarray) -> np.ndarray:
    shape = array.shape
    if shape[-1] % 256:
        raise ValueError(f"Q4_K needs rows of a multiple of 256 elements, not {shape[-1]}")
    x = np.asarray(array, dtype=np.float32).reshape(-1, 8, 32)
    low = np.minimum(x.min(axis=2), 0.0)
    scale = (x.max(axis=2) - low) / 15.0
    mins = -low
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = (mins.max(axis=1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin32 > 0, np.rint(mins / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[:, :, None]
        offset = (dmin32 * m)[:, :, None]
        q = np.where(step > 0, np.rint((x + offset) / step), 0).clip(0, 15).astype(np.uint8)
    blocks = np.empty((x.shape[0], 144), dtype=np.uint8)
    blocks[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    scales = blocks[:, 4:16]
    scales[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (m[:, :4] & 0x3F) | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    pairs = q.reshape(-1, 4, 2, 32)
    blocks[:, 16:] = (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(-1, 128)
    return blocks.reshape(*shape[:-1], shape[-1] // 256 * 144)
