"""Tensors spread over files (repo/engine/companions.py): ONNX external data and OpenVINO IR regions are read
from the companion file, make the data file's patch model-aware, and the patch applies without the companion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorien.repo.engine import apply_patch, create_patch
from lorien.repo.engine.companions import companion_regions, onnx_external_regions, openvino_regions
from tests.support.model_files import mlp_tensors, nudged, write_onnx_external


def test_onnx_external_data_regions_match_the_reference_library(tmp_path: Path) -> None:
    tensors = mlp_tensors(1)
    onnx_path, data_path = write_onnx_external(tmp_path / "b", tensors)
    by_file = onnx_external_regions(onnx_path.read_bytes())
    assert list(by_file) == ["model.onnx.data"]
    data = data_path.read_bytes()
    found = {r.name: r for r in by_file["model.onnx.data"]}
    assert set(found) == set(tensors)
    for name, array in tensors.items():
        tensor = found[name]
        assert (tensor.dtype, tensor.shape, tensor.width) == ("float32", array.shape, 4)
        assert data[tensor.offset : tensor.end] == array.tobytes()
    files = {"model.onnx": onnx_path, "model.onnx.data": data_path}
    regions = companion_regions(files, "model.onnx.data")
    assert regions is not None and len(regions) == len(tensors)
    assert companion_regions(files, "model.onnx") is None


def _openvino(directory: Path, tensors: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    layers, blob, offset = [], b"", 0
    for index, (name, array) in enumerate(tensors.items()):
        raw = array.tobytes()
        shape = ",".join(str(d) for d in array.shape)
        layers.append(
            f'<layer id="{index}" name="{name}" type="Const" version="opset1">'
            f'<data element_type="f32" shape="{shape}" offset="{offset}" size="{len(raw)}"/></layer>'
        )
        blob += raw
        offset += len(raw)
    (directory / "model.xml").write_text(
        f'<?xml version="1.0"?><net name="m" version="11"><layers>{"".join(layers)}</layers></net>'
    )
    (directory / "model.bin").write_bytes(blob)


def test_openvino_regions(tmp_path: Path) -> None:
    tensors = mlp_tensors(2)
    _openvino(tmp_path / "ir", tensors)
    regions = openvino_regions((tmp_path / "ir" / "model.xml").read_bytes())
    data = (tmp_path / "ir" / "model.bin").read_bytes()
    assert regions is not None and [r.name for r in regions] == list(tensors)
    for tensor, array in zip(regions, tensors.values(), strict=True):
        assert data[tensor.offset : tensor.end] == array.tobytes() and tensor.shape == array.shape
    files = {name: tmp_path / "ir" / name for name in ("model.bin", "model.xml")}
    assert companion_regions(files, "model.bin") == regions
    assert openvino_regions(b"<not-ir/>") is None and openvino_regions(b"<<<") is None


def _mixed(seed: int) -> dict[str, np.ndarray]:
    """float16 weights, float32 biases and an int8 table in one data file: no single element width fits it."""
    tensors: dict[str, np.ndarray] = {}
    for index, (name, array) in enumerate(mlp_tensors(seed, sizes=(256, 512, 512, 256, 10)).items()):
        tensors[name] = array.astype(np.float16) if index % 2 == 0 else array
        if index == 2:
            tensors["table"] = np.random.default_rng(seed).integers(-128, 127, size=20000).astype(np.int8)
    return tensors


def test_hinted_patch_is_smaller_and_applies_without_the_companion(tmp_path: Path) -> None:
    old_tensors = _mixed(3)
    changed = nudged(old_tensors, 4)
    changed["table"] = old_tensors["table"]
    items = list(changed.items())
    items.insert(1, ("inserted", np.random.default_rng(9).standard_normal(3000).astype(np.float32)))
    new_tensors = dict(items)  # a tensor inserted near the start shifts every later offset
    _, old_data = write_onnx_external(tmp_path / "old", old_tensors)
    _, new_data = write_onnx_external(tmp_path / "new", new_tensors)
    names = ["model.onnx", "model.onnx.data"]
    hints = (
        companion_regions({name: tmp_path / "old" / name for name in names}, "model.onnx.data"),
        companion_regions({name: tmp_path / "new" / name for name in names}, "model.onnx.data"),
    )
    # the plans compared without whole-file covers (version 5), which this 1 MB pair is small enough to try
    # whatever the plan: they make the unhinted patch 208 KB
    plain = create_patch(old_data, new_data, tmp_path / "plain.patch", max_format=4)
    hinted = create_patch(old_data, new_data, tmp_path / "hinted.patch", hints=hints)
    assert hinted.patch_size * 2 < plain.patch_size  # measured: 190 KB vs 700 KB
    assert hinted.patch_size < create_patch(old_data, new_data, tmp_path / "covers.patch").patch_size
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "old.data").write_bytes(old_data.read_bytes())  # no .onnx beside it
    apply_patch(alone / "old.data", tmp_path / "hinted.patch", alone / "new.data")
    assert (alone / "new.data").read_bytes() == new_data.read_bytes()


COREML = Path(__file__).resolve().parent / "data" / "coreml"


def _coreml_weights(version: int) -> dict[str, np.ndarray]:
    """The arrays tests/data/coreml/make.py gave coremltools 9.0 (same generator, same seeds)."""
    rng = np.random.default_rng(17)
    base = {
        "w1": (rng.standard_normal((128, 64)) / 8).astype(np.float16),
        "b1": (rng.standard_normal(128) / 100).astype(np.float16),
        "w2": (rng.standard_normal((10, 128)) / 11).astype(np.float32),
    }
    if version == 1:
        return base
    nudge = np.random.default_rng(18)
    return {k: (v * (1 + nudge.standard_normal(v.shape) * 1e-3)).astype(v.dtype) for k, v in base.items()}


def test_coreml_weight_blob_regions_match_what_coremltools_wrote(tmp_path: Path) -> None:
    from lorien.repo.engine.companions import coreml_weight_regions

    for version in (1, 2):
        data = (COREML / f"weight-{version}.bin").read_bytes()
        regions = coreml_weight_regions(data)
        assert regions is not None
        arrays = _coreml_weights(version)
        by_bytes = {data[r.offset : r.end]: r for r in regions}
        for name, array in arrays.items():
            assert array.tobytes() in by_bytes, name
            assert by_bytes[array.tobytes()].dtype == str(array.dtype)
    assert coreml_weight_regions(b"\x00" * 200) is None and coreml_weight_regions(b"GGUF" + b"\x00" * 200) is None
    package = tmp_path / "m.mlpackage" / "Data" / "com.apple.CoreML" / "weights"
    package.mkdir(parents=True)
    files = {}
    for version in (1, 2):
        (package / "weight.bin").write_bytes((COREML / f"weight-{version}.bin").read_bytes())
        files[version] = tmp_path / f"old-{version}.bin"
        files[version].write_bytes((package / "weight.bin").read_bytes())
    relative = "m.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    hints = tuple(companion_regions({relative: files[v]}, relative) for v in (1, 2))
    assert all(hints)
    hinted = create_patch(files[1], files[2], tmp_path / "hinted.patch", hints=hints)
    apply_patch(files[1], tmp_path / "hinted.patch", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == files[2].read_bytes()
    assert hinted.patch_size < 0.7 * files[2].stat().st_size
