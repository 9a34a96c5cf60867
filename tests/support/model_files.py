"""Real model files for engine tests, written with each format's own library (safetensors, gguf, onnx, tflite).

The engine's tensor finders are our own small parsers; checking them against files written by the reference
libraries is what makes their offsets trustworthy.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

Tensors = dict[str, np.ndarray]


def write_safetensors(path: Path, tensors: Tensors) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def write_gguf(path: Path, tensors: Tensors, ggml_type: int | None = None) -> None:
    """A GGUF file of ``tensors``; with ``ggml_type`` (``bench.ggml_quants``: Q8_0, Q4_K) its 2-D tensors are
    stored block-quantized, 1-D ones as they are (as llama.cpp keeps norms and biases)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("lorien-test")
    writer.add_uint32("lorien.layers", len(tensors))
    from bench import ggml_quants

    for name, array in tensors.items():
        ggml_quants.add_tensor(writer, name, array, ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_onnx(path: Path, tensors: Tensors, nested: Tensors | None = None) -> None:
    """A graph whose initializers are ``tensors``; ``nested`` ones live in the branches of an ``If`` node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(array, name) for name, array in tensors.items()]
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="identity")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    if nested:
        branch_inits = [numpy_helper.from_array(array, name) for name, array in nested.items()]
        first = next(iter(nested))
        then_branch = helper.make_graph(
            [helper.make_node("Identity", [first], ["then_out"])],
            "then",
            [],
            [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
            branch_inits,
        )
        else_branch = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["else_out"])],
            "else",
            [],
            [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
        )
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        nodes.append(
            helper.make_node(
                "If", ["cond"], ["z"], name="branch", then_branch=then_branch, else_branch=else_branch
            )
        )
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path))


def mlp_tensors(seed: int, sizes: tuple[int, ...] = (64, 256, 128, 10), dtype=np.float32) -> Tensors:
    rng = np.random.default_rng(seed)
    tensors: Tensors = {}
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        tensors[f"layer{index}.weight"] = (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(dtype)
        tensors[f"layer{index}.bias"] = (rng.standard_normal(fan_out) * 0.01).astype(dtype)
    return tensors


def nudged(tensors: Tensors, seed: int, relative: float = 1e-3) -> Tensors:
    """Dense fine-tune: every float weight changes a little."""
    rng = np.random.default_rng(seed)
    return {
        name: (array * (1 + rng.standard_normal(array.shape) * relative)).astype(array.dtype)
        for name, array in tensors.items()
    }


def write_onnx_external(directory: Path, tensors: Tensors, name: str = "model.onnx") -> tuple[Path, Path]:
    """An ONNX model whose initializers live in ``<name>.data`` (external data, as for models over 2 GB)."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    inline = directory / f".{name}.inline"
    write_onnx(inline, tensors)
    model = onnx.load_model(str(inline))
    inline.unlink()
    (directory / f"{name}.data").unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(directory / name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{name}.data",
        size_threshold=0,
    )
    return directory / name, directory / f"{name}.data"
