"""Writes real TFLite models (FlatBuffers, schema v3) of a small MLP classifier, and fine-tuned successors.

Used by ``lorien demo``, the tests and the benchmarks, so they work on genuine model files without downloading
any. The flatbuffer is built with the ``flatbuffers`` runtime following TensorFlow Lite's ``schema.fbs`` field
order; tests read the files back with the independent ``tflite`` package.

Graph: ``input[1, n0] → FULLY_CONNECTED(relu) → … → FULLY_CONNECTED → SOFTMAX → output[1, n_last]``,
float32 weights stored in 16-byte-aligned buffers, as the TFLite converter does.

Fine-tuning (:func:`fine_tune`) follows transfer learning: the classifier head is retrained from scratch, the
layer before it is nudged slightly where the optimiser touched it (``touched`` share of its rows), and the
backbone stays frozen. Other kinds of change (dense nudges, re-quantization) belong to ``bench/``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np

from lorien.repo.atomic import atomic_write_bytes
from lorien.repo.fingerprint import detect_format

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
TENSOR_FLOAT32 = 0
OP_FULLY_CONNECTED = 9
OP_SOFTMAX = 25
OPTIONS_FULLY_CONNECTED = 8
OPTIONS_SOFTMAX = 9
ACTIVATION_RELU = 1
DEFAULT_LAYERS = (256, 512, 512, 256, 10)


@dataclass
class Mlp:
    """Weights of an MLP; ``weights[i]`` has shape (out, in) like TFLite's FULLY_CONNECTED."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    @property
    def layer_sizes(self) -> list[int]:
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]


def random_mlp(layer_sizes: tuple[int, ...] = DEFAULT_LAYERS, seed: int = 0) -> Mlp:
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for fan_in, fan_out in itertools.pairwise(layer_sizes):
        weights.append((rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        biases.append((rng.standard_normal(fan_out) * 0.01).astype(np.float32))
    return Mlp(weights, biases)


def fine_tune(model: Mlp, seed: int, touched: float = 0.2, step: float = 1e-3) -> Mlp:
    """A successor: head retrained, previous layer nudged on a ``touched`` share of rows, backbone frozen."""
    rng = np.random.default_rng(seed)
    weights = [w.copy() for w in model.weights]
    biases = [b.copy() for b in model.biases]
    head = len(weights) - 1
    fan_in = weights[head].shape[1]
    weights[head] = (rng.standard_normal(weights[head].shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    biases[head] = (rng.standard_normal(biases[head].shape) * 0.01).astype(np.float32)
    if head > 0:
        layer = weights[head - 1]
        rows = rng.random(layer.shape[0]) < touched
        layer[rows] += (rng.standard_normal((int(rows.sum()), layer.shape[1])) * step).astype(np.float32)
        biases[head - 1][rows] += (rng.standard_normal(int(rows.sum())) * step).astype(np.float32)
    return Mlp(weights, biases)


def _aligned_bytes(builder: flatbuffers.Builder, data: bytes, alignment: int = 16) -> int:
    builder.StartVector(1, len(data), alignment)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _int_vector(builder: flatbuffers.Builder, values: list[int]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependInt32(value)
    return builder.EndVector()


def _offset_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def to_tflite(model: Mlp, description: str = "lorien demo classifier") -> bytes:
    """Serialize ``model`` as a TFLite flatbuffer (bytes) that Mallorn's format rule recognises.

    The root-table offset (first 4 bytes) depends on alignment padding; Mallorn only accepts 0x18, 0x1c or
    0x20, as the TFLite converter usually writes. Trailing spaces in the description shift the padding until
    it lands on one of those (at most 15 tries, one always works since the offset moves in 4-byte steps).
    """
    for padding in range(16):
        data = _build_tflite(model, description + " " * padding)
        if detect_format(data[:16]) == "tflite":
            return data
    raise AssertionError("no description padding gives a Mallorn-recognisable TFLite header")


def _build_tflite(model: Mlp, description: str) -> bytes:
    """The flatbuffer, built bottom-up as flatbuffers requires: buffers, tensors, operators, subgraph, codes."""
    builder = flatbuffers.Builder(
        1024 + sum(w.nbytes + b.nbytes for w, b in zip(model.weights, model.biases, strict=True))
    )
    buffer_offsets = _buffers(builder, model)
    tensors, layer_io, output_index = _tensor_table(model)
    tensor_offsets = [_tensor(builder, *tensor) for tensor in tensors]
    operator_offsets = _operators(builder, layer_io, output_index)
    tensors_vec = _offset_vector(builder, tensor_offsets)
    operators_vec = _offset_vector(builder, operator_offsets)
    subgraph = _subgraph(builder, tensors_vec, operators_vec, output_index)
    # Operator codes (index 0: FULLY_CONNECTED, 1: SOFTMAX).
    code_offsets = []
    for code in (OP_FULLY_CONNECTED, OP_SOFTMAX):
        builder.StartObject(4)
        builder.PrependInt32Slot(3, code, 0)
        builder.PrependInt32Slot(2, 1, 1)
        builder.PrependInt8Slot(0, code, 0)
        code_offsets.append(builder.EndObject())
    finish_model(builder, code_offsets, subgraph, buffer_offsets, description)
    return bytes(builder.Output())


def _buffers(builder: flatbuffers.Builder, model: Mlp) -> list[int]:
    """Buffer 0 is the conventional empty buffer; then one per weight and bias tensor."""
    payloads = [b""]
    for w, b in zip(model.weights, model.biases, strict=True):
        payloads += [w.tobytes(), b.tobytes()]
    offsets = []
    for payload in payloads:
        data = _aligned_bytes(builder, payload) if payload else None
        builder.StartObject(3)
        if data is not None:
            builder.PrependUOffsetTRelativeSlot(0, data, 0)
        offsets.append(builder.EndObject())
    return offsets


def _tensor_table(model: Mlp) -> tuple[list[tuple[str, list[int], int]], list[tuple[int, int, int]], int]:
    """(name, shape, buffer) of every tensor — activations (input, hidden…, logits, output) and constant
    weights/biases —, the (weights, bias, output) tensor indices of each layer, and the output's index."""
    sizes = model.layer_sizes
    tensors: list[tuple[str, list[int], int]] = [("input", [1, sizes[0]], 0)]
    layer_io = []
    for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        w_index, b_index = len(tensors), len(tensors) + 1
        tensors += [
            (f"dense_{i}/kernel", list(w.shape), 1 + 2 * i),
            (f"dense_{i}/bias", list(b.shape), 2 + 2 * i),
        ]
        out_index = len(tensors)
        tensors.append((f"dense_{i}/out", [1, w.shape[0]], 0))
        layer_io.append((w_index, b_index, out_index))
    tensors.append(("probabilities", [1, sizes[-1]], 0))
    return tensors, layer_io, len(tensors) - 1


def _tensor(builder: flatbuffers.Builder, name: str, shape: list[int], buffer: int) -> int:
    name_offset = builder.CreateString(name)
    shape_offset = _int_vector(builder, shape)
    builder.StartObject(5)
    builder.PrependUOffsetTRelativeSlot(3, name_offset, 0)
    builder.PrependUint32Slot(2, buffer, 0)
    builder.PrependInt8Slot(1, TENSOR_FLOAT32, -1)
    builder.PrependUOffsetTRelativeSlot(0, shape_offset, 0)
    return builder.EndObject()


def _operator(
    builder: flatbuffers.Builder, code_index: int, options_type: int, options: int, io: tuple[list[int], list[int]]
) -> int:
    inputs, outputs = _int_vector(builder, io[0]), _int_vector(builder, io[1])
    builder.StartObject(5)
    builder.PrependUOffsetTRelativeSlot(4, options, 0)
    builder.PrependUint8Slot(3, options_type, 0)
    builder.PrependUOffsetTRelativeSlot(2, outputs, 0)
    builder.PrependUOffsetTRelativeSlot(1, inputs, 0)
    builder.PrependUint32Slot(0, code_index, 0)
    return builder.EndObject()


def _operators(builder: flatbuffers.Builder, layer_io: list[tuple[int, int, int]], output_index: int) -> list[int]:
    """One FULLY_CONNECTED per layer (ReLU except the last), then SOFTMAX into the output tensor."""
    offsets = []
    previous = 0
    for i, (w_index, b_index, out_index) in enumerate(layer_io):
        last = i == len(layer_io) - 1
        builder.StartObject(4)  # FullyConnectedOptions
        builder.PrependInt8Slot(0, 0 if last else ACTIVATION_RELU, 0)
        options = builder.EndObject()
        io = ([previous, w_index, b_index], [out_index])
        offsets.append(_operator(builder, 0, OPTIONS_FULLY_CONNECTED, options, io))
        previous = out_index
    builder.StartObject(1)  # SoftmaxOptions
    builder.PrependFloat32Slot(0, 1.0, 0.0)
    softmax_options = builder.EndObject()
    offsets.append(_operator(builder, 1, OPTIONS_SOFTMAX, softmax_options, ([previous], [output_index])))
    return offsets


def _subgraph(builder: flatbuffers.Builder, tensors_vec: int, operators_vec: int, output_index: int) -> int:
    sg_inputs, sg_outputs = _int_vector(builder, [0]), _int_vector(builder, [output_index])
    sg_name = builder.CreateString("main")
    builder.StartObject(5)
    builder.PrependUOffsetTRelativeSlot(4, sg_name, 0)
    builder.PrependUOffsetTRelativeSlot(3, operators_vec, 0)
    builder.PrependUOffsetTRelativeSlot(2, sg_outputs, 0)
    builder.PrependUOffsetTRelativeSlot(1, sg_inputs, 0)
    builder.PrependUOffsetTRelativeSlot(0, tensors_vec, 0)
    return builder.EndObject()


def finish_model(
    builder: flatbuffers.Builder,
    code_offsets: list[int],
    subgraph: int,
    buffer_offsets: list[int],
    description: str,
) -> None:
    """Write the root Model table (one subgraph) and finish the buffer with the "TFL3" identifier.

    Fields: version, operator_codes, subgraphs, description, buffers, metadata_buffer, metadata, signature_defs
    (the converter writes the last two even when empty; they also move the root table to offset >= 0x18, which
    Mallorn's format rule needs)."""
    codes_vec = _offset_vector(builder, code_offsets)
    subgraphs_vec = _offset_vector(builder, [subgraph])
    buffers_vec = _offset_vector(builder, buffer_offsets)
    description_offset = builder.CreateString(description)
    signature_defs_vec = _offset_vector(builder, [])
    metadata_vec = _offset_vector(builder, [])
    builder.StartObject(8)
    builder.PrependUOffsetTRelativeSlot(7, signature_defs_vec, 0)
    builder.PrependUOffsetTRelativeSlot(6, metadata_vec, 0)
    builder.PrependUOffsetTRelativeSlot(4, buffers_vec, 0)
    builder.PrependUOffsetTRelativeSlot(3, description_offset, 0)
    builder.PrependUOffsetTRelativeSlot(2, subgraphs_vec, 0)
    builder.PrependUOffsetTRelativeSlot(1, codes_vec, 0)
    builder.PrependUint32Slot(0, SCHEMA_VERSION, 0)
    builder.Finish(builder.EndObject(), file_identifier=FILE_IDENTIFIER)


def write_family(
    directory: Path, versions: list[str], layer_sizes: tuple[int, ...] = DEFAULT_LAYERS, seed: int = 0
) -> list[Path]:
    """Write ``directory/<version>.tflite`` for each version, each a fine-tune of the one before."""
    directory.mkdir(parents=True, exist_ok=True)
    model = random_mlp(layer_sizes, seed)
    paths = []
    for i, version in enumerate(versions):
        if i:
            model = fine_tune(model, seed=seed * 1000 + i)
        path = directory / f"{version}.tflite"
        atomic_write_bytes(path, to_tflite(model, description=f"lorien demo classifier {version}"))
        paths.append(path)
    return paths
